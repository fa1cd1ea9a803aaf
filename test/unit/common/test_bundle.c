/*
 * Unit tests for common/bundle.c: base64 variants, the SPIFFE bundle
 * JWKS encoding and its strict decoder, PEM, copy and comparison.
 */
#include "common/bundle.h"

#include "test/runner.h"

#include <jansson.h>
#include <openssl/x509v3.h>

static EVP_PKEY *keygen(const char *type, const char *curve, size_t bits)
{
    EVP_PKEY *k = curve ? EVP_PKEY_Q_keygen(NULL, NULL, type, curve)
                        : EVP_PKEY_Q_keygen(NULL, NULL, type, bits);
    ASSERT(k != NULL);
    return k;
}

/* A self-signed certificate; ca selects basicConstraints CA:TRUE + keyCertSign. */
static sg_der cert_der(EVP_PKEY *key, bool ca)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    X509V3_CTX v3;
    sg_der d = {0};
    unsigned char *p = NULL;
    int n;

    ASSERT(x != NULL && name != NULL);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"example.org", -1,
                               -1, 0);
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, name);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *bc = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints,
                                             ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    X509_EXTENSION *ku =
        X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage,
                            ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
    ASSERT(bc != NULL && ku != NULL);
    X509_add_ext(x, bc, -1);
    X509_add_ext(x, ku, -1);
    X509_EXTENSION_free(bc);
    X509_EXTENSION_free(ku);
    ASSERT(X509_sign(x, key, EVP_sha256()) > 0);
    n = i2d_X509(x, &p);
    ASSERT(n > 0);
    d.data = malloc((size_t)n);
    memcpy(d.data, p, (size_t)n);
    d.len = (size_t)n;
    OPENSSL_free(p);
    X509_NAME_free(name);
    X509_free(x);
    return d;
}

static sg_der spki_der(EVP_PKEY *k)
{
    sg_der d = {0};
    unsigned char *p = NULL;
    int n = i2d_PUBKEY(k, &p);

    ASSERT(n > 0);
    d.data = malloc((size_t)n);
    memcpy(d.data, p, (size_t)n);
    d.len = (size_t)n;
    OPENSSL_free(p);
    return d;
}

/* A bundle for example.org with one CA of each key kind and three JWT keys. */
static void sample_bundle(sg_bundle *b)
{
    EVP_PKEY *ca_ec = keygen("EC", "P-256", 0), *ca_rsa = keygen("RSA", NULL, 2048);
    EVP_PKEY *j1 = keygen("EC", "P-256", 0), *j2 = keygen("EC", "P-521", 0),
             *j3 = keygen("RSA", NULL, 2048);

    memset(b, 0, sizeof *b);
    b->trust_domain = strdup("example.org");
    b->nx509 = 2;
    b->x509 = calloc(2, sizeof *b->x509);
    b->x509[0] = cert_der(ca_ec, true);
    b->x509[1] = cert_der(ca_rsa, true);
    b->njwt = 3;
    b->jwt = calloc(3, sizeof *b->jwt);
    b->jwt[0].kid = strdup("kid-one");
    b->jwt[0].spki = spki_der(j1);
    b->jwt[0].expires_at = 1234;
    b->jwt[1].kid = strdup("kid-two");
    b->jwt[1].spki = spki_der(j2);
    b->jwt[2].kid = strdup("kid-three");
    b->jwt[2].spki = spki_der(j3);
    b->sequence = 42;
    b->refresh_hint = 300;
    EVP_PKEY_free(ca_ec);
    EVP_PKEY_free(ca_rsa);
    EVP_PKEY_free(j1);
    EVP_PKEY_free(j2);
    EVP_PKEY_free(j3);
}

static int decode(const char *json, sg_bundle *out, sg_err *err)
{
    return sg_bundle_from_jwks("example.org", json, strlen(json), out, err);
}

TEST(bundle_b64_variants_and_strictness)
{
    const uint8_t in[] = {0xfb, 0xff, 0x00, 0x01};
    uint8_t *d = NULL;
    size_t n = 0;
    char *s = NULL;
    sg_err err;

    ASSERT_OK(sg_bundle_b64_encode(in, 4, true, &s, &err));
    ASSERT_STREQ(s, "-_8AAQ");
    free(s);
    ASSERT_OK(sg_bundle_b64_encode(in, 4, false, &s, &err));
    ASSERT_STREQ(s, "+/8AAQ==");
    free(s);
    ASSERT_OK(sg_bundle_b64_encode(in, 0, true, &s, &err));
    ASSERT_STREQ(s, "");
    free(s);

    ASSERT_OK(sg_bundle_b64_decode("-_8AAQ", 6, true, &d, &n, &err));
    ASSERT_EQ(n, 4);
    ASSERT(memcmp(d, in, 4) == 0);
    free(d);
    ASSERT_OK(sg_bundle_b64_decode("+/8AAQ==", 8, false, &d, &n, &err));
    ASSERT_EQ(n, 4);
    free(d);
    ASSERT_OK(sg_bundle_b64_decode("", 0, true, &d, &n, &err));
    ASSERT_EQ(n, 0);
    free(d);

    /* Wrong alphabet, padding where none belongs, missing padding, bad length, bits. */
    ASSERT_EQ(sg_bundle_b64_decode("+/8AAQ", 6, true, &d, &n, &err), SG_EINVAL);
    ASSERT_EQ(sg_bundle_b64_decode("-_8AAQ==", 8, true, &d, &n, &err), SG_EINVAL);
    ASSERT_EQ(sg_bundle_b64_decode("+/8AAQ", 6, false, &d, &n, &err), SG_EINVAL);
    ASSERT_EQ(sg_bundle_b64_decode("abcde", 5, true, &d, &n, &err), SG_EINVAL);
    ASSERT_EQ(sg_bundle_b64_decode("-_8AAR", 6, true, &d, &n, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "trailing bits") != NULL);
    ASSERT_EQ(sg_bundle_b64_decode("ab cd", 5, true, &d, &n, &err), SG_EINVAL);
    ASSERT_EQ(sg_bundle_b64_decode("====", 4, false, &d, &n, &err), SG_EINVAL);
    ASSERT_EQ(sg_bundle_b64_decode("a=bc", 4, false, &d, &n, &err), SG_EINVAL);
}

TEST(bundle_jwks_round_trip)
{
    sg_bundle b, c;
    char *json = NULL, *again = NULL;
    sg_err err;

    sample_bundle(&b);
    ASSERT_OK(sg_bundle_to_jwks(&b, &json, &err));
    ASSERT(strstr(json, "\"spiffe_sequence\":42") != NULL);
    ASSERT(strstr(json, "\"spiffe_refresh_hint\":300") != NULL);
    ASSERT(strstr(json, "\"use\":\"x509-svid\"") != NULL);
    ASSERT(strstr(json, "\"kid\":\"kid-two\"") != NULL);
    ASSERT(strstr(json, "\"crv\":\"P-521\"") != NULL);
    ASSERT_OK(decode(json, &c, &err));
    ASSERT_STREQ(c.trust_domain, "example.org");
    ASSERT_EQ(c.nx509, 2);
    ASSERT_EQ(c.njwt, 3);
    ASSERT_EQ(c.sequence, 42);
    ASSERT_EQ(c.refresh_hint, 300);
    ASSERT(sg_bundle_same_keys(&b, &c));
    ASSERT(sg_bundle_find_jwt_key(&c, "kid-three") != NULL);
    ASSERT(sg_bundle_find_jwt_key(&c, "kid-four") == NULL);
    ASSERT(sg_bundle_find_jwt_key(&c, NULL) == NULL);
    ASSERT_OK(sg_bundle_to_jwks(&c, &again, &err));
    ASSERT_STREQ(json, again);
    free(json);
    free(again);
    sg_bundle_cleanup(&c);

    /* "spiffe://" prefix accepted for the trust domain name. */
    ASSERT_OK(sg_bundle_to_jwks(&b, &json, &err));
    ASSERT_OK(sg_bundle_from_jwks("spiffe://example.org", json, strlen(json), &c, &err));
    ASSERT_STREQ(c.trust_domain, "example.org");
    sg_bundle_cleanup(&c);
    free(json);
    ASSERT_EQ(sg_bundle_from_jwks("Bad Domain", "{\"keys\":[]}", 11, &c, &err), SG_EINVAL);
    sg_bundle_cleanup(&b);
}

TEST(bundle_jwt_jwks_has_only_jwt_keys)
{
    sg_bundle b, c;
    char *json = NULL;
    sg_err err;

    sample_bundle(&b);
    ASSERT_OK(sg_bundle_jwt_jwks(&b, &json, &err));
    ASSERT(strstr(json, "x5c") == NULL);
    ASSERT(strstr(json, "x509-svid") == NULL);
    ASSERT(strstr(json, "spiffe_sequence") == NULL);
    ASSERT_OK(decode(json, &c, &err));
    ASSERT_EQ(c.nx509, 0);
    ASSERT_EQ(c.njwt, 3);
    free(json);
    sg_bundle_cleanup(&c);
    sg_bundle_cleanup(&b);
}

TEST(bundle_empty_and_absent_fields)
{
    sg_bundle b, c;
    char *json = NULL;
    sg_err err;

    memset(&b, 0, sizeof b);
    b.trust_domain = strdup("example.org");
    ASSERT_OK(sg_bundle_to_jwks(&b, &json, &err));
    ASSERT_STREQ(json, "{\"keys\":[]}");
    ASSERT_OK(decode(json, &c, &err));
    ASSERT_EQ(c.nx509 + c.njwt, 0);
    ASSERT_EQ(c.sequence, 0);
    ASSERT(sg_bundle_same_keys(&b, &c));
    free(json);
    sg_bundle_cleanup(&c);
    sg_bundle_cleanup(&b);
    sg_bundle_cleanup(&b);
    sg_bundle_cleanup(NULL);
}

TEST(bundle_copy_and_same_keys)
{
    sg_bundle b, c;
    sg_err err;

    sample_bundle(&b);
    ASSERT_OK(sg_bundle_copy(&c, &b, &err));
    ASSERT(sg_bundle_same_keys(&b, &c));
    ASSERT_EQ(c.jwt[0].expires_at, 1234);
    ASSERT_EQ(c.sequence, 42);
    /* Order does not matter; sequence and hint are ignored. */
    sg_der t = c.x509[0];
    c.x509[0] = c.x509[1];
    c.x509[1] = t;
    sg_jwt_key k = c.jwt[0];
    c.jwt[0] = c.jwt[2];
    c.jwt[2] = k;
    c.sequence = 43;
    ASSERT(sg_bundle_same_keys(&b, &c));
    /* A different kid for the same key is a different authority. */
    c.jwt[0].kid[0] = 'X';
    ASSERT(!sg_bundle_same_keys(&b, &c));
    c.jwt[0].kid[0] = 'k';
    ASSERT(sg_bundle_same_keys(&b, &c));
    c.nx509 = 1;
    ASSERT(!sg_bundle_same_keys(&b, &c));
    c.nx509 = 2;
    /* Same count but one certificate twice. */
    sg_der saved = c.x509[1];
    c.x509[1] = c.x509[0];
    ASSERT(!sg_bundle_same_keys(&b, &c));
    c.x509[1] = saved;
    sg_bundle_cleanup(&c);
    sg_bundle_cleanup(&b);
}

TEST(bundle_pem_round_trip_and_non_ca)
{
    sg_bundle b, c;
    char *pem = NULL;
    sg_err err;
    EVP_PKEY *k = keygen("EC", "P-384", 0);
    sg_der leaf = cert_der(k, false);

    sample_bundle(&b);
    ASSERT_OK(sg_bundle_x509_pem(&b, &pem, &err));
    ASSERT(strstr(pem, "BEGIN CERTIFICATE") != NULL);
    ASSERT_OK(sg_bundle_from_pem("example.org", pem, strlen(pem), &c, &err));
    ASSERT_EQ(c.nx509, 2);
    ASSERT_EQ(c.njwt, 0);
    ASSERT(memcmp(c.x509[1].data, b.x509[1].data, b.x509[1].len) == 0);
    sg_bundle_cleanup(&c);
    free(pem);

    ASSERT_OK(sg_x509_der_list_to_pem(&leaf, 1, &pem, &err));
    ASSERT_EQ(sg_bundle_from_pem("example.org", pem, strlen(pem), &c, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "not a CA") != NULL);
    free(pem);
    ASSERT_ERR(sg_bundle_from_pem("example.org", "junk", 4, &c, &err));
    sg_der_cleanup(&leaf);
    EVP_PKEY_free(k);
    sg_bundle_cleanup(&b);
}

/* Decodes json and expects SG_EINVAL with want in the message. */
static void expect_bad(const char *json, const char *want)
{
    sg_bundle c;
    sg_err err;

    memset(&c, 0, sizeof c);
    sg_err_clear(&err);
    int rc = decode(json, &c, &err);
    if (rc != SG_EINVAL || strstr(err.msg, want) == NULL)
        SG__FAIL("decoding %.120s: rc %d, message \"%s\", wanted \"%s\"", json, rc, err.msg, want);
}

TEST(bundle_hostile_documents)
{
    expect_bad("", "empty");
    expect_bad("not json", "invalid JSON");
    expect_bad("[]", "not a JSON object");
    expect_bad("{}", "\"keys\" is missing");
    expect_bad("{\"keys\":{}}", "not an array");
    expect_bad("{\"keys\":[], \"keys\":[]}", "invalid JSON");
    expect_bad("{\"keys\":[],\"spiffe_sequence\":-1}", "spiffe_sequence");
    expect_bad("{\"keys\":[],\"spiffe_sequence\":\"1\"}", "spiffe_sequence");
    expect_bad("{\"keys\":[],\"spiffe_refresh_hint\":1.5}", "spiffe_refresh_hint");
    expect_bad("{\"keys\":[],\"spiffe_sequence\":99999999999999999999999}", "invalid JSON");
    expect_bad("{\"keys\":[1]}", "keys[0]: not a JSON object");
    /* jwt-svid keys */
    expect_bad("{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"EC\",\"crv\":\"P-256\"}]}", "kid");
    expect_bad("{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"EC\",\"kid\":\"\"}]}", "kid");
    expect_bad("{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-192\","
               "\"x\":\"AA\",\"y\":\"AA\"}]}",
               "unsupported curve");
    expect_bad("{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\","
               "\"x\":\"AA\",\"y\":\"AA\"}]}",
               "must be 32 bytes");
    expect_bad("{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\","
               "\"x\":\"!!\",\"y\":\"AA\"}]}",
               "\"x\"");
    expect_bad("{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\","
               "\"x\":7,\"y\":\"AA\"}]}",
               "\"x\" is not a string");
    /* A point that is not on the curve. */
    expect_bad("{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\","
               "\"x\":\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
               "\"y\":\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}",
               "keys[0]");
    expect_bad("{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"RSA\",\"kid\":\"a\",\"n\":\"AQAB\","
               "\"e\":\"AQAB\"}]}",
               "RSA modulus");
    /* An 8192-bit even modulus (0x80 then zeros) and one of 8392 bits. */
    char rsa[1600], n64[1400];
    memset(n64, 'A', 1368);
    n64[0] = 'g';
    n64[1366] = '\0';
    snprintf(rsa, sizeof rsa,
             "{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"RSA\",\"kid\":\"a\",\"n\":\"%s\","
             "\"e\":\"AQAB\"}]}",
             n64);
    expect_bad(rsa, "even");
    memset(n64, 'A', 1399);
    n64[0] = 'g';
    n64[1399] = '\0';
    snprintf(rsa, sizeof rsa,
             "{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"RSA\",\"kid\":\"a\",\"n\":\"%s\","
             "\"e\":\"AQAB\"}]}",
             n64);
    expect_bad(rsa, "RSA modulus of");
    expect_bad("{\"keys\":[{\"use\":\"jwt-svid\",\"kty\":\"EC\",\"kid\":\"a\",\"d\":\"AA\"}]}",
               "private key");
    /* x509-svid keys */
    expect_bad("{\"keys\":[{\"use\":\"x509-svid\",\"kty\":\"EC\"}]}", "x5c");
    expect_bad("{\"keys\":[{\"use\":\"x509-svid\",\"kty\":\"EC\",\"x5c\":[]}]}", "x5c");
    expect_bad("{\"keys\":[{\"use\":\"x509-svid\",\"kty\":\"EC\",\"x5c\":[\"AA==\",\"AA==\"]}]}",
               "exactly one");
    expect_bad("{\"keys\":[{\"use\":\"x509-svid\",\"kty\":\"EC\",\"x5c\":[5]}]}", "not a string");
    expect_bad("{\"keys\":[{\"use\":\"x509-svid\",\"kty\":\"EC\",\"x5c\":[\"AA\"]}]}",
               "keys[0]: \"x5c\"[0]");
    expect_bad("{\"keys\":[{\"use\":\"x509-svid\",\"kty\":\"EC\",\"x5c\":[\"MIIB\"]}]}",
               "keys[0]: \"x5c\"[0]");

    /* Unknown use or kty, or none, is skipped (bundle spec 4.2.1, 4.2.2). */
    sg_bundle c;
    sg_err err;
    ASSERT_OK(decode("{\"keys\":[{\"use\":\"other\",\"kty\":\"EC\"},{\"kty\":\"EC\"},"
                     "{\"use\":\"jwt-svid\",\"kty\":\"OKP\",\"kid\":\"z\"},"
                     "{\"use\":\"jwt-svid\"},{\"use\":7,\"kty\":\"RSA\"}],\"extra\":true}",
                     &c, &err));
    ASSERT_EQ(c.nx509 + c.njwt, 0);
    sg_bundle_cleanup(&c);
}

/* Replaces the first occurrence of from in s (malloc'd result). */
static char *replace(const char *s, const char *from, const char *to)
{
    const char *p = strstr(s, from);
    size_t n;
    char *r;

    ASSERT(p != NULL);
    n = strlen(s) - strlen(from) + strlen(to) + 1;
    r = malloc(n);
    snprintf(r, n, "%.*s%s%s", (int)(p - s), s, to, p + strlen(from));
    return r;
}

TEST(bundle_rejects_duplicate_kid_and_mismatched_cert)
{
    sg_bundle b;
    char *json = NULL, *bad;
    sg_err err;

    sample_bundle(&b);
    free(b.jwt[1].kid);
    b.jwt[1].kid = strdup("kid-one");
    ASSERT_OK(sg_bundle_to_jwks(&b, &json, &err));
    expect_bad(json, "duplicate kid");
    free(json);
    sg_bundle_cleanup(&b);

    /* An x509-svid JWK whose parameters are another key than its certificate's. */
    sample_bundle(&b);
    b.njwt = 0;
    sg_der second = b.x509[1];
    b.nx509 = 1;
    ASSERT_OK(sg_bundle_to_jwks(&b, &json, &err));
    json_t *doc = json_loads(json, 0, NULL);
    json_t *k0 = json_array_get(json_object_get(doc, "keys"), 0);
    json_t *x = json_object_get(k0, "x");
    char *xs = strdup(json_string_value(x));
    xs[5] = xs[5] == 'A' ? 'B' : 'A';
    bad = replace(json, json_string_value(x), xs);
    expect_bad(bad, "keys[0]");
    free(bad);
    free(xs);
    json_decref(doc);
    free(json);

    /* A certificate that is not a CA. */
    EVP_PKEY *k = keygen("EC", "P-256", 0);
    sg_der_cleanup(&b.x509[0]);
    b.x509[0] = cert_der(k, false);
    b.nx509 = 1;
    /* The encoder does not judge; the decoder refuses. */
    ASSERT_OK(sg_bundle_to_jwks(&b, &json, &err));
    expect_bad(json, "not a CA certificate");
    free(json);
    EVP_PKEY_free(k);
    b.x509[1] = second;
    b.nx509 = 2;
    b.njwt = 3;
    sg_bundle_cleanup(&b);
}

TEST(bundle_rejects_huge_inputs)
{
    size_t n = 5 * 1024 * 1024;
    char *big = malloc(n + 1);
    sg_bundle c;
    sg_err err;

    memset(big, ' ', n);
    big[n] = '\0';
    ASSERT_EQ(sg_bundle_from_jwks("example.org", big, n, &c, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "exceeds") != NULL);
    free(big);

    /* More keys than the limit. */
    size_t count = 2000, cap = count * 3 + 32, o = 0;
    big = malloc(cap);
    o += (size_t)snprintf(big + o, cap - o, "{\"keys\":[");
    for (size_t i = 0; i < count; i++)
        o += (size_t)snprintf(big + o, cap - o, "%s{}", i ? "," : "");
    snprintf(big + o, cap - o, "]}");
    ASSERT_EQ(sg_bundle_from_jwks("example.org", big, strlen(big), &c, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "limit") != NULL);
    free(big);

    /* Deep nesting must fail cleanly, not exhaust the stack. */
    n = 100000;
    big = malloc(n * 2 + 16);
    o = (size_t)snprintf(big, 16, "{\"keys\":");
    for (size_t i = 0; i < n; i++)
        big[o++] = '[';
    for (size_t i = 0; i < n; i++)
        big[o++] = ']';
    big[o++] = '}';
    big[o] = '\0';
    ASSERT_EQ(sg_bundle_from_jwks("example.org", big, o, &c, &err), SG_EINVAL);
    free(big);
}
