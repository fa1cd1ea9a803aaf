/* Unit tests for common/selector.c. */
#include "common/selector.h"
#include "test/runner.h"

TEST(selector_parse_splits_at_first_colon)
{
    sg_selector s;
    sg_err err;

    ASSERT_OK(sg_selector_parse("unix:uid:1000", &s, &err));
    ASSERT_STREQ(s.type, "unix");
    ASSERT_STREQ(s.value, "uid:1000");
    sg_selector_cleanup(&s);
    ASSERT(s.type == NULL);
    sg_selector_cleanup(NULL);
}

TEST(selector_parse_rejects_bad_input)
{
    const char *bad[] = {"", "unix", ":uid:1", "unix:", "un\x01ix:a", "unix:a\nb", "unix:a\x7f"};
    sg_selector s = {0};
    sg_err err;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ASSERT_EQ(sg_selector_parse(bad[i], &s, &err), SG_EINVAL);
        ASSERT(s.type == NULL);
    }
    ASSERT_ERR(sg_selector_parse("unix", &s, &err));
    ASSERT(strstr(err.msg, "\"unix\"") != NULL);
    ASSERT_ERR(sg_selector_parse(":x", &s, &err));
    ASSERT(strstr(err.msg, "empty type") != NULL);
    ASSERT_ERR(sg_selector_parse("x:", &s, &err));
    ASSERT(strstr(err.msg, "empty value") != NULL);
}

TEST(selector_parse_rejects_too_long)
{
    char buf[SG_SELECTOR_MAX_LEN + 2];
    sg_selector s;
    sg_err err;

    memset(buf, 'a', sizeof buf - 1);
    buf[4] = ':';
    buf[SG_SELECTOR_MAX_LEN] = '\0';
    ASSERT_OK(sg_selector_parse(buf, &s, &err));
    sg_selector_cleanup(&s);
    buf[SG_SELECTOR_MAX_LEN] = 'a';
    buf[SG_SELECTOR_MAX_LEN + 1] = '\0';
    ASSERT_EQ(sg_selector_parse(buf, &s, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "longer than") != NULL);
}

TEST(selector_init_validates)
{
    sg_selector s;
    sg_err err;

    ASSERT_OK(sg_selector_init(&s, "spiffe_id", "spiffe://example.org/x", &err));
    ASSERT_STREQ(s.value, "spiffe://example.org/x");
    sg_selector_cleanup(&s);
    ASSERT_EQ(sg_selector_init(&s, "a:b", "c", &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "':'") != NULL);
    ASSERT_EQ(sg_selector_init(&s, "", "c", &err), SG_EINVAL);
    ASSERT_EQ(sg_selector_init(&s, "a", "", &err), SG_EINVAL);
    ASSERT_EQ(sg_selector_init(&s, NULL, "c", &err), SG_EINVAL);
}

TEST(selector_cmp_orders_by_type_then_value)
{
    sg_selector a = {"unix", "gid:1"}, b = {"unix", "uid:0"}, c = {"k8s", "zz"};

    ASSERT(sg_selector_cmp(&a, &b) < 0);
    ASSERT(sg_selector_cmp(&b, &a) > 0);
    ASSERT(sg_selector_cmp(&c, &a) < 0);
    ASSERT_EQ(sg_selector_cmp(&a, &a), 0);
}

TEST(selector_set_sorted_without_duplicates)
{
    sg_selector_set set = {0};

    ASSERT_OK(sg_selector_set_add(&set, "unix", "uid:1000"));
    ASSERT_OK(sg_selector_set_add(&set, "unix", "gid:1000"));
    ASSERT_OK(sg_selector_set_add(&set, "k8s", "ns:default"));
    ASSERT_OK(sg_selector_set_add(&set, "unix", "uid:1000"));
    ASSERT_EQ(set.n, 3);
    ASSERT_STREQ(set.items[0].type, "k8s");
    ASSERT_STREQ(set.items[1].value, "gid:1000");
    ASSERT_STREQ(set.items[2].value, "uid:1000");
    ASSERT(sg_selector_set_contains(&set, "unix", "gid:1000"));
    ASSERT(!sg_selector_set_contains(&set, "unix", "gid:100"));
    ASSERT_EQ(sg_selector_set_add(&set, "", "x"), SG_EINVAL);
    ASSERT_EQ(sg_selector_set_add(&set, "a:b", "x"), SG_EINVAL);
    ASSERT_EQ(set.n, 3);
    sg_selector_set_cleanup(&set);
    ASSERT_EQ(set.n, 0);
    sg_selector_set_cleanup(&set);
}

TEST(selector_set_caps_size)
{
    sg_selector_set set = {0};
    char v[32];

    for (int i = 0; i < SG_SELECTOR_SET_MAX; i++) {
        snprintf(v, sizeof v, "uid:%d", i);
        ASSERT_OK(sg_selector_set_add(&set, "unix", v));
    }
    ASSERT_EQ(sg_selector_set_add(&set, "unix", "one-more"), SG_ETOOBIG);
    /* A duplicate is still a no-op at the cap. */
    ASSERT_OK(sg_selector_set_add(&set, "unix", "uid:5"));
    for (size_t i = 1; i < set.n; i++)
        ASSERT(sg_selector_cmp(&set.items[i - 1], &set.items[i]) < 0);
    sg_selector_set_cleanup(&set);
}

TEST(selector_matches_subset)
{
    sg_selector_set have = {0};
    sg_selector want1[] = {{"unix", "uid:1000"}};
    sg_selector want2[] = {{"unix", "uid:1000"}, {"unix", "gid:50"}};
    sg_selector want3[] = {{"unix", "uid:1000"}, {"unix", "gid:51"}};
    sg_selector want4[] = {{"unix", "uid:100"}};

    ASSERT_OK(sg_selector_set_add(&have, "unix", "uid:1000"));
    ASSERT_OK(sg_selector_set_add(&have, "unix", "gid:50"));
    ASSERT_OK(sg_selector_set_add(&have, "unix", "user:alice"));
    ASSERT(sg_selector_set_matches(&have, want1, 1));
    ASSERT(sg_selector_set_matches(&have, want2, 2));
    ASSERT(!sg_selector_set_matches(&have, want3, 2));
    ASSERT(!sg_selector_set_matches(&have, want4, 1));
    /* An entry with no selectors never matches. */
    ASSERT(!sg_selector_set_matches(&have, want1, 0));
    sg_selector_set_cleanup(&have);
    /* An empty workload set matches nothing. */
    ASSERT(!sg_selector_set_matches(&have, want1, 1));
}
