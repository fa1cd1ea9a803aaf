/*
 * Unit tests for common/jwt.c: alg and key-type names, kids, signing and
 * every JWT-SVID validation rule.
 */
#include "common/jwt.h"

#include "test/runner.h"

#include <jansson.h>
#include <openssl/evp.h>

#define NOW 1700000000
#define EXP "1700000060" /* NOW + 60 */

static EVP_PKEY *key_for(sg_jwt_alg alg)
{
    EVP_PKEY *k;

    switch (alg) {
    case SG_JWT_ES256:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        break;
    case SG_JWT_ES384:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
        break;
    case SG_JWT_ES512:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
        break;
    default:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
        break;
    }
    ASSERT(k != NULL);
    return k;
}

/* A fixture: one key in the bundle of example.org under its kid. */
typedef struct fixture {
    EVP_PKEY *key;
    sg_jwt_alg alg;
    char kid[33];
    sg_bundle bundle;
} fixture;

static void fixture_init(fixture *f, sg_jwt_alg alg)
{
    sg_err err;
    uint8_t *der = NULL;
    size_t len = 0;

    memset(f, 0, sizeof *f);
    f->alg = alg;
    f->key = key_for(alg);
    ASSERT_OK(sg_jwt_kid(f->key, f->kid, &err));
    ASSERT_OK(sg_key_to_spki_der(f->key, &der, &len, &err));
    f->bundle.trust_domain = strdup("example.org");
    f->bundle.jwt = calloc(1, sizeof *f->bundle.jwt);
    f->bundle.jwt[0].kid = strdup(f->kid);
    f->bundle.jwt[0].spki.data = malloc(len);
    memcpy(f->bundle.jwt[0].spki.data, der, len);
    f->bundle.jwt[0].spki.len = len;
    f->bundle.njwt = 1;
    OPENSSL_free(der);
}

static void fixture_cleanup(fixture *f)
{
    EVP_PKEY_free(f->key);
    sg_bundle_cleanup(&f->bundle);
}

static const sg_bundle *lookup(void *ctx, const char *td)
{
    const fixture *f = ctx;
    return strcmp(td, f->bundle.trust_domain) == 0 ? &f->bundle : NULL;
}

static char *sign_default(fixture *f, const char *sub)
{
    const char *aud[] = {"reports", "spiffe://example.org/db"};
    sg_jwt_claims c = {.sub = sub, .aud = aud, .naud = 2, .iat = NOW, .exp = NOW + 300};
    char *tok = NULL;
    sg_err err;

    ASSERT_OK(sg_jwt_sign(f->key, f->alg, f->kid, &c, &tok, &err));
    return tok;
}

static int validate(fixture *f, const char *tok, const char *aud, int64_t now, sg_err *err)
{
    sg_jwt_validated v;
    int rc = sg_jwt_validate(tok, aud, now, lookup, f, &v, err);
    if (rc == 0)
        sg_jwt_validated_cleanup(&v);
    return rc;
}

/* Validation must fail with SG_EINVAL and a message containing want. */
static void expect_invalid(fixture *f, const char *tok, const char *aud, int64_t now,
                           const char *want)
{
    sg_err err;

    sg_err_clear(&err);
    int rc = validate(f, tok, aud, now, &err);
    if (rc != SG_EINVAL || strstr(err.msg, want) == NULL)
        SG__FAIL("rc %d, message \"%s\", wanted \"%s\"", rc, err.msg, want);
}

static char *b64url(const char *s)
{
    char *o = NULL;
    ASSERT_OK(sg_bundle_b64_encode((const uint8_t *)s, strlen(s), true, &o, NULL));
    return o;
}

/* header.payload.signature from JSON header and payload texts and a signature part. */
static char *assemble(const char *hdr, const char *payload, const char *sig)
{
    char *h = b64url(hdr), *p = b64url(payload);
    size_t n = strlen(h) + strlen(p) + strlen(sig) + 3;
    char *t = malloc(n);
    snprintf(t, n, "%s.%s.%s", h, p, sig);
    free(h);
    free(p);
    return t;
}

/* Signs arbitrary header and payload JSON with f's key (bypassing sg_jwt_sign's checks). */
static char *sign_raw(fixture *f, const char *hdr, const char *payload)
{
    char *unsigned_tok = assemble(hdr, payload, "");
    size_t n = strlen(unsigned_tok) - 1; /* without the trailing dot */
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t der[512], raw[132];
    size_t dlen = sizeof der;
    char *s64 = NULL, *tok;

    ASSERT(f->alg == SG_JWT_ES256);
    ASSERT(EVP_DigestSignInit_ex(ctx, NULL, "SHA256", NULL, NULL, f->key, NULL) == 1);
    ASSERT(EVP_DigestSign(ctx, der, &dlen, (uint8_t *)unsigned_tok, n) == 1);
    EVP_MD_CTX_free(ctx);
    const uint8_t *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
    ASSERT(es != NULL);
    BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32);
    ECDSA_SIG_free(es);
    ASSERT_OK(sg_bundle_b64_encode(raw, 64, true, &s64, NULL));
    tok = malloc(n + 1 + strlen(s64) + 1);
    memcpy(tok, unsigned_tok, n);
    tok[n] = '.';
    memcpy(tok + n + 1, s64, strlen(s64) + 1);
    free(s64);
    free(unsigned_tok);
    return tok;
}

TEST(jwt_alg_names)
{
    sg_jwt_alg a;
    sg_key_type k;
    sg_err err;

    for (int i = SG_JWT_ES256; i <= SG_JWT_PS512; i++) {
        ASSERT_OK(sg_jwt_alg_parse(sg_jwt_alg_name((sg_jwt_alg)i), &a, &err));
        ASSERT_EQ(a, i);
    }
    ASSERT_STREQ(sg_jwt_alg_name(SG_JWT_PS384), "PS384");
    ASSERT_EQ(sg_jwt_alg_parse("es256", &a, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "es256") != NULL);
    ASSERT_EQ(sg_jwt_alg_parse("HS256", &a, &err), SG_EINVAL);
    ASSERT_EQ(sg_jwt_alg_parse("none", &a, &err), SG_EINVAL);
    ASSERT_EQ(sg_jwt_alg_parse(NULL, &a, &err), SG_EINVAL);

    ASSERT_OK(sg_jwt_key_type_parse("ec-p256", &k, &a, &err));
    ASSERT(k == SG_KEY_EC_P256 && a == SG_JWT_ES256);
    ASSERT_OK(sg_jwt_key_type_parse("ec-p384", &k, &a, &err));
    ASSERT(k == SG_KEY_EC_P384 && a == SG_JWT_ES384);
    ASSERT_OK(sg_jwt_key_type_parse("rsa-4096", &k, &a, &err));
    ASSERT(k == SG_KEY_RSA_4096 && a == SG_JWT_RS256);
    ASSERT_OK(sg_jwt_key_type_parse("PS256", &k, &a, &err));
    ASSERT(k == SG_KEY_RSA_2048 && a == SG_JWT_PS256);
    ASSERT_OK(sg_jwt_key_type_parse("RS256", &k, &a, &err));
    ASSERT(k == SG_KEY_RSA_2048 && a == SG_JWT_RS256);
    ASSERT_EQ(sg_jwt_key_type_parse("ed25519", &k, &a, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "ed25519") != NULL);
}

TEST(jwt_alg_for_key_and_kid)
{
    EVP_PKEY *a = key_for(SG_JWT_ES384), *b = key_for(SG_JWT_RS256);
    EVP_PKEY *c = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    char kid1[33], kid2[33];
    sg_jwt_alg alg;
    sg_err err;

    ASSERT_OK(sg_jwt_alg_for_key(a, &alg, &err));
    ASSERT_EQ(alg, SG_JWT_ES384);
    ASSERT_OK(sg_jwt_alg_for_key(b, &alg, &err));
    ASSERT_EQ(alg, SG_JWT_RS256);
    ASSERT_EQ(sg_jwt_alg_for_key(c, &alg, &err), SG_EINVAL);
    ASSERT_OK(sg_jwt_kid(a, kid1, &err));
    ASSERT_EQ(strlen(kid1), 32);
    ASSERT(strspn(kid1, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == 32);
    ASSERT_OK(sg_jwt_kid(a, kid2, &err));
    ASSERT_STREQ(kid1, kid2);
    ASSERT_OK(sg_jwt_kid(b, kid2, &err));
    ASSERT(strcmp(kid1, kid2) != 0);
    EVP_PKEY_free(a);
    EVP_PKEY_free(b);
    EVP_PKEY_free(c);
}

TEST(jwt_sign_validate_every_alg)
{
    for (int i = SG_JWT_ES256; i <= SG_JWT_PS512; i++) {
        fixture f;
        sg_jwt_validated v;
        sg_err err;
        fixture_init(&f, (sg_jwt_alg)i);
        char *tok = sign_default(&f, "spiffe://example.org/web");
        ASSERT(strlen(tok) < SG_JWT_MAX_LEN);
        if (sg_jwt_validate(tok, "reports", NOW + 10, lookup, &f, &v, &err) != 0)
            SG__FAIL("%s: %s", sg_jwt_alg_name((sg_jwt_alg)i), err.msg);
        ASSERT_STREQ(v.spiffe_id, "spiffe://example.org/web");
        ASSERT_EQ(v.exp, NOW + 300);
        json_t *claims = json_loads(v.claims_json, 0, NULL);
        ASSERT(claims != NULL);
        ASSERT_EQ(json_integer_value(json_object_get(claims, "iat")), NOW);
        ASSERT_EQ(json_array_size(json_object_get(claims, "aud")), 2);
        json_decref(claims);
        sg_jwt_validated_cleanup(&v);
        /* The second audience works as well. */
        ASSERT_OK(validate(&f, tok, "spiffe://example.org/db", NOW, &err));
        /* Header is exactly alg, kid, typ. */
        const char *dot = strchr(tok, '.');
        uint8_t *h = NULL;
        size_t hl = 0;
        ASSERT_OK(sg_bundle_b64_decode(tok, (size_t)(dot - tok), true, &h, &hl, &err));
        char want[128];
        snprintf(want, sizeof want, "{\"alg\":\"%s\",\"kid\":\"%s\",\"typ\":\"JWT\"}",
                 sg_jwt_alg_name((sg_jwt_alg)i), f.kid);
        ASSERT_STREQ((char *)h, want);
        free(h);
        free(tok);
        fixture_cleanup(&f);
    }
}

TEST(jwt_sign_single_audience_and_issuer)
{
    fixture f;
    const char *aud[] = {"only"};
    sg_jwt_claims c = {.sub = "spiffe://example.org/w",
                       .aud = aud,
                       .naud = 1,
                       .iat = NOW,
                       .exp = NOW + 60,
                       .iss = "https://issuer.example.org"};
    sg_jwt_validated v;
    char *tok = NULL;
    sg_err err;

    fixture_init(&f, SG_JWT_ES256);
    ASSERT_OK(sg_jwt_sign(f.key, f.alg, f.kid, &c, &tok, &err));
    ASSERT_OK(sg_jwt_validate(tok, "only", NOW, lookup, &f, &v, &err));
    ASSERT(strstr(v.claims_json, "\"aud\":\"only\"") != NULL);
    ASSERT(strstr(v.claims_json, "\"iss\":\"https://issuer.example.org\"") != NULL);
    sg_jwt_validated_cleanup(&v);
    free(tok);
    fixture_cleanup(&f);
}

TEST(jwt_sign_refuses_bad_input)
{
    fixture f;
    const char *aud[] = {"a", ""};
    sg_jwt_claims c = {
        .sub = "spiffe://example.org/w", .aud = aud, .naud = 1, .iat = NOW, .exp = NOW + 60};
    char *tok = NULL;
    sg_err err;

    fixture_init(&f, SG_JWT_ES256);
    /* Key and alg must agree. */
    ASSERT_EQ(sg_jwt_sign(f.key, SG_JWT_ES384, f.kid, &c, &tok, &err), SG_EINVAL);
    ASSERT_EQ(sg_jwt_sign(f.key, SG_JWT_RS256, f.kid, &c, &tok, &err), SG_EINVAL);
    ASSERT_EQ(sg_jwt_sign(f.key, f.alg, "", &c, &tok, &err), SG_EINVAL);
    c.naud = 2;
    ASSERT_EQ(sg_jwt_sign(f.key, f.alg, f.kid, &c, &tok, &err), SG_EINVAL);
    c.naud = 0;
    ASSERT_EQ(sg_jwt_sign(f.key, f.alg, f.kid, &c, &tok, &err), SG_EINVAL);
    c.naud = 1;
    c.sub = "https://example.org/w";
    ASSERT_EQ(sg_jwt_sign(f.key, f.alg, f.kid, &c, &tok, &err), SG_EINVAL);
    c.sub = "spiffe://example.org/w";
    c.exp = NOW;
    ASSERT_EQ(sg_jwt_sign(f.key, f.alg, f.kid, &c, &tok, &err), SG_EINVAL);
    /* A token no validator would accept is not produced. */
    c.exp = NOW + 60;
    static const char *many[400];
    for (size_t i = 0; i < 400; i++)
        many[i] = "spiffe://example.org/an/audience/of/some/length";
    c.aud = many;
    c.naud = 400;
    ASSERT_EQ(sg_jwt_sign(f.key, f.alg, f.kid, &c, &tok, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "limit 16384") != NULL);
    c.naud = 100;
    ASSERT_OK(sg_jwt_sign(f.key, f.alg, f.kid, &c, &tok, &err));
    free(tok);
    tok = NULL;
    ASSERT(tok == NULL);
    fixture_cleanup(&f);
}

TEST(jwt_validate_wrong_audience_and_expiry)
{
    fixture f;
    sg_err err;

    fixture_init(&f, SG_JWT_ES256);
    char *tok = sign_default(&f, "spiffe://example.org/web");
    expect_invalid(&f, tok, "other", NOW, "audience \"other\" is not in the aud claim");
    expect_invalid(&f, tok, "report", NOW, "not in the aud claim");
    expect_invalid(&f, tok, "", NOW, "audience is empty");
    /* exp is exclusive and has no leeway. */
    ASSERT_OK(validate(&f, tok, "reports", NOW + 299, &err));
    expect_invalid(&f, tok, "reports", NOW + 300, "expired");
    expect_invalid(&f, tok, "reports", NOW + 100000, "expired");
    /* iat in the future beyond a minute of skew. */
    ASSERT_OK(validate(&f, tok, "reports", NOW - 60, &err));
    expect_invalid(&f, tok, "reports", NOW - 61, "issued in the future");
    free(tok);
    fixture_cleanup(&f);
}

TEST(jwt_validate_alg_none_and_hs256)
{
    fixture f;
    char payload[256];

    fixture_init(&f, SG_JWT_ES256);
    snprintf(payload, sizeof payload,
             "{\"sub\":\"spiffe://example.org/w\",\"aud\":\"a\",\"exp\":%d}", NOW + 60);
    char *t = assemble("{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, "");
    expect_invalid(&f, t, "a", NOW, "alg \"none\" is not allowed");
    free(t);
    t = assemble("{\"alg\":\"none\"}", payload, "AAAA");
    expect_invalid(&f, t, "a", NOW, "alg \"none\"");
    free(t);
    char hdr[128];
    snprintf(hdr, sizeof hdr, "{\"alg\":\"HS256\",\"kid\":\"%s\"}", f.kid);
    /* An HMAC over the token with the public key as secret: the classic confusion attack. */
    t = assemble(hdr, payload, "c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMzItYnl0ZXMhISE");
    expect_invalid(&f, t, "a", NOW, "alg \"HS256\" is not allowed");
    free(t);
    t = assemble("{\"kid\":\"x\"}", payload, "AAAA");
    expect_invalid(&f, t, "a", NOW, "no alg");
    free(t);
    t = assemble("{\"alg\":5,\"kid\":\"x\"}", payload, "AAAA");
    expect_invalid(&f, t, "a", NOW, "non-string alg");
    free(t);
    /* ES384 header on a P-256 key. */
    snprintf(hdr, sizeof hdr, "{\"alg\":\"ES384\",\"kid\":\"%s\"}", f.kid);
    t = assemble(hdr, payload, "AAAA");
    expect_invalid(&f, t, "a", NOW, "needs an EC secp384r1 key");
    free(t);
    snprintf(hdr, sizeof hdr, "{\"alg\":\"RS256\",\"kid\":\"%s\"}", f.kid);
    t = assemble(hdr, payload, "AAAA");
    expect_invalid(&f, t, "a", NOW, "needs an RSA key");
    free(t);
    fixture_cleanup(&f);
}

TEST(jwt_validate_tampering)
{
    fixture f;

    fixture_init(&f, SG_JWT_ES256);
    char *tok = sign_default(&f, "spiffe://example.org/web");
    char *d1 = strchr(tok, '.'), *d2 = strchr(d1 + 1, '.');

    /* Payload: a different, well-formed payload with the original signature. */
    char payload[256];
    snprintf(payload, sizeof payload,
             "{\"aud\":[\"reports\"],\"exp\":%d,\"iat\":%d,\"sub\":\"spiffe://example.org/admin\"}",
             NOW + 300, NOW);
    char *p64 = b64url(payload);
    size_t n = strlen(tok) + strlen(p64) + 1;
    char *t = malloc(n);
    snprintf(t, n, "%.*s.%s%s", (int)(d1 - tok), tok, p64, d2);
    expect_invalid(&f, t, "reports", NOW, "signature is invalid");
    free(t);
    free(p64);

    /* One flipped bit in the signature, then a truncated and an extended one. */
    t = strdup(tok);
    char *s = t + (d2 - tok) + 5;
    *s = *s == 'A' ? 'B' : 'A';
    expect_invalid(&f, t, "reports", NOW, "signature is invalid");
    free(t);
    t = strdup(tok);
    t[strlen(t) - 2] = '\0'; /* 63 bytes: well-formed base64url, wrong size */
    expect_invalid(&f, t, "reports", NOW, "signature is invalid");
    free(t);
    n = strlen(tok) + 8;
    t = malloc(n);
    snprintf(t, n, "%sAAAA", tok);
    expect_invalid(&f, t, "reports", NOW, "signature is invalid");
    free(t);
    /* Signature not base64url; empty signature. */
    t = strdup(tok);
    t[strlen(t) - 2] = '+';
    expect_invalid(&f, t, "reports", NOW, "signature is not base64url");
    free(t);
    t = strdup(tok);
    t[d2 - tok + 1] = '\0';
    expect_invalid(&f, t, "reports", NOW, "signature is empty");
    free(t);
    free(tok);
    fixture_cleanup(&f);
}

TEST(jwt_validate_unknown_kid_and_trust_domain)
{
    fixture f, other;

    fixture_init(&f, SG_JWT_ES256);
    fixture_init(&other, SG_JWT_ES256);
    /* Signed by a key the bundle does not hold, under its own kid. */
    char *tok = sign_default(&other, "spiffe://example.org/web");
    expect_invalid(&f, tok, "reports", NOW, "is not in the bundle of \"example.org\"");
    free(tok);
    /* Signed by another key under the trusted key's kid. */
    memcpy(other.kid, f.kid, sizeof f.kid);
    tok = sign_default(&other, "spiffe://example.org/web");
    expect_invalid(&f, tok, "reports", NOW, "signature is invalid");
    free(tok);
    /* A trust domain with no bundle. */
    tok = sign_default(&f, "spiffe://elsewhere.test/web");
    expect_invalid(&f, tok, "reports", NOW, "no bundle for trust domain \"elsewhere.test\"");
    free(tok);
    fixture_cleanup(&f);
    fixture_cleanup(&other);
}

TEST(jwt_validate_header_rules)
{
    fixture f;
    char payload[256], hdr[256];
    sg_err err;

    fixture_init(&f, SG_JWT_ES256);
    snprintf(payload, sizeof payload,
             "{\"sub\":\"spiffe://example.org/w\",\"aud\":\"a\",\"exp\":%d}", NOW + 60);
    static const char *extra[] = {"crit", "jku", "x5u", "jwk", "x5c", "cty", "enc", "zip", "b64"};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) {
        char want[64];
        snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\",\"kid\":\"%s\",\"%s\":[\"x\"]}", f.kid,
                 extra[i]);
        char *t = sign_raw(&f, hdr, payload);
        snprintf(want, sizeof want, "header parameter \"%s\" is not allowed", extra[i]);
        expect_invalid(&f, t, "a", NOW, want);
        free(t);
    }
    /* typ JWT, JOSE or absent pass; anything else fails. */
    static const char *typs[] = {",\"typ\":\"JWT\"", ",\"typ\":\"JOSE\"", ""};
    for (size_t i = 0; i < 3; i++) {
        snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\",\"kid\":\"%s\"%s}", f.kid, typs[i]);
        char *t = sign_raw(&f, hdr, payload);
        ASSERT_OK(validate(&f, t, "a", NOW, &err));
        free(t);
    }
    snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\",\"kid\":\"%s\",\"typ\":\"at+jwt\"}", f.kid);
    char *t = sign_raw(&f, hdr, payload);
    expect_invalid(&f, t, "a", NOW, "typ \"at+jwt\" is not allowed");
    free(t);
    /* kid is required. */
    t = sign_raw(&f, "{\"alg\":\"ES256\"}", payload);
    expect_invalid(&f, t, "a", NOW, "no kid");
    free(t);
    /* Duplicate header members. */
    snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\",\"kid\":\"%s\",\"alg\":\"ES256\"}", f.kid);
    t = sign_raw(&f, hdr, payload);
    expect_invalid(&f, t, "a", NOW, "header is not valid JSON");
    free(t);
    fixture_cleanup(&f);
}

TEST(jwt_validate_claim_rules)
{
    fixture f;
    char hdr[128], payload[512];
    sg_err err;
    static const struct {
        const char *claims; /* " EXP " is replaced by an exp in the future */
        const char *want;
    } cases[] = {
        {"{\"aud\":\"a\",\"exp\":" EXP "}", "sub claim is missing"},
        {"{\"sub\":7,\"aud\":\"a\",\"exp\":" EXP "}", "sub claim is not a string"},
        {"{\"sub\":\"spiffe://example.org/\",\"aud\":\"a\",\"exp\":" EXP "}", "not a SPIFFE ID"},
        {"{\"sub\":\"spiffe://EXAMPLE.org/w\",\"aud\":\"a\",\"exp\":" EXP "}", "not a SPIFFE ID"},
        {"{\"sub\":\"spiffe://example.org/w\",\"exp\":" EXP "}", "aud claim is missing"},
        {"{\"sub\":\"spiffe://example.org/w\",\"aud\":[],\"exp\":" EXP "}", "aud claim is not"},
        {"{\"sub\":\"spiffe://example.org/w\",\"aud\":[\"a\",1],\"exp\":" EXP "}", "aud[1]"},
        {"{\"sub\":\"spiffe://example.org/w\",\"aud\":{\"a\":1},\"exp\":" EXP "}",
         "aud claim is not"},
        {"{\"sub\":\"spiffe://example.org/w\",\"aud\":\"a\",\"x\":" EXP "}", "no exp claim"},
        {"{\"sub\":\"spiffe://example.org/w\",\"aud\":\"a\",\"exp\":\"" EXP "\"}",
         "not a NumericDate"},
        {"{\"sub\":\"spiffe://example.org/w\",\"aud\":\"a\",\"exp\":" EXP ",\"exp\":1}",
         "payload is not valid JSON"},
        {"{\"sub\":\"spiffe://example.org/w\",\"aud\":\"a\",\"exp\":" EXP ",\"nbf\":1e300}",
         "not a NumericDate"},
        {"{\"sub\":\"spiffe://example.org/w\",\"aud\":\"a\",\"exp\":" EXP ",\"nbf\":1800000000}",
         "not valid yet"},
        {"{\"sub\":\"spiffe://example.org/w\",\"aud\":\"a\",\"exp\":" EXP ",\"iat\":null}",
         "not a NumericDate"},
        {"[" EXP "]", "payload is not a JSON object"},
    };

    fixture_init(&f, SG_JWT_ES256);
    snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\",\"kid\":\"%s\"}", f.kid);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(payload, sizeof payload, "%s", cases[i].claims);
        char *t = sign_raw(&f, hdr, payload);
        expect_invalid(&f, t, "a", NOW, cases[i].want);
        free(t);
    }
    /* A fractional exp and extra private claims are fine. */
    snprintf(payload, sizeof payload,
             "{\"sub\":\"spiffe://example.org/w\",\"aud\":\"a\",\"exp\":%d.5,\"x\":{\"y\":[1]}}",
             NOW + 60);
    char *t = sign_raw(&f, hdr, payload);
    sg_jwt_validated v;
    ASSERT_OK(sg_jwt_validate(t, "a", NOW, lookup, &f, &v, &err));
    ASSERT_EQ(v.exp, NOW + 60);
    ASSERT(strstr(v.claims_json, "\"x\":{\"y\":[1]}") != NULL);
    sg_jwt_validated_cleanup(&v);
    free(t);
    fixture_cleanup(&f);
}

TEST(jwt_validate_garbage_and_length)
{
    fixture f;
    sg_jwt_validated v;
    sg_err err;
    static const struct {
        const char *tok, *want;
    } cases[] = {
        {"", "empty"},
        {"garbage", "not a compact JWS (1 parts"},
        {"a.b", "not a compact JWS (2 parts"},
        {"a.b.c.d", "4 parts"},
        {"a.b.c.d.e", "JWE tokens are not supported"},
        {"{\"payload\":\"x\",\"signatures\":[]}", "JSON serialization"},
        {"..", "header is empty"},
        {"!!!.e30.AAAA", "header is not base64url"},
        {"e30=.e30.AAAA", "header is not base64url"},
        {"bm90IGpzb24.e30.AAAA", "header is not valid JSON"},
        {"W10.e30.AAAA", "header is not a JSON object"},
        {"eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ..AAAA", "payload is empty"},
        {"eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.e30.AAAA", "sub claim is missing"},
    };

    fixture_init(&f, SG_JWT_ES256);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_invalid(&f, cases[i].tok, "a", NOW, cases[i].want);
    ASSERT_EQ(sg_jwt_validate(NULL, "a", NOW, lookup, &f, &v, &err), SG_EINVAL);

    /* Over the limit: refused before parsing, and the message does not echo the token. */
    char *big = malloc(SG_JWT_MAX_LEN + 2);
    memset(big, 'A', SG_JWT_MAX_LEN + 1);
    big[SG_JWT_MAX_LEN + 1] = '\0';
    big[10] = '.';
    big[20] = '.';
    expect_invalid(&f, big, "a", NOW, "longer than 16384 bytes");
    ASSERT_EQ(validate(&f, big, "a", NOW, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "AAAAAAAA") == NULL);
    free(big);

    /* Messages quote header values safely (no raw control bytes). */
    char *t = assemble("{\"alg\":\"\\u0001bad\\n\",\"kid\":\"k\"}", "{}", "AAAA");
    sg_err_clear(&err);
    ASSERT_EQ(validate(&f, t, "a", NOW, &err), SG_EINVAL);
    for (const char *p = err.msg; *p; p++)
        ASSERT(*p >= 0x20 && *p < 0x7f);
    free(t);
    fixture_cleanup(&f);
}

TEST(jwt_validate_unusable_bundle_key)
{
    fixture f;

    fixture_init(&f, SG_JWT_ES256);
    char *tok = sign_default(&f, "spiffe://example.org/web");
    f.bundle.jwt[0].spki.len -= 3;
    expect_invalid(&f, tok, "reports", NOW, "does not parse");
    f.bundle.jwt[0].spki.len += 3;
    free(tok);
    fixture_cleanup(&f);
}

/* Replaces the bundle key's SPKI with der[0..len). */
static void set_spki(fixture *f, const uint8_t *der, size_t len)
{
    free(f->bundle.jwt[0].spki.data);
    f->bundle.jwt[0].spki.data = malloc(len);
    memcpy(f->bundle.jwt[0].spki.data, der, len);
    f->bundle.jwt[0].spki.len = len;
}

TEST(jwt_validate_bundle_key_encodings)
{
    static const char *const curves[] = {"P-256", "P-384", "P-521"};
    const sg_jwt_alg algs[] = {SG_JWT_ES256, SG_JWT_ES384, SG_JWT_ES512};
    const size_t point_len[] = {65, 97, 133}; /* uncompressed, with the 0x04 byte */
    const size_t header_len[] = {26, 23, 25}; /* the SPKI's DER before the point */
    sg_err err;

    for (size_t i = 0; i < 3; i++) {
        fixture f;
        uint8_t *der = NULL, *bad;
        size_t len;
        int n;

        fixture_init(&f, algs[i]);
        char *tok = sign_default(&f, "spiffe://example.org/web");
        ASSERT_OK(validate(&f, tok, "reports", NOW, &err));
        ASSERT_EQ(f.bundle.jwt[0].spki.len, header_len[i] + point_len[i]);

        /* A point off the curve in an otherwise well-formed SPKI. */
        len = f.bundle.jwt[0].spki.len;
        bad = malloc(len);
        memcpy(bad, f.bundle.jwt[0].spki.data, len);
        bad[len - 1] ^= 0x01;
        set_spki(&f, bad, len);
        expect_invalid(&f, tok, "reports", NOW, "does not parse");
        /* The wrong point format byte for an uncompressed point's length. */
        bad[len - 1] ^= 0x01;
        bad[len - point_len[i]] = 0x05;
        set_spki(&f, bad, len);
        expect_invalid(&f, tok, "reports", NOW, "does not parse");
        free(bad);

        /* The same key with its point compressed still validates. */
        ASSERT(EVP_PKEY_set_utf8_string_param(f.key, "point-format", "compressed") == 1);
        n = i2d_PUBKEY(f.key, &der);
        ASSERT(n > 0 && (size_t)n < len);
        set_spki(&f, der, (size_t)n);
        OPENSSL_free(der);
        if (validate(&f, tok, "reports", NOW, &err) != 0)
            SG__FAIL("%s compressed: %s", curves[i], err.msg);
        free(tok);
        fixture_cleanup(&f);
    }
}

TEST(jwt_validate_bundle_key_of_another_curve)
{
    fixture f, g;

    fixture_init(&f, SG_JWT_ES256);
    fixture_init(&g, SG_JWT_ES384);
    char *tok = sign_default(&f, "spiffe://example.org/web");
    set_spki(&f, g.bundle.jwt[0].spki.data, g.bundle.jwt[0].spki.len);
    expect_invalid(&f, tok, "reports", NOW, "needs an EC prime256v1 key");
    free(tok);
    fixture_cleanup(&f);
    fixture_cleanup(&g);
}
