/*
 * Unit tests for server/jwt_authority.c: key slots, the rotation schedule,
 * persistence with KeyManager "disk", taint and revoke, and the claims and
 * signatures of the JWT-SVIDs it signs (checked with OpenSSL directly).
 */
#include "server/jwt_authority.h"

#include "test/runner.h"

#include <jansson.h>
#include <openssl/ecdsa.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NOW ((int64_t)1700000000)

static sg_jwt_authority *new_auth(sg_key_type kt, sg_jwt_alg alg, int64_t ttl, const char *dir,
                                  int64_t now)
{
    sg_jwt_authority_options o = {0};
    sg_jwt_authority *a = NULL;
    sg_err err = {0};

    o.trust_domain = "example.org";
    o.key_type = kt;
    o.alg = alg;
    o.key_ttl_s = ttl;
    o.keys_dir = dir;
    o.issuer = "https://issuer.example.org";
    o.max_svid_ttl_s = 300;
    if (sg_jwt_authority_new(&a, &o, now, &err) != 0)
        SG__FAIL("sg_jwt_authority_new: %s", err.msg);
    return a;
}

static sg_jwt_authority *new_default(int64_t ttl, const char *dir)
{
    return new_auth(SG_KEY_EC_P256, SG_JWT_ES256, ttl, dir, NOW);
}

/* The key in state st (asserts there is exactly one). */
static sg_jwt_authority_info key_in(sg_jwt_authority *a, sg_jwt_key_state st)
{
    sg_jwt_authority_info *v = NULL, out;
    size_t n = 0, found = 0;
    sg_err err;

    ASSERT_OK(sg_jwt_authority_list(a, &v, &n, &err));
    memset(&out, 0, sizeof out);
    for (size_t i = 0; i < n; i++)
        if (v[i].state == st) {
            out = v[i];
            out.spki.data = NULL;
            out.spki.len = 0;
            found++;
        }
    sg_jwt_authority_infos_free(v, n);
    if (found != 1)
        SG__FAIL("%zu keys in state %s", found, sg_jwt_key_state_name(st));
    return out;
}

static size_t nkeys(sg_jwt_authority *a)
{
    sg_jwt_authority_info *v = NULL;
    size_t n = 0;
    sg_err err;

    ASSERT_OK(sg_jwt_authority_list(a, &v, &n, &err));
    sg_jwt_authority_infos_free(v, n);
    return n;
}

/* base64url (no padding) to bytes; returns length. */
static size_t b64u_decode(const char *s, size_t len, uint8_t *out, size_t cap)
{
    char buf[8192];
    size_t n = 0;
    int r;

    ASSERT(len + 4 < sizeof buf);
    for (size_t i = 0; i < len; i++)
        buf[n++] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    while (n % 4)
        buf[n++] = '=';
    buf[n] = '\0';
    ASSERT(n / 4 * 3 <= cap);
    r = EVP_DecodeBlock(out, (const unsigned char *)buf, (int)n);
    ASSERT(r >= 0);
    if (len % 4 == 2)
        r -= 2;
    else if (len % 4 == 3)
        r -= 1;
    return (size_t)r;
}

/* Decodes part idx (0 header, 1 payload) of token as JSON. */
static json_t *token_part(const char *token, int idx)
{
    const char *p = token, *end;
    uint8_t out[8192];
    size_t n;
    json_error_t je;
    json_t *j;

    for (int i = 0; i < idx; i++) {
        p = strchr(p, '.');
        ASSERT(p != NULL);
        p++;
    }
    end = strchr(p, '.');
    ASSERT(end != NULL);
    n = b64u_decode(p, (size_t)(end - p), out, sizeof out);
    j = json_loadb((const char *)out, n, 0, &je);
    if (j == NULL)
        SG__FAIL("token part %d is not JSON: %s", idx, je.text);
    return j;
}

/* Verifies an ES256 token's signature with the DER SubjectPublicKeyInfo spki. */
static bool es256_verifies(const char *token, const sg_der *spki)
{
    const char *dot2 = strrchr(token, '.');
    const unsigned char *p = spki->data;
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)spki->len);
    uint8_t raw[256], *der = NULL;
    size_t n = b64u_decode(dot2 + 1, strlen(dot2 + 1), raw, sizeof raw);
    ECDSA_SIG *sig = ECDSA_SIG_new();
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int dlen, ok;

    ASSERT(pk != NULL);
    ASSERT_EQ(n, 64);
    ECDSA_SIG_set0(sig, BN_bin2bn(raw, 32, NULL), BN_bin2bn(raw + 32, 32, NULL));
    dlen = i2d_ECDSA_SIG(sig, &der);
    ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pk) == 1 &&
         EVP_DigestVerify(ctx, der, (size_t)dlen, (const uint8_t *)token, (size_t)(dot2 - token)) ==
             1;
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pk);
    return ok;
}

TEST(jwt_authority_creates_one_active_key)
{
    sg_jwt_authority *a = new_default(3600, NULL);
    sg_jwt_authority_info act = key_in(a, SG_JWT_KEY_ACTIVE);
    sg_jwt_key *keys = NULL;
    size_t n = 0;
    sg_err err;

    ASSERT_EQ(strlen(act.kid), 32);
    ASSERT_EQ(act.issued_at, NOW);
    ASSERT_EQ(act.expires_at, NOW + 3600);
    ASSERT(!act.tainted);
    ASSERT_EQ(nkeys(a), 1);
    ASSERT_OK(sg_jwt_authority_keys(a, &keys, &n, &err));
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(keys[0].kid, act.kid);
    ASSERT_EQ(keys[0].expires_at, NOW + 3600);
    ASSERT(keys[0].spki.len > 60);
    sg_jwt_authority_keys_free(keys, n);
    sg_jwt_authority_free(a);
}

TEST(jwt_authority_sign_writes_claims_and_verifies)
{
    sg_jwt_authority *a = new_default(3600, NULL);
    const char *aud[] = {"spiffe://example.org/db", "other"};
    sg_jwt_svid s;
    sg_jwt_key *keys = NULL;
    size_t n = 0;
    sg_err err;
    json_t *h, *p;

    ASSERT_OK(sg_jwt_authority_sign(a, "spiffe://example.org/web", aud, 2, 60, NOW + 5, &s, &err));
    ASSERT_EQ(s.issued_at, NOW + 5);
    ASSERT_EQ(s.expires_at, NOW + 65);
    h = token_part(s.token, 0);
    p = token_part(s.token, 1);
    ASSERT_STREQ(json_string_value(json_object_get(h, "alg")), "ES256");
    ASSERT_STREQ(json_string_value(json_object_get(h, "kid")), s.kid);
    ASSERT_STREQ(json_string_value(json_object_get(p, "sub")), "spiffe://example.org/web");
    ASSERT_STREQ(json_string_value(json_object_get(p, "iss")), "https://issuer.example.org");
    ASSERT_EQ(json_integer_value(json_object_get(p, "iat")), NOW + 5);
    ASSERT_EQ(json_integer_value(json_object_get(p, "exp")), NOW + 65);
    ASSERT_EQ(json_array_size(json_object_get(p, "aud")), 2);
    ASSERT_STREQ(json_string_value(json_array_get(json_object_get(p, "aud"), 1)), "other");
    ASSERT_OK(sg_jwt_authority_keys(a, &keys, &n, &err));
    ASSERT(es256_verifies(s.token, &keys[0].spki));
    sg_jwt_authority_keys_free(keys, n);
    json_decref(h);
    json_decref(p);
    sg_jwt_svid_cleanup(&s);
    sg_jwt_authority_free(a);
}

TEST(jwt_authority_ttl_defaults_and_is_capped_by_the_key)
{
    sg_jwt_authority_options o = {0};
    sg_jwt_authority *a = NULL;
    const char *aud[] = {"x"};
    sg_jwt_svid s;
    sg_err err;

    o.trust_domain = "spiffe://example.org";
    o.key_ttl_s = 1000;
    o.default_svid_ttl_s = 120;
    ASSERT_OK(sg_jwt_authority_new(&a, &o, NOW, &err));
    ASSERT_OK(sg_jwt_authority_sign(a, "spiffe://example.org/w", aud, 1, 0, NOW, &s, &err));
    ASSERT_EQ(s.expires_at, NOW + 120);
    sg_jwt_svid_cleanup(&s);
    ASSERT_OK(
        sg_jwt_authority_sign(a, "spiffe://example.org/w", aud, 1, 100000, NOW + 10, &s, &err));
    ASSERT_EQ(s.expires_at, NOW + 1000);
    sg_jwt_svid_cleanup(&s);
    sg_jwt_authority_free(a);

    /* Without a configured default, SPIRE's five minutes. */
    o.default_svid_ttl_s = 0;
    ASSERT_OK(sg_jwt_authority_new(&a, &o, NOW, &err));
    ASSERT_OK(sg_jwt_authority_sign(a, "spiffe://example.org/w", aud, 1, 0, NOW, &s, &err));
    ASSERT_EQ(s.expires_at, NOW + SG_JWT_SVID_TTL_DEFAULT_S);
    sg_jwt_svid_cleanup(&s);
    sg_jwt_authority_free(a);
}

TEST(jwt_authority_sign_rejects_bad_input)
{
    sg_jwt_authority *a = new_default(3600, NULL);
    const char *one[] = {"a"}, *empty[] = {"a", ""}, *many[SG_JWT_AUD_MAX + 1], *ctl[] = {"a\nb"};
    char big[SG_JWT_AUD_LEN_MAX + 2];
    const char *bigv[] = {big};
    sg_jwt_svid s;
    sg_err err;

    for (size_t i = 0; i <= SG_JWT_AUD_MAX; i++)
        many[i] = "x";
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ASSERT_EQ(sg_jwt_authority_sign(a, "spiffe://example.org/w", one, 0, 0, NOW, &s, &err),
              SG_EINVAL);
    ASSERT(strstr(err.msg, "audience is required") != NULL);
    ASSERT_EQ(sg_jwt_authority_sign(a, "spiffe://example.org/w", empty, 2, 0, NOW, &s, &err),
              SG_EINVAL);
    ASSERT(strstr(err.msg, "audience 2 is empty") != NULL);
    ASSERT_EQ(sg_jwt_authority_sign(a, "spiffe://example.org/w", many, SG_JWT_AUD_MAX + 1, 0, NOW,
                                    &s, &err),
              SG_EINVAL);
    ASSERT(strstr(err.msg, "too many audiences") != NULL);
    ASSERT_EQ(sg_jwt_authority_sign(a, "spiffe://example.org/w", bigv, 1, 0, NOW, &s, &err),
              SG_EINVAL);
    ASSERT(strstr(err.msg, "too long") != NULL);
    ASSERT_EQ(sg_jwt_authority_sign(a, "spiffe://example.org/w", ctl, 1, 0, NOW, &s, &err),
              SG_EINVAL);
    ASSERT_EQ(sg_jwt_authority_sign(a, "spiffe://other.org/w", one, 1, 0, NOW, &s, &err),
              SG_EINVAL);
    ASSERT(strstr(err.msg, "spiffe://other.org/w") != NULL);
    ASSERT_EQ(sg_jwt_authority_sign(a, "spiffe://Example.org/w", one, 1, 0, NOW, &s, &err),
              SG_EINVAL);
    ASSERT_EQ(sg_jwt_authority_sign(a, "", one, 1, 0, NOW, &s, &err), SG_EINVAL);
    ASSERT_EQ(sg_jwt_authority_sign(a, NULL, one, 1, 0, NOW, &s, &err), SG_EINVAL);
    sg_jwt_authority_free(a);
}

TEST(jwt_authority_rotates_on_the_ca_schedule)
{
    /* ttl 600: prepare below 300 s left, activate below 100 s left. */
    sg_jwt_authority *a = new_default(600, NULL);
    sg_jwt_authority_info first = key_in(a, SG_JWT_KEY_ACTIVE), prep, act, old;
    uint64_t g0 = sg_jwt_authority_generation(a);
    const char *aud[] = {"x"};
    sg_jwt_svid s;
    bool changed = true;
    sg_err err;

    ASSERT_OK(sg_jwt_authority_rotate(a, NOW + 299, &changed, &err));
    ASSERT(!changed);
    ASSERT_EQ(nkeys(a), 1);
    ASSERT_OK(sg_jwt_authority_rotate(a, NOW + 301, &changed, &err));
    ASSERT(changed);
    ASSERT_EQ(nkeys(a), 2);
    prep = key_in(a, SG_JWT_KEY_PREPARED);
    ASSERT(strcmp(prep.kid, first.kid) != 0);
    ASSERT_EQ(prep.expires_at, NOW + 301 + 600);
    ASSERT(sg_jwt_authority_generation(a) > g0);
    /* Still signing with the first key until activation. */
    ASSERT_OK(sg_jwt_authority_sign(a, "spiffe://example.org/w", aud, 1, 0, NOW + 400, &s, &err));
    ASSERT_STREQ(s.kid, first.kid);
    ASSERT_EQ(s.expires_at, NOW + 600); /* capped by the key */
    sg_jwt_svid_cleanup(&s);
    ASSERT_OK(sg_jwt_authority_rotate(a, NOW + 501, &changed, &err));
    ASSERT(changed);
    act = key_in(a, SG_JWT_KEY_ACTIVE);
    old = key_in(a, SG_JWT_KEY_OLD);
    ASSERT_STREQ(act.kid, prep.kid);
    ASSERT_STREQ(old.kid, first.kid);
    ASSERT_OK(sg_jwt_authority_sign(a, "spiffe://example.org/w", aud, 1, 0, NOW + 502, &s, &err));
    ASSERT_STREQ(s.kid, prep.kid);
    sg_jwt_svid_cleanup(&s);
    /* The old key stays published until what it signed expired (its own expiry). */
    ASSERT_OK(sg_jwt_authority_rotate(a, NOW + 599, &changed, &err));
    ASSERT(!changed);
    ASSERT_EQ(nkeys(a), 2);
    ASSERT_OK(sg_jwt_authority_rotate(a, NOW + 600, &changed, &err));
    ASSERT(changed);
    ASSERT_EQ(nkeys(a), 1);
    sg_jwt_authority_free(a);
}

TEST(jwt_authority_persists_keys_0600_and_reloads_them)
{
    char dir[300], path[400];
    sg_jwt_authority *a;
    sg_jwt_authority_info act, prep;
    struct stat st;
    sg_err err;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    a = new_default(3600, dir);
    act = key_in(a, SG_JWT_KEY_ACTIVE);
    ASSERT_OK(sg_jwt_authority_prepare(a, NOW + 1, &prep, &err));
    sg_jwt_authority_info_cleanup(&prep);
    sg_jwt_authority_free(a);
    snprintf(path, sizeof path, "%s/jwt-%s.key", dir, act.kid);
    ASSERT_OK(stat(path, &st));
    ASSERT_EQ(st.st_mode & 0777, 0600);
    snprintf(path, sizeof path, "%s/jwt-slots.json", dir);
    ASSERT_OK(stat(path, &st));
    ASSERT_EQ(st.st_mode & 0777, 0600);

    a = new_default(3600, dir);
    ASSERT_STREQ(key_in(a, SG_JWT_KEY_ACTIVE).kid, act.kid);
    ASSERT_STREQ(key_in(a, SG_JWT_KEY_PREPARED).kid, prep.kid);
    ASSERT_EQ(key_in(a, SG_JWT_KEY_ACTIVE).expires_at, NOW + 3600);
    sg_jwt_authority_free(a);

    /* Past every key's expiry: a fresh key, and the generation moves on. */
    a = new_auth(SG_KEY_EC_P256, SG_JWT_ES256, 3600, dir, NOW + 7200);
    ASSERT_EQ(nkeys(a), 1);
    ASSERT(strcmp(key_in(a, SG_JWT_KEY_ACTIVE).kid, act.kid) != 0);
    ASSERT(strcmp(key_in(a, SG_JWT_KEY_ACTIVE).kid, prep.kid) != 0);
    ASSERT(sg_jwt_authority_generation(a) > 0);
    sg_jwt_authority_free(a);
}

TEST(jwt_authority_refuses_a_readable_key_file)
{
    char dir[300], path[400];
    sg_jwt_authority_options o = {0};
    sg_jwt_authority *a;
    sg_jwt_authority_info act;
    sg_err err;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    a = new_default(3600, dir);
    act = key_in(a, SG_JWT_KEY_ACTIVE);
    sg_jwt_authority_free(a);
    snprintf(path, sizeof path, "%s/jwt-%s.key", dir, act.kid);
    ASSERT_OK(chmod(path, 0644));
    o.trust_domain = "example.org";
    o.keys_dir = dir;
    a = NULL;
    ASSERT_ERR(sg_jwt_authority_new(&a, &o, NOW, &err));
    ASSERT(a == NULL);
    ASSERT(strstr(err.msg, path) != NULL);
}

TEST(jwt_authority_reports_a_corrupt_state_file)
{
    char dir[300], path[400];
    sg_jwt_authority_options o = {0};
    sg_jwt_authority *a = NULL;
    FILE *f;
    sg_err err;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    ASSERT_OK(mkdir(dir, 0700));
    snprintf(path, sizeof path, "%s/jwt-slots.json", dir);
    f = fopen(path, "w");
    fputs("{\"keys\": [", f);
    fclose(f);
    o.trust_domain = "example.org";
    o.keys_dir = dir;
    ASSERT_EQ(sg_jwt_authority_new(&a, &o, NOW, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "jwt-slots.json") != NULL);
    ASSERT(strstr(err.msg, "not valid JSON") != NULL);

    f = fopen(path, "w");
    fputs("{\"keys\": [{\"kid\": \"../../etc/passwd\", \"state\": \"active\", \"expires_at\": 1}]}",
          f);
    fclose(f);
    ASSERT_EQ(sg_jwt_authority_new(&a, &o, NOW, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "bad kid") != NULL);
}

TEST(jwt_authority_retires_a_key_of_another_type)
{
    char dir[300];
    sg_jwt_authority *a;
    sg_jwt_authority_info ec;
    const char *aud[] = {"x"};
    sg_jwt_svid s;
    sg_err err;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    a = new_default(3600, dir);
    ec = key_in(a, SG_JWT_KEY_ACTIVE);
    sg_jwt_authority_free(a);
    a = new_auth(SG_KEY_EC_P384, SG_JWT_ES384, 3600, dir, NOW + 10);
    ASSERT_STREQ(key_in(a, SG_JWT_KEY_OLD).kid, ec.kid);
    ASSERT(strcmp(key_in(a, SG_JWT_KEY_ACTIVE).kid, ec.kid) != 0);
    ASSERT_OK(sg_jwt_authority_sign(a, "spiffe://example.org/w", aud, 1, 0, NOW + 10, &s, &err));
    json_t *h = token_part(s.token, 0);
    ASSERT_STREQ(json_string_value(json_object_get(h, "alg")), "ES384");
    json_decref(h);
    sg_jwt_svid_cleanup(&s);
    sg_jwt_authority_free(a);
}

TEST(jwt_authority_operator_actions_check_state)
{
    sg_jwt_authority *a = new_default(3600, NULL);
    sg_jwt_authority_info first = key_in(a, SG_JWT_KEY_ACTIVE), prep, out;
    sg_err err;

    ASSERT_EQ(sg_jwt_authority_activate(a, NULL, NOW, &out, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "-authorityID") != NULL);
    ASSERT_EQ(sg_jwt_authority_activate(a, "not/a kid", NOW, &out, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "not/a kid") != NULL);
    ASSERT_EQ(sg_jwt_authority_activate(a, "AAAA", NOW, &out, &err), SG_ENOENT);
    ASSERT_EQ(sg_jwt_authority_activate(a, first.kid, NOW, &out, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "only the prepared") != NULL);
    ASSERT_EQ(sg_jwt_authority_taint(a, first.kid, NOW, &out, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "only an old") != NULL);
    ASSERT_EQ(sg_jwt_authority_revoke(a, first.kid, NOW, &out, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "not tainted") != NULL);

    ASSERT_OK(sg_jwt_authority_prepare(a, NOW, &prep, &err));
    ASSERT_EQ(prep.state, SG_JWT_KEY_PREPARED);
    ASSERT(prep.spki.len > 0);
    ASSERT_EQ(sg_jwt_authority_taint(a, prep.kid, NOW, &out, &err), SG_EINVAL);
    ASSERT_OK(sg_jwt_authority_activate(a, prep.kid, NOW, &out, &err));
    ASSERT_EQ(out.state, SG_JWT_KEY_ACTIVE);
    sg_jwt_authority_info_cleanup(&out);
    sg_jwt_authority_info_cleanup(&prep);
    ASSERT_STREQ(key_in(a, SG_JWT_KEY_OLD).kid, first.kid);
    sg_jwt_authority_free(a);
}

TEST(jwt_authority_taint_then_revoke_once_tokens_expired)
{
    sg_jwt_authority *a = new_default(3600, NULL);
    sg_jwt_authority_info first = key_in(a, SG_JWT_KEY_ACTIVE), prep, out;
    const char *aud[] = {"x"};
    char **kids = NULL;
    size_t n = 0;
    sg_jwt_svid s;
    uint64_t g;
    sg_err err;

    /* A token with a TTL past max_svid_ttl (300): revoke waits for it too. */
    ASSERT_OK(sg_jwt_authority_sign(a, "spiffe://example.org/w", aud, 1, 1000, NOW, &s, &err));
    sg_jwt_svid_cleanup(&s);
    ASSERT_OK(sg_jwt_authority_prepare(a, NOW, &prep, &err));
    ASSERT_OK(sg_jwt_authority_activate(a, prep.kid, NOW, NULL, &err));
    sg_jwt_authority_info_cleanup(&prep);
    g = sg_jwt_authority_generation(a);
    ASSERT_OK(sg_jwt_authority_taint(a, first.kid, NOW + 10, &out, &err));
    ASSERT(out.tainted);
    ASSERT_EQ(out.tainted_at, NOW + 10);
    sg_jwt_authority_info_cleanup(&out);
    ASSERT(sg_jwt_authority_generation(a) > g);
    ASSERT_EQ(sg_jwt_authority_taint(a, first.kid, NOW + 11, &out, &err), SG_EEXIST);
    ASSERT_OK(sg_jwt_authority_tainted(a, &kids, &n, &err));
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(kids[0], first.kid);
    sg_jwt_authority_kids_free(kids, n);

    ASSERT_EQ(sg_jwt_authority_revoke(a, first.kid, NOW + 500, &out, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "may still have live JWT-SVIDs") != NULL);
    ASSERT_EQ(sg_jwt_authority_revoke(a, first.kid, NOW + 999, &out, &err), SG_EINVAL);
    g = sg_jwt_authority_generation(a);
    ASSERT_OK(sg_jwt_authority_revoke(a, first.kid, NOW + 1000, &out, &err));
    ASSERT_STREQ(out.kid, first.kid);
    sg_jwt_authority_info_cleanup(&out);
    ASSERT(sg_jwt_authority_generation(a) > g);
    ASSERT_EQ(nkeys(a), 1);
    ASSERT_OK(sg_jwt_authority_tainted(a, &kids, &n, &err));
    ASSERT_EQ(n, 0);
    sg_jwt_authority_kids_free(kids, n);
    sg_jwt_authority_free(a);
}

TEST(jwt_authority_taint_survives_restart)
{
    char dir[300];
    sg_jwt_authority *a;
    sg_jwt_authority_info first, prep;
    char **kids = NULL;
    size_t n = 0;
    sg_err err;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    a = new_default(3600, dir);
    first = key_in(a, SG_JWT_KEY_ACTIVE);
    ASSERT_OK(sg_jwt_authority_prepare(a, NOW, &prep, &err));
    ASSERT_OK(sg_jwt_authority_activate(a, prep.kid, NOW, NULL, &err));
    sg_jwt_authority_info_cleanup(&prep);
    ASSERT_OK(sg_jwt_authority_taint(a, first.kid, NOW + 1, NULL, &err));
    sg_jwt_authority_free(a);
    a = new_default(3600, dir);
    ASSERT_OK(sg_jwt_authority_tainted(a, &kids, &n, &err));
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(kids[0], first.kid);
    sg_jwt_authority_kids_free(kids, n);
    ASSERT_EQ(key_in(a, SG_JWT_KEY_OLD).tainted_at, NOW + 1);
    sg_jwt_authority_free(a);
}

typedef struct race {
    sg_jwt_authority *a;
    int failures;
} race;

static void *signer(void *arg)
{
    race *r = arg;
    const char *aud[] = {"x"};

    for (int i = 0; i < 300; i++) {
        sg_jwt_svid s;
        sg_err err;
        if (sg_jwt_authority_sign(r->a, "spiffe://example.org/w", aud, 1, 0, NOW, &s, &err) < 0)
            r->failures++;
        else
            sg_jwt_svid_cleanup(&s);
    }
    return NULL;
}

TEST(jwt_authority_signs_while_keys_rotate)
{
    race r[4];
    pthread_t t[4];
    sg_jwt_authority *a = new_default(3600, NULL);
    sg_err err;

    for (int i = 0; i < 4; i++) {
        r[i].a = a;
        r[i].failures = 0;
        pthread_create(&t[i], NULL, signer, &r[i]);
    }
    for (int i = 0; i < 20; i++) {
        sg_jwt_authority_info p;
        ASSERT_OK(sg_jwt_authority_prepare(a, NOW, &p, &err));
        ASSERT_OK(sg_jwt_authority_activate(a, p.kid, NOW, NULL, &err));
        sg_jwt_authority_info_cleanup(&p);
        if (nkeys(a) > 10) {
            /* Make room: taint and revoke old keys once they could have expired. */
            sg_jwt_authority_info *v = NULL;
            size_t n = 0;
            ASSERT_OK(sg_jwt_authority_list(a, &v, &n, &err));
            for (size_t k = 0; k < n; k++)
                if (v[k].state == SG_JWT_KEY_OLD) {
                    ASSERT_OK(sg_jwt_authority_taint(a, v[k].kid, NOW, NULL, &err));
                    ASSERT_OK(sg_jwt_authority_revoke(a, v[k].kid, NOW + 3600, NULL, &err));
                }
            sg_jwt_authority_infos_free(v, n);
        }
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        ASSERT_EQ(r[i].failures, 0);
    }
    sg_jwt_authority_free(a);
}

static const sg_bundle *lookup_one(void *ctx, const char *td)
{
    const sg_bundle *b = ctx;

    return strcmp(td, b->trust_domain) == 0 ? b : NULL;
}

/* Validates token with sg_jwt_validate against the keys a publishes now. */
static int validate(sg_jwt_authority *a, const char *token, const char *aud, int64_t now,
                    sg_err *err)
{
    sg_bundle b;
    sg_jwt_validated v;
    int rc;

    memset(&b, 0, sizeof b);
    b.trust_domain = (char *)"example.org";
    ASSERT_OK(sg_jwt_authority_keys(a, &b.jwt, &b.njwt, err));
    memset(&v, 0, sizeof v);
    rc = sg_jwt_validate(token, aud, now, lookup_one, &b, &v, err);
    if (rc == 0)
        ASSERT_STREQ(v.spiffe_id, "spiffe://example.org/w");
    sg_jwt_validated_cleanup(&v);
    sg_jwt_authority_keys_free(b.jwt, b.njwt);
    return rc;
}

TEST(jwt_authority_tokens_validate_while_their_key_is_published)
{
    static const struct {
        sg_key_type kt;
        sg_jwt_alg alg;
    } types[] = {{SG_KEY_EC_P256, SG_JWT_ES256},
                 {SG_KEY_EC_P384, SG_JWT_ES384},
                 {SG_KEY_RSA_2048, SG_JWT_RS256},
                 {SG_KEY_RSA_2048, SG_JWT_PS256}};
    const char *aud[] = {"db"};
    int64_t now = (int64_t)time(NULL);

    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        sg_jwt_authority *a = new_auth(types[i].kt, types[i].alg, 600, NULL, now);
        sg_jwt_svid s;
        bool changed;
        sg_err err;
        json_t *h;

        ASSERT_OK(sg_jwt_authority_sign(a, "spiffe://example.org/w", aud, 1, 60, now, &s, &err));
        h = token_part(s.token, 0);
        ASSERT_STREQ(json_string_value(json_object_get(h, "alg")), sg_jwt_alg_name(types[i].alg));
        json_decref(h);
        if (validate(a, s.token, "db", now, &err) != 0)
            SG__FAIL("%s: %s", sg_jwt_alg_name(types[i].alg), err.msg);
        ASSERT_ERR(validate(a, s.token, "other", now, &err));
        /* Rotated out, the key still validates what it signed until it expires. */
        ASSERT_OK(sg_jwt_authority_rotate(a, now + 301, &changed, &err));
        ASSERT_OK(sg_jwt_authority_rotate(a, now + 501, &changed, &err));
        ASSERT(strcmp(key_in(a, SG_JWT_KEY_ACTIVE).kid, s.kid) != 0);
        ASSERT_OK(validate(a, s.token, "db", now, &err));
        ASSERT_OK(sg_jwt_authority_rotate(a, now + 600, &changed, &err));
        ASSERT_ERR(validate(a, s.token, "db", now, &err));
        sg_jwt_svid_cleanup(&s);
        sg_jwt_authority_free(a);
    }
}

TEST(jwt_authority_revoke_after_restart_waits_for_long_tokens)
{
    char dir[300];
    sg_jwt_authority *a;
    sg_jwt_authority_info first, prep;
    const char *aud[] = {"x"};
    sg_jwt_svid s;
    sg_err err;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    a = new_default(3600, dir);
    first = key_in(a, SG_JWT_KEY_ACTIVE);
    /* Longer than max_svid_ttl (300): an entry's own jwt_svid_ttl. */
    ASSERT_OK(sg_jwt_authority_sign(a, "spiffe://example.org/w", aud, 1, 1000, NOW, &s, &err));
    sg_jwt_svid_cleanup(&s);
    sg_jwt_authority_free(a);

    a = new_default(3600, dir);
    ASSERT_OK(sg_jwt_authority_prepare(a, NOW + 5, &prep, &err));
    ASSERT_OK(sg_jwt_authority_activate(a, prep.kid, NOW + 5, NULL, &err));
    sg_jwt_authority_info_cleanup(&prep);
    ASSERT_OK(sg_jwt_authority_taint(a, first.kid, NOW + 10, NULL, &err));
    ASSERT_EQ(sg_jwt_authority_revoke(a, first.kid, NOW + 999, NULL, &err), SG_EINVAL);
    /* The bound was written ahead of use: now + 2 x ttl. */
    ASSERT_EQ(sg_jwt_authority_revoke(a, first.kid, NOW + 1999, NULL, &err), SG_EINVAL);
    ASSERT_OK(sg_jwt_authority_revoke(a, first.kid, NOW + 2000, NULL, &err));
    sg_jwt_authority_free(a);
}

/*
 * jwt-slots.json as written before the slot machine moved to
 * server/slots.c (same keys, same order): the keys, their taint, the
 * generation and what each signed survive; a repeated entry is skipped.
 */
TEST(jwt_authority_reads_state_file_of_earlier_versions)
{
    const char *dir = sg_test_tmpdir();
    char path[600], text[2048], a[SG_JWT_KID_MAX + 1], b[SG_JWT_KID_MAX + 1];
    sg_jwt_authority *au = new_default(3600, dir);
    sg_jwt_authority_info info, *v = NULL;
    size_t n = 0;
    FILE *f;
    sg_err err;

    snprintf(a, sizeof a, "%s", key_in(au, SG_JWT_KEY_ACTIVE).kid);
    ASSERT_OK(sg_jwt_authority_prepare(au, NOW, &info, &err));
    snprintf(b, sizeof b, "%s", info.kid);
    sg_jwt_authority_info_cleanup(&info);
    sg_jwt_authority_free(au);
    snprintf(text, sizeof text,
             "{\n  \"version\": 1,\n  \"generation\": 12,\n  \"keys\": [\n"
             "    {\n      \"kid\": \"%s\",\n      \"state\": \"old\",\n"
             "      \"issued_at\": %lld,\n      \"expires_at\": %lld,\n      \"tainted\": true,\n"
             "      \"tainted_at\": %lld,\n      \"signed_until\": %lld\n    },\n"
             "    {\n      \"kid\": \"%s\",\n      \"state\": \"active\",\n"
             "      \"issued_at\": %lld,\n      \"expires_at\": %lld,\n      \"tainted\": false,\n"
             "      \"tainted_at\": 0,\n      \"signed_until\": 0\n    },\n"
             "    {\n      \"kid\": \"%s\",\n      \"state\": \"active\",\n"
             "      \"issued_at\": %lld,\n      \"expires_at\": %lld,\n      \"tainted\": false,\n"
             "      \"tainted_at\": 0,\n      \"signed_until\": 0\n    }\n  ]\n}",
             a, (long long)NOW, (long long)(NOW + 3600), (long long)NOW, (long long)(NOW + 1000), b,
             (long long)NOW, (long long)(NOW + 3600), a, (long long)NOW, (long long)(NOW + 3600));
    snprintf(path, sizeof path, "%s/jwt-slots.json", dir);
    f = fopen(path, "w");
    ASSERT(f != NULL);
    fputs(text, f);
    fclose(f);

    au = new_default(3600, dir);
    ASSERT_OK(sg_jwt_authority_list(au, &v, &n, &err));
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(v[0].kid, a);
    ASSERT_EQ(v[0].state, SG_JWT_KEY_OLD);
    ASSERT(v[0].tainted);
    ASSERT_EQ(v[0].signed_until, NOW + 1000);
    ASSERT_STREQ(v[1].kid, b);
    ASSERT_EQ(v[1].state, SG_JWT_KEY_ACTIVE);
    ASSERT_EQ(v[1].expires_at, NOW + 3600);
    sg_jwt_authority_infos_free(v, n);
    ASSERT_EQ(sg_jwt_authority_generation(au), 12);
    ASSERT_EQ(sg_jwt_authority_revoke(au, a, NOW + 301, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "may still have live JWT-SVIDs") != NULL);
    ASSERT_OK(sg_jwt_authority_revoke(au, a, NOW + 1000, NULL, &err));
    sg_jwt_authority_free(au);
}
