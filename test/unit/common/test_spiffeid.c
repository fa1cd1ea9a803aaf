/* Unit tests for common/spiffeid.c: one or more cases per SPIFFE-ID.md rule. */
#include "common/spiffeid.h"
#include "test/runner.h"

static void expect_bad(const char *s, const char *why)
{
    sg_spiffeid id;
    sg_err err;

    sg_err_clear(&err);
    id.str[0] = 'X';
    if (sg_spiffeid_parse(s, &id, &err) != SG_EINVAL) {
        fprintf(stderr, "  accepted \"%s\"\n", s);
        exit(1);
    }
    if (strstr(err.msg, why) == NULL) {
        fprintf(stderr, "  \"%s\": message \"%s\" lacks \"%s\"\n", s, err.msg, why);
        exit(1);
    }
    /* Out-params are untouched on failure. */
    ASSERT_EQ(id.str[0], 'X');
}

static void expect_good(const char *s, const char *td, const char *path)
{
    sg_spiffeid id;
    sg_err err;

    if (sg_spiffeid_parse(s, &id, &err) != 0) {
        fprintf(stderr, "  rejected \"%s\": %s\n", s, err.msg);
        exit(1);
    }
    ASSERT_STREQ(id.str, s);
    ASSERT_STREQ(id.td, td);
    ASSERT_STREQ(id.path, path);
}

TEST(spiffeid_accepts_valid_ids)
{
    expect_good("spiffe://example.org", "example.org", "");
    expect_good("spiffe://example.org/workload", "example.org", "/workload");
    expect_good("spiffe://staging.example.com/payments/mysql", "staging.example.com",
                "/payments/mysql");
    expect_good("spiffe://k8s-west.example.com/ns/staging/sa/default", "k8s-west.example.com",
                "/ns/staging/sa/default");
    expect_good("spiffe://td_1.x-y/A.b-C_d/..x/.y./...", "td_1.x-y", "/A.b-C_d/..x/.y./...");
    expect_good("spiffe://127.0.0.1/x", "127.0.0.1", "/x");
}

TEST(spiffeid_rejects_wrong_or_missing_scheme)
{
    expect_bad("", "empty");
    expect_bad("example.org/foo", "spiffe://");
    expect_bad("http://example.org/foo", "spiffe://");
    expect_bad("spiffe:/example.org", "spiffe://");
    expect_bad("spiffe:example.org", "spiffe://");
    expect_bad("spiff://example.org", "spiffe://");
}

TEST(spiffeid_rejects_uppercase_scheme)
{
    expect_bad("SPIFFE://example.org/foo", "lower case");
    expect_bad("Spiffe://example.org", "lower case");
}

TEST(spiffeid_rejects_uppercase_trust_domain)
{
    expect_bad("spiffe://Example.org/foo", "lower case");
    expect_bad("spiffe://EXAMPLE.ORG", "lower case");
}

TEST(spiffeid_rejects_empty_trust_domain)
{
    expect_bad("spiffe://", "empty");
    expect_bad("spiffe:///path", "empty");
}

TEST(spiffeid_rejects_port)
{
    expect_bad("spiffe://example.org:8080/foo", "port");
    expect_bad("spiffe://example.org:", "port");
}

TEST(spiffeid_rejects_userinfo)
{
    expect_bad("spiffe://user@example.org/foo", "userinfo");
    expect_bad("spiffe://user:pw@example.org/foo", "port");
}

TEST(spiffeid_rejects_bad_trust_domain_chars)
{
    expect_bad("spiffe://exa mple.org", "[a-z0-9.-_]");
    expect_bad("spiffe://example!.org", "[a-z0-9.-_]");
    expect_bad("spiffe://[::1]/x", "[a-z0-9.-_]");
    expect_bad("spiffe://ex\xc3\xa9.org", "[a-z0-9.-_]");
}

TEST(spiffeid_rejects_bad_path_chars)
{
    expect_bad("spiffe://example.org/foo bar", "[a-zA-Z0-9.-_]");
    expect_bad("spiffe://example.org/foo$", "[a-zA-Z0-9.-_]");
    expect_bad("spiffe://example.org/f\xc3\xa9", "[a-zA-Z0-9.-_]");
    expect_bad("spiffe://example.org/a\\b", "[a-zA-Z0-9.-_]");
}

TEST(spiffeid_rejects_percent_encoding)
{
    expect_bad("spiffe://example%2eorg/foo", "percent");
    expect_bad("spiffe://example.org/foo%20bar", "percent");
    expect_bad("spiffe://example.org/%41", "percent");
}

TEST(spiffeid_rejects_empty_segment)
{
    expect_bad("spiffe://example.org//foo", "empty segment");
    expect_bad("spiffe://example.org/foo//bar", "empty segment");
}

TEST(spiffeid_rejects_dot_segments)
{
    expect_bad("spiffe://example.org/.", "\".\"");
    expect_bad("spiffe://example.org/..", "\"..\"");
    expect_bad("spiffe://example.org/foo/./bar", "\".\"");
    expect_bad("spiffe://example.org/foo/../bar", "\"..\"");
}

TEST(spiffeid_rejects_trailing_slash)
{
    expect_bad("spiffe://example.org/", "end with '/'");
    expect_bad("spiffe://example.org/foo/", "end with '/'");
}

TEST(spiffeid_rejects_query_and_fragment)
{
    expect_bad("spiffe://example.org/foo?x=1", "query or fragment");
    expect_bad("spiffe://example.org?x=1", "query or fragment");
    expect_bad("spiffe://example.org/foo#frag", "query or fragment");
    expect_bad("spiffe://example.org#frag", "query or fragment");
}

TEST(spiffeid_length_limit_2048)
{
    char buf[SG_SPIFFEID_MAX + 16];
    size_t prefix = strlen("spiffe://example.org/");
    sg_spiffeid id;
    sg_err err;

    memcpy(buf, "spiffe://example.org/", prefix);
    memset(buf + prefix, 'a', SG_SPIFFEID_MAX - prefix);
    buf[SG_SPIFFEID_MAX] = '\0';
    ASSERT_OK(sg_spiffeid_parse(buf, &id, &err));
    ASSERT_EQ(strlen(id.str), SG_SPIFFEID_MAX);
    buf[SG_SPIFFEID_MAX] = 'a';
    buf[SG_SPIFFEID_MAX + 1] = '\0';
    expect_bad(buf, "longer than 2048");
}

TEST(spiffeid_trust_domain_255_ok_256_not)
{
    char buf[300];
    sg_spiffeid id;
    sg_err err;

    memcpy(buf, "spiffe://", 9);
    memset(buf + 9, 'a', 255);
    buf[9 + 255] = '\0';
    ASSERT_OK(sg_spiffeid_parse(buf, &id, &err));
    ASSERT_EQ(strlen(id.td), 255);
    buf[9 + 255] = 'a';
    buf[9 + 256] = '\0';
    expect_bad(buf, "longer than 255");
}

TEST(spiffeid_trust_domain_parse_forms)
{
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_err err;

    ASSERT_OK(sg_trust_domain_parse("example.org", td, &err));
    ASSERT_STREQ(td, "example.org");
    ASSERT_OK(sg_trust_domain_parse("spiffe://example.org", td, &err));
    ASSERT_STREQ(td, "example.org");
    ASSERT_EQ(sg_trust_domain_parse("Example.org", td, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "lower case") != NULL);
    ASSERT_EQ(sg_trust_domain_parse("", td, &err), SG_EINVAL);
    ASSERT_EQ(sg_trust_domain_parse("spiffe://example.org/foo", td, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "path") != NULL);
    ASSERT_EQ(sg_trust_domain_parse("http://example.org", td, &err), SG_EINVAL);
    ASSERT_EQ(sg_trust_domain_parse("example.org:80", td, &err), SG_EINVAL);
    ASSERT_EQ(sg_trust_domain_parse("spiffe://", td, &err), SG_EINVAL);
}

TEST(spiffeid_member_of_compares_trust_domain)
{
    sg_spiffeid id;

    ASSERT_OK(sg_spiffeid_parse("spiffe://example.org/a", &id, NULL));
    ASSERT(sg_spiffeid_member_of(&id, "example.org"));
    ASSERT(!sg_spiffeid_member_of(&id, "example.org.evil"));
    ASSERT(!sg_spiffeid_member_of(&id, "example"));
}

TEST(spiffeid_from_parts_builds_and_validates)
{
    sg_spiffeid id;
    sg_err err;

    ASSERT_OK(sg_spiffeid_from_parts("example.org", "/spire/agent/join_token/abc", &id, &err));
    ASSERT_STREQ(id.str, "spiffe://example.org/spire/agent/join_token/abc");
    ASSERT_STREQ(id.path, "/spire/agent/join_token/abc");
    ASSERT_OK(sg_spiffeid_from_parts("example.org", "", &id, &err));
    ASSERT_STREQ(id.str, "spiffe://example.org");
    ASSERT_EQ(sg_spiffeid_from_parts("example.org", "nope", &id, &err), SG_EINVAL);
    ASSERT_EQ(sg_spiffeid_from_parts("example.org/x", "/y", &id, &err), SG_EINVAL);
    ASSERT_EQ(sg_spiffeid_from_parts("example.org", "/a/../b", &id, &err), SG_EINVAL);
}

TEST(spiffeid_reserved_paths_are_recognised)
{
    static const char *const reserved[] = {"spiffe://example.org/spire",
                                           "spiffe://example.org/spire/server",
                                           "spiffe://example.org/spire/agent/join_token/abc"};
    static const char *const free_ids[] = {"spiffe://example.org/spirex",
                                           "spiffe://example.org/app/spire",
                                           "spiffe://example.org/Spire/server"};
    sg_spiffeid id;

    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++) {
        ASSERT_OK(sg_spiffeid_parse(reserved[i], &id, NULL));
        ASSERT(sg_spiffeid_is_reserved(&id));
    }
    for (size_t i = 0; i < sizeof free_ids / sizeof free_ids[0]; i++) {
        ASSERT_OK(sg_spiffeid_parse(free_ids[i], &id, NULL));
        ASSERT(!sg_spiffeid_is_reserved(&id));
    }
}
