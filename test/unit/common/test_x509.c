/*
 * Unit tests for common/x509.c: DER/PEM conversion, SPIFFE ID extraction,
 * the CSR policy, the SubjectPublicKeyInfo check and SVID verification.
 */
#include "common/x509.h"

#include "common/key.h"
#include "test/runner.h"

#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <time.h>

static EVP_PKEY *gen(const char *alg, const char *curve, size_t bits)
{
    EVP_PKEY *k;
    if (curve != NULL)
        k = EVP_PKEY_Q_keygen(NULL, NULL, alg, curve);
    else if (bits != 0)
        k = EVP_PKEY_Q_keygen(NULL, NULL, alg, bits);
    else
        k = EVP_PKEY_Q_keygen(NULL, NULL, alg);
    ASSERT(k != NULL);
    return k;
}

static EVP_PKEY *gen_dsa(void)
{
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "DSA", NULL);
    EVP_PKEY *params = NULL, *k = NULL;
    EVP_PKEY_CTX *kc;

    ASSERT(pc != NULL);
    ASSERT(EVP_PKEY_paramgen_init(pc) == 1);
    ASSERT(EVP_PKEY_CTX_set_dsa_paramgen_bits(pc, 2048) == 1);
    ASSERT(EVP_PKEY_paramgen(pc, &params) == 1);
    kc = EVP_PKEY_CTX_new_from_pkey(NULL, params, NULL);
    ASSERT(EVP_PKEY_keygen_init(kc) == 1);
    ASSERT(EVP_PKEY_keygen(kc, &k) == 1);
    EVP_PKEY_CTX_free(kc);
    EVP_PKEY_CTX_free(pc);
    EVP_PKEY_free(params);
    return k;
}

static sg_der spki_of(EVP_PKEY *k)
{
    sg_der d = {0};
    unsigned char *p;
    int n = i2d_PUBKEY(k, NULL);
    ASSERT(n > 0);
    d.data = malloc((size_t)n);
    p = d.data;
    i2d_PUBKEY(k, &p);
    d.len = (size_t)n;
    return d;
}

/* A self-signed certificate with the given extensions (conf strings; NULL to skip). */
static X509 *make_cert(EVP_PKEY *key, EVP_PKEY *issuer_key, X509 *issuer, const char *cn,
                       const char *bc, const char *ku, const char *san, long days)
{
    X509 *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    X509V3_CTX ctx;
    const char *confs[3] = {bc, ku, san};
    const int nids[3] = {NID_basic_constraints, NID_key_usage, NID_subject_alt_name};

    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, n);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), days * 86400);
    X509_set_pubkey(x, key);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    for (int i = 0; i < 3; i++) {
        if (confs[i] != NULL) {
            X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nids[i], confs[i]);
            ASSERT(e != NULL);
            X509_add_ext(x, e, -1);
            X509_EXTENSION_free(e);
        }
    }
    ASSERT(X509_sign(x, issuer_key, EVP_sha256()) > 0);
    X509_NAME_free(n);
    return x;
}

TEST(x509_der_round_trip_and_garbage)
{
    EVP_PKEY *k = gen("EC", "P-256", 0);
    X509 *x = make_cert(k, k, NULL, "a", "critical,CA:TRUE", NULL, NULL, 1), *y = NULL;
    sg_der d = {0};
    uint8_t junk[100];
    sg_err err;

    ASSERT_OK(sg_x509_to_der(x, &d, &err));
    ASSERT_OK(sg_x509_from_der(d.data, d.len, &y, &err));
    ASSERT_EQ(X509_cmp(x, y), 0);
    X509_free(y);
    y = NULL;
    ASSERT_EQ(sg_x509_from_der(d.data, d.len - 1, &y, &err), SG_EINVAL);
    memset(junk, 0x30, sizeof junk);
    ASSERT_EQ(sg_x509_from_der(junk, sizeof junk, &y, &err), SG_EINVAL);
    ASSERT_EQ(sg_x509_from_der(d.data, SG_X509_MAX_DER + 1, &y, &err), SG_ETOOBIG);
    ASSERT(y == NULL);
    sg_der_cleanup(&d);
    sg_der_cleanup(&d);
    sg_der_cleanup(NULL);
    X509_free(x);
    EVP_PKEY_free(k);
}

TEST(x509_pem_and_der_chains)
{
    EVP_PKEY *k = gen("EC", "P-256", 0);
    X509 *a = make_cert(k, k, NULL, "a", "critical,CA:TRUE", NULL, NULL, 1);
    X509 *b = make_cert(k, k, NULL, "b", "critical,CA:TRUE", NULL, NULL, 1);
    sg_der d[2] = {{0}, {0}};
    STACK_OF(X509) *sk = NULL;
    uint8_t *cat;
    char *pem = NULL;
    sg_err err;

    ASSERT_OK(sg_x509_to_der(a, &d[0], &err));
    ASSERT_OK(sg_x509_to_der(b, &d[1], &err));
    ASSERT_OK(sg_x509_der_list_to_pem(d, 2, &pem, &err));
    ASSERT_OK(sg_x509_parse_pem_chain(pem, strlen(pem), &sk, &err));
    ASSERT_EQ(sk_X509_num(sk), 2);
    ASSERT_EQ(X509_cmp(sk_X509_value(sk, 1), b), 0);
    sk_X509_pop_free(sk, X509_free);
    free(pem);

    cat = malloc(d[0].len + d[1].len);
    memcpy(cat, d[0].data, d[0].len);
    memcpy(cat + d[0].len, d[1].data, d[1].len);
    ASSERT_OK(sg_x509_parse_der_chain(cat, d[0].len + d[1].len, &sk, &err));
    ASSERT_EQ(sk_X509_num(sk), 2);
    sk_X509_pop_free(sk, X509_free);
    sk = NULL;
    ASSERT_EQ(sg_x509_parse_der_chain(cat, d[0].len + d[1].len - 3, &sk, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "#2") != NULL);
    ASSERT(sk == NULL);
    free(cat);

    ASSERT_OK(sg_x509_to_pem(a, &pem, &err));
    ASSERT(strncmp(pem, "-----BEGIN CERTIFICATE-----", 27) == 0);
    free(pem);
    ASSERT_EQ(sg_x509_parse_pem_chain("hello", 5, &sk, &err), SG_EINVAL);
    ASSERT_EQ(sg_x509_parse_pem_chain(
                  "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", 60, &sk, &err),
              SG_EINVAL);
    ASSERT(sk == NULL);
    sg_der_cleanup(&d[0]);
    sg_der_cleanup(&d[1]);
    X509_free(a);
    X509_free(b);
    EVP_PKEY_free(k);
}

TEST(x509_spiffeid_rules)
{
    EVP_PKEY *k = gen("EC", "P-256", 0);
    X509 *x;
    sg_spiffeid id;
    sg_err err;

    x = make_cert(k, k, NULL, "a", NULL, NULL, "URI:spiffe://example.org/w", 1);
    ASSERT_OK(sg_x509_spiffeid(x, &id, &err));
    ASSERT_STREQ(id.str, "spiffe://example.org/w");
    ASSERT_STREQ(id.path, "/w");
    X509_free(x);
    x = make_cert(k, k, NULL, "a", NULL, NULL, NULL, 1);
    ASSERT_EQ(sg_x509_spiffeid(x, &id, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "no subjectAltName") != NULL);
    X509_free(x);
    x = make_cert(k, k, NULL, "a", NULL, NULL,
                  "URI:spiffe://example.org/a,URI:spiffe://example.org/b", 1);
    ASSERT_EQ(sg_x509_spiffeid(x, &id, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "2 URI SANs") != NULL);
    X509_free(x);
    x = make_cert(k, k, NULL, "a", NULL, NULL, "DNS:foo.example", 1);
    ASSERT_EQ(sg_x509_spiffeid(x, &id, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "0 URI SANs") != NULL);
    X509_free(x);
    x = make_cert(k, k, NULL, "a", NULL, NULL, "URI:https://example.org/x", 1);
    ASSERT_ERR(sg_x509_spiffeid(x, &id, &err));
    X509_free(x);
    EVP_PKEY_free(k);
}

TEST(x509_serial_and_not_after)
{
    EVP_PKEY *k = gen("EC", "P-256", 0);
    X509 *x = make_cert(k, k, NULL, "a", NULL, NULL, NULL, 1);
    char hex[41];
    int64_t na;

    sg_x509_serial_hex(x, hex, sizeof hex);
    ASSERT_STREQ(hex, "2a");
    na = sg_x509_not_after(x);
    ASSERT(na > (int64_t)time(NULL) + 86400 - 60 && na <= (int64_t)time(NULL) + 86400);
    X509_free(x);
    EVP_PKEY_free(k);
}

TEST(x509_csr_good_returns_spki)
{
    EVP_PKEY *k = gen("EC", "P-256", 0);
    sg_der csr = {0}, spki = {0}, want = spki_of(k);
    sg_err err;

    ASSERT_OK(sg_x509_csr_create(k, "spiffe://example.org/agent", &csr, &err));
    ASSERT_OK(sg_x509_csr_public_key(csr.data, csr.len, &spki, &err));
    ASSERT_EQ(spki.len, want.len);
    ASSERT(memcmp(spki.data, want.data, want.len) == 0);
    sg_der_cleanup(&spki);
    sg_der_cleanup(&csr);
    /* Without a URI, and with RSA-2048 and P-384. */
    EVP_PKEY_free(k);
    k = gen("RSA", NULL, 2048);
    ASSERT_OK(sg_x509_csr_create(k, NULL, &csr, &err));
    ASSERT_OK(sg_x509_csr_public_key(csr.data, csr.len, &spki, &err));
    sg_der_cleanup(&spki);
    sg_der_cleanup(&csr);
    EVP_PKEY_free(k);
    k = gen("EC", "P-384", 0);
    ASSERT_OK(sg_x509_csr_create(k, NULL, &csr, &err));
    ASSERT_OK(sg_x509_csr_public_key(csr.data, csr.len, &spki, &err));
    sg_der_cleanup(&spki);
    sg_der_cleanup(&csr);
    sg_der_cleanup(&want);
    EVP_PKEY_free(k);
}

TEST(x509_csr_bad_inputs_refused)
{
    EVP_PKEY *k = gen("EC", "P-256", 0);
    sg_der csr = {0}, spki = {0};
    uint8_t *big, garbage[300];
    sg_err err;

    ASSERT_OK(sg_x509_csr_create(k, NULL, &csr, &err));
    /* Bad signature: flip the last byte of the ECDSA signature. */
    csr.data[csr.len - 1] ^= 0x01;
    ASSERT_EQ(sg_x509_csr_public_key(csr.data, csr.len, &spki, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "signature") != NULL);
    csr.data[csr.len - 1] ^= 0x01;
    /* Truncated. */
    for (size_t cut = 1; cut < csr.len; cut += 7) {
        ASSERT_EQ(sg_x509_csr_public_key(csr.data, csr.len - cut, &spki, &err), SG_EINVAL);
    }
    /* Garbage. */
    for (size_t i = 0; i < sizeof garbage; i++)
        garbage[i] = (uint8_t)(i * 37 + 11);
    ASSERT_EQ(sg_x509_csr_public_key(garbage, sizeof garbage, &spki, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "not a valid DER") != NULL);
    ASSERT_EQ(sg_x509_csr_public_key(NULL, 0, &spki, &err), SG_EINVAL);
    /* Oversized. */
    big = calloc(1, SG_X509_MAX_DER + 1);
    memcpy(big, csr.data, csr.len);
    ASSERT_EQ(sg_x509_csr_public_key(big, SG_X509_MAX_DER + 1, &spki, &err), SG_ETOOBIG);
    free(big);
    ASSERT(spki.data == NULL);
    sg_der_cleanup(&csr);
    EVP_PKEY_free(k);
}

static void expect_csr_refused(EVP_PKEY *k, const char *want)
{
    sg_der csr = {0}, spki = {0};
    sg_err err;

    ASSERT_OK(sg_x509_csr_create(k, NULL, &csr, &err));
    ASSERT_EQ(sg_x509_csr_public_key(csr.data, csr.len, &spki, &err), SG_EINVAL);
    if (strstr(err.msg, want) == NULL)
        SG__FAIL("message \"%s\" lacks \"%s\"", err.msg, want);
    ASSERT(spki.data == NULL);
    sg_der_cleanup(&csr);
    EVP_PKEY_free(k);
}

TEST(x509_csr_weak_or_unsupported_keys_refused)
{
    expect_csr_refused(gen("ED25519", NULL, 0), "Ed25519");
    expect_csr_refused(gen("EC", "P-521", 0), "P-521");
    expect_csr_refused(gen("RSA", NULL, 1024), "1024 bits");
    expect_csr_refused(gen_dsa(), "DSA");
}

/* Hand-made SPKI cases for the table test. */
static const uint8_t p256_prefix[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                                      0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                      0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};

TEST(x509_spki_check_table)
{
    EVP_PKEY *k;
    sg_der d;
    uint8_t buf[128];
    sg_err err;

    struct {
        const char *name;
        EVP_PKEY *key;
        int ok;
    } cases[] = {
        {"p256", gen("EC", "P-256", 0), 1},     {"p384", gen("EC", "P-384", 0), 1},
        {"rsa2048", gen("RSA", NULL, 2048), 1}, {"rsa1024", gen("RSA", NULL, 1024), 0},
        {"p521", gen("EC", "P-521", 0), 0},     {"ed25519", gen("ED25519", NULL, 0), 0},
        {"x25519", gen("X25519", NULL, 0), 0},  {"secp256k1", gen("EC", "secp256k1", 0), 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        d = spki_of(cases[i].key);
        int rc = sg_x509_spki_check(d.data, d.len, &err);
        if ((rc == 0) != cases[i].ok)
            SG__FAIL("case %s: rc %d (%s)", cases[i].name, rc, err.msg);
        if (!cases[i].ok) {
            ASSERT_EQ(rc, SG_EINVAL);
            ASSERT(err.msg[0] != '\0');
        }
        /* Every truncation and one trailing byte are refused. */
        for (size_t cut = 1; cut < d.len; cut++)
            ASSERT_EQ(sg_x509_spki_check(d.data, d.len - cut, NULL), SG_EINVAL);
        sg_der_cleanup(&d);
        EVP_PKEY_free(cases[i].key);
    }

    /* Compressed P-256 point. */
    k = gen("EC", "P-256", 0);
    ASSERT(EVP_PKEY_set_utf8_string_param(k, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                          "compressed") == 1);
    d = spki_of(k);
    ASSERT_EQ(d.len, 59);
    ASSERT_OK(sg_x509_spki_check(d.data, d.len, &err));
    sg_der_cleanup(&d);
    EVP_PKEY_free(k);

    /* A well-formed uncompressed point that is not on the curve. */
    memcpy(buf, p256_prefix, sizeof p256_prefix);
    memset(buf + sizeof p256_prefix, 0x11, 65);
    buf[sizeof p256_prefix] = 0x04;
    ASSERT_EQ(sg_x509_spki_check(buf, sizeof p256_prefix + 65, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "not on the P-256 curve") != NULL);
    /* Then a bad prefix and a trailing byte. */
    buf[sizeof p256_prefix] = 0x05;
    ASSERT_EQ(sg_x509_spki_check(buf, sizeof p256_prefix + 65, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "P-256 point") != NULL);
    buf[sizeof p256_prefix] = 0x04;
    buf[sizeof p256_prefix + 65] = 0;
    ASSERT_EQ(sg_x509_spki_check(buf, sizeof p256_prefix + 66, &err), SG_EINVAL);
    /* Non-zero unused-bits count. */
    buf[sizeof p256_prefix - 1] = 0x01;
    ASSERT_EQ(sg_x509_spki_check(buf, sizeof p256_prefix + 65, &err), SG_EINVAL);
    /* Non-minimal long-form length. */
    {
        const uint8_t bad[] = {0x30, 0x81, 0x05, 0x30, 0x00, 0x03, 0x01, 0x00};
        ASSERT_EQ(sg_x509_spki_check(bad, sizeof bad, &err), SG_EINVAL);
    }
    ASSERT_EQ(sg_x509_spki_check(NULL, 0, &err), SG_EINVAL);
}

TEST(x509_verify_svid_rules)
{
    EVP_PKEY *ck = gen("EC", "P-256", 0), *lk = gen("EC", "P-256", 0), *ok = gen("EC", "P-256", 0);
    X509 *ca =
        make_cert(ck, ck, NULL, "ca", "critical,CA:TRUE", "critical,keyCertSign,cRLSign", NULL, 10);
    X509 *other =
        make_cert(ok, ok, NULL, "other", "critical,CA:TRUE", "critical,keyCertSign", NULL, 10);
    X509 *leaf, *bad;
    STACK_OF(X509) *roots = sk_X509_new_null(), *wrong = sk_X509_new_null();
    sg_spiffeid id;
    sg_err err;

    sk_X509_push(roots, ca);
    sk_X509_push(wrong, other);
    leaf = make_cert(lk, ck, ca, "leaf", "critical,CA:FALSE", "critical,digitalSignature",
                     "URI:spiffe://example.org/w", 1);
    ASSERT_OK(sg_x509_verify_svid(leaf, NULL, roots, 0, &id, &err));
    ASSERT_STREQ(id.str, "spiffe://example.org/w");
    ASSERT_STREQ(id.path, "/w");
    ASSERT_EQ(sg_x509_verify_svid(leaf, NULL, wrong, 0, &id, &err), SG_EUNTRUSTED);
    ASSERT(strstr(err.msg, "does not verify") != NULL);
    ASSERT_EQ(sg_x509_verify_svid(leaf, NULL, roots, (int64_t)time(NULL) + 3 * 86400, &id, &err),
              SG_EEXPIRED);
    /* The root itself is not an SVID: no partial chains and CA refused. */
    X509_free(leaf);
    bad = make_cert(lk, ck, ca, "leaf", "critical,CA:FALSE", "critical,keyEncipherment",
                    "URI:spiffe://example.org/w", 1);
    ASSERT_EQ(sg_x509_verify_svid(bad, NULL, roots, 0, &id, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "digitalSignature") != NULL);
    X509_free(bad);
    bad = make_cert(lk, ck, ca, "leaf", "critical,CA:FALSE", "critical,digitalSignature", NULL, 1);
    ASSERT_EQ(sg_x509_verify_svid(bad, NULL, roots, 0, &id, &err), SG_EINVAL);
    X509_free(bad);
    sk_X509_pop_free(roots, X509_free);
    sk_X509_pop_free(wrong, X509_free);
    EVP_PKEY_free(ck);
    EVP_PKEY_free(lk);
    EVP_PKEY_free(ok);
}
