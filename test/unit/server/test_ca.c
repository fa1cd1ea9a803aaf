/*
 * Unit tests for server/ca.c: CA creation, upstream chains, persistence and
 * the X509-SVID profile of signed leaves (parsed back and checked rule by rule).
 */
#include "server/ca.h"

#include "common/fsutil.h"
#include "test/runner.h"

#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char up_key_buf[300], up_crt_buf[300];

static const char *up_key(void);
static const char *up_crt(void);

static sg_ca *new_ca(sg_key_type t, int64_t ttl, const char *keys_dir)
{
    sg_ca_options o = {0};
    sg_ca *ca = NULL;
    sg_err err = {0};

    o.trust_domain = "example.org";
    o.key_type = t;
    o.ca_ttl_s = ttl;
    o.keys_dir = keys_dir;
    if (sg_ca_new(&ca, &o, &err) != 0)
        SG__FAIL("sg_ca_new: %s", err.msg);
    return ca;
}

/*
 * The upstream CA: by default a P-384 root made with sg_ca itself at test time;
 * SPIRE's dummy upstream CA instead when $SIGIL_SPIRE_QUICKSTART names a
 * quickstart conf/ directory holding it.
 */
static void up_paths(void)
{
    sg_ca_options o = {0};
    sg_ca *ca = NULL;
    sg_err err;
    char dir[256];
    const char *qs = getenv("SIGIL_SPIRE_QUICKSTART");

    if (up_key_buf[0] != '\0')
        return;
    if (qs != NULL && qs[0] != '\0') {
        snprintf(up_key_buf, sizeof up_key_buf, "%s/server/dummy_upstream_ca.key", qs);
        snprintf(up_crt_buf, sizeof up_crt_buf, "%s/server/dummy_upstream_ca.crt", qs);
        if (access(up_key_buf, R_OK) == 0 && access(up_crt_buf, R_OK) == 0)
            return;
    }
    snprintf(dir, sizeof dir, "%s/upstream", sg_test_tmpdir());
    o.trust_domain = "local";
    o.key_type = SG_KEY_EC_P384;
    o.ca_ttl_s = 86400 * 30;
    o.keys_dir = dir;
    if (sg_ca_new(&ca, &o, &err) != 0)
        SG__FAIL("upstream CA: %s", err.msg);
    sg_ca_free(ca);
    snprintf(up_key_buf, sizeof up_key_buf, "%s/ca.key", dir);
    snprintf(up_crt_buf, sizeof up_crt_buf, "%s/ca.crt", dir);
}

static const char *up_key(void)
{
    up_paths();
    return up_key_buf;
}

static const char *up_crt(void)
{
    up_paths();
    return up_crt_buf;
}

static sg_der spki_of(EVP_PKEY *k)
{
    sg_der d = {0};
    unsigned char *p;
    int n = i2d_PUBKEY(k, NULL);
    d.data = malloc((size_t)n);
    p = d.data;
    i2d_PUBKEY(k, &p);
    d.len = (size_t)n;
    return d;
}

static X509 *parse(const sg_der *d)
{
    X509 *x = NULL;
    sg_err err;
    if (sg_x509_from_der(d->data, d->len, &x, &err) != 0)
        SG__FAIL("parse: %s", err.msg);
    return x;
}

static STACK_OF(X509) * bundle_stack(sg_ca *ca)
{
    sg_der *certs = NULL;
    size_t n = 0;
    STACK_OF(X509) *sk = sk_X509_new_null();
    sg_err err;

    ASSERT_OK(sg_ca_bundle_der(ca, &certs, &n, &err));
    ASSERT(n >= 1);
    for (size_t i = 0; i < n; i++) {
        sk_X509_push(sk, parse(&certs[i]));
        sg_der_cleanup(&certs[i]);
    }
    free(certs);
    return sk;
}

static int ext_critical(X509 *x, int nid)
{
    int i = X509_get_ext_by_NID(x, nid, -1);
    ASSERT(i >= 0);
    return X509_EXTENSION_get_critical(X509_get_ext(x, i));
}

static void name_entry(X509_NAME *n, int nid, char *out, size_t outlen)
{
    int i = X509_NAME_get_index_by_NID(n, nid, -1);
    out[0] = '\0';
    if (i >= 0) {
        const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i));
        snprintf(out, outlen, "%.*s", ASN1_STRING_length(s), ASN1_STRING_get0_data(s));
    }
}

/* Checks every X509-SVID profile rule on leaf, issued by ca_cert, for key. */
static void check_leaf_profile(X509 *leaf, X509 *ca_cert, EVP_PKEY *key, const char *id,
                               const char *const *dns, size_t ndns, bool rsa)
{
    GENERAL_NAMES *gens;
    int nuri = 0, ndn = 0;
    char buf[300];
    const ASN1_OCTET_STRING *skid;
    const ASN1_OCTET_STRING *ca_skid = X509_get0_subject_key_id(ca_cert);
    const ASN1_OCTET_STRING *akid = X509_get0_authority_key_id(leaf);
    uint8_t sha[SHA_DIGEST_LENGTH];
    X509_PUBKEY *xpk = X509_get_X509_PUBKEY(leaf);
    EXTENDED_KEY_USAGE *eku;
    uint32_t flags = X509_get_extension_flags(leaf);
    const ASN1_INTEGER *sn = X509_get0_serialNumber(leaf);
    time_t now = time(NULL);

    ASSERT_EQ(X509_get_version(leaf), 2);
    ASSERT(!(flags & EXFLAG_INVALID));
    /* Serial: positive, 128 bits. */
    ASSERT_EQ(ASN1_STRING_type(sn), V_ASN1_INTEGER);
    ASSERT_EQ(ASN1_STRING_length(sn), 16);
    /* SANs: exactly one URI, the DNS names in order. */
    gens = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    ASSERT(gens != NULL);
    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type == GEN_URI) {
            nuri++;
            snprintf(buf, sizeof buf, "%.*s", ASN1_STRING_length(g->d.ia5),
                     ASN1_STRING_get0_data(g->d.ia5));
            ASSERT_STREQ(buf, id);
        } else if (g->type == GEN_DNS) {
            snprintf(buf, sizeof buf, "%.*s", ASN1_STRING_length(g->d.ia5),
                     ASN1_STRING_get0_data(g->d.ia5));
            ASSERT((size_t)ndn < ndns);
            ASSERT_STREQ(buf, dns[ndn]);
            ndn++;
        } else {
            SG__FAIL("unexpected SAN type %d", g->type);
        }
    }
    GENERAL_NAMES_free(gens);
    ASSERT_EQ(nuri, 1);
    ASSERT_EQ(ndn, (int)ndns);
    /* Subject C=US, O=SPIRE, CN = first DNS. */
    name_entry(X509_get_subject_name(leaf), NID_countryName, buf, sizeof buf);
    ASSERT_STREQ(buf, "US");
    name_entry(X509_get_subject_name(leaf), NID_organizationName, buf, sizeof buf);
    ASSERT_STREQ(buf, "SPIRE");
    name_entry(X509_get_subject_name(leaf), NID_commonName, buf, sizeof buf);
    ASSERT_STREQ(buf, ndns > 0 ? dns[0] : "");
    ASSERT_EQ(X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(ca_cert)), 0);
    /* Key usage (critical), EKU, basic constraints (critical). */
    ASSERT(flags & EXFLAG_KUSAGE);
    ASSERT_EQ(ext_critical(leaf, NID_key_usage), 1);
    ASSERT_EQ(X509_get_key_usage(leaf), rsa ? (KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT)
                                            : (KU_DIGITAL_SIGNATURE | KU_KEY_AGREEMENT));
    ASSERT_EQ(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER | XKU_SSL_CLIENT);
    eku = X509_get_ext_d2i(leaf, NID_ext_key_usage, NULL, NULL);
    ASSERT_EQ(sk_ASN1_OBJECT_num(eku), 2);
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
    ASSERT(flags & EXFLAG_BCONS);
    ASSERT(!(flags & EXFLAG_CA));
    ASSERT_EQ(ext_critical(leaf, NID_basic_constraints), 1);
    ASSERT_EQ(X509_check_ca(leaf), 0);
    /* SKID = SHA-1 of the key bits; AKID = CA's SKID. */
    {
        const unsigned char *kb;
        int kl;
        X509_PUBKEY_get0_param(NULL, &kb, &kl, NULL, xpk);
        SHA1(kb, (size_t)kl, sha);
    }
    skid = X509_get0_subject_key_id(leaf);
    ASSERT(skid != NULL);
    ASSERT_EQ(ASN1_STRING_length(skid), SHA_DIGEST_LENGTH);
    ASSERT(memcmp(ASN1_STRING_get0_data(skid), sha, SHA_DIGEST_LENGTH) == 0);
    ASSERT(akid != NULL && ca_skid != NULL);
    ASSERT_EQ(ASN1_OCTET_STRING_cmp(akid, ca_skid), 0);
    /* Validity: backdated 10 s. */
    {
        int day, sec;
        ASSERT(ASN1_TIME_diff(&day, &sec, X509_get0_notBefore(leaf), NULL));
        ASSERT(day == 0 && sec >= 9 && sec <= 12);
    }
    ASSERT(X509_cmp_time(X509_get0_notAfter(leaf), &now) > 0);
    /* The key is the caller's, the signature is the CA's. */
    ASSERT_EQ(EVP_PKEY_eq(X509_get0_pubkey(leaf), key), 1);
    ASSERT_EQ(X509_verify(leaf, X509_get0_pubkey(ca_cert)), 1);
}

TEST(ca_root_profile)
{
    sg_ca *ca = new_ca(SG_KEY_EC_P256, 3600, NULL);
    STACK_OF(X509) *roots = bundle_stack(ca);
    X509 *root = sk_X509_value(roots, 0);
    uint32_t flags = X509_get_extension_flags(root);
    sg_spiffeid id;
    char buf[64], *pem = NULL;
    sg_err err;

    ASSERT_EQ(sk_X509_num(roots), 1);
    ASSERT(flags & EXFLAG_CA);
    ASSERT(flags & EXFLAG_SS);
    ASSERT_EQ(ext_critical(root, NID_basic_constraints), 1);
    ASSERT_EQ(ext_critical(root, NID_key_usage), 1);
    ASSERT(X509_get_key_usage(root) & KU_KEY_CERT_SIGN);
    ASSERT(X509_get_key_usage(root) & KU_CRL_SIGN);
    ASSERT(X509_get_ext_by_NID(root, NID_ext_key_usage, -1) < 0);
    ASSERT(X509_get0_subject_key_id(root) != NULL);
    ASSERT_OK(sg_x509_spiffeid(root, &id, &err));
    ASSERT_STREQ(id.str, "spiffe://example.org");
    name_entry(X509_get_subject_name(root), NID_organizationName, buf, sizeof buf);
    ASSERT_STREQ(buf, "SPIFFE");
    name_entry(X509_get_subject_name(root), NID_countryName, buf, sizeof buf);
    ASSERT_STREQ(buf, "US");
    ASSERT(EVP_PKEY_is_a(X509_get0_pubkey(root), "EC"));
    ASSERT_EQ(sg_ca_bundle_sequence(ca), 1);
    ASSERT(llabs(sg_ca_not_after(ca) - (int64_t)time(NULL) - 3600) < 5);
    ASSERT_OK(sg_ca_bundle_pem(ca, &pem, &err));
    ASSERT(strstr(pem, "BEGIN CERTIFICATE") != NULL);
    free(pem);
    sk_X509_pop_free(roots, X509_free);
    sg_ca_free(ca);
    sg_ca_free(NULL);
}

static void sign_and_check(sg_ca *ca, EVP_PKEY *key, bool rsa)
{
    static const char *const dns[] = {"web.example.org", "alt.example.org"};
    sg_ca_svid_params p = {"spiffe://example.org/ns/web", dns, 2, 600};
    sg_der spki = spki_of(key);
    sg_ca_chain chain = {0};
    STACK_OF(X509) *roots = bundle_stack(ca);
    X509 *leaf;
    sg_spiffeid id;
    char sn[41];
    sg_err err;

    if (sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err) != 0)
        SG__FAIL("sign: %s", err.msg);
    ASSERT_EQ(chain.n, 1);
    leaf = parse(&chain.certs[0]);
    check_leaf_profile(leaf, sk_X509_value(roots, 0), key, p.spiffe_id, dns, 2, rsa);
    ASSERT_EQ(chain.not_after, sg_x509_not_after(leaf));
    ASSERT(llabs(chain.not_after - (int64_t)time(NULL) - 600) < 5);
    sg_x509_serial_hex(leaf, sn, sizeof sn);
    ASSERT_STREQ(chain.serial, sn);
    ASSERT_EQ(strlen(sn), 32);
    ASSERT_OK(sg_x509_verify_svid(leaf, NULL, roots, 0, &id, &err));
    ASSERT_STREQ(id.str, "spiffe://example.org/ns/web");
    {
        /* Our DER is canonical: OpenSSL re-encodes the TBS byte for byte. */
        unsigned char *re = NULL;
        int n = i2d_re_X509_tbs(leaf, &re);
        const uint8_t *d = chain.certs[0].data;
        size_t off = (d[1] & 0x80) ? 2 + (d[1] & 0x7f) : 2;
        ASSERT(n > 0 && (size_t)n < chain.certs[0].len);
        ASSERT(memcmp(d + off, re, (size_t)n) == 0);
        OPENSSL_free(re);
    }
    X509_free(leaf);
    sg_ca_chain_cleanup(&chain);
    sk_X509_pop_free(roots, X509_free);
    sg_der_cleanup(&spki);
}

TEST(ca_sign_svid_profile_ec)
{
    sg_ca *ca = new_ca(SG_KEY_EC_P256, 3600, NULL);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

    sign_and_check(ca, k, false);
    EVP_PKEY_free(k);
    k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    sign_and_check(ca, k, false);
    EVP_PKEY_free(k);
    sg_ca_free(ca);
}

TEST(ca_sign_svid_profile_rsa_leaf_and_other_ca_keys)
{
    sg_ca *ca = new_ca(SG_KEY_EC_P384, 3600, NULL);
    EVP_PKEY *rk = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ek = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

    sign_and_check(ca, rk, true);
    sign_and_check(ca, ek, false);
    sg_ca_free(ca);
    ca = new_ca(SG_KEY_RSA_2048, 3600, NULL);
    sign_and_check(ca, ek, false);
    sign_and_check(ca, rk, true);
    sg_ca_free(ca);
    EVP_PKEY_free(rk);
    EVP_PKEY_free(ek);
}

TEST(ca_sign_svid_without_dns_and_long_dns)
{
    sg_ca *ca = new_ca(SG_KEY_EC_P256, 3600, NULL);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    sg_der spki = spki_of(k);
    char longname[200];
    const char *dns[1] = {longname};
    sg_ca_svid_params p = {"spiffe://example.org/a", NULL, 0, 60};
    sg_ca_chain chain = {0};
    STACK_OF(X509) *roots = bundle_stack(ca);
    X509 *leaf;
    sg_err err;

    ASSERT_OK(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err));
    leaf = parse(&chain.certs[0]);
    check_leaf_profile(leaf, sk_X509_value(roots, 0), k, p.spiffe_id, NULL, 0, false);
    X509_free(leaf);
    sg_ca_chain_cleanup(&chain);
    /* A DNS name longer than a CN may be is a SAN only. */
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    for (size_t i = 10; i < sizeof longname - 1; i += 50)
        longname[i] = '.';
    p.dns = dns;
    p.ndns = 1;
    ASSERT_OK(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err));
    leaf = parse(&chain.certs[0]);
    ASSERT(X509_NAME_get_index_by_NID(X509_get_subject_name(leaf), NID_commonName, -1) < 0);
    ASSERT_OK(sg_x509_verify_svid(leaf, NULL, roots, 0, NULL, &err));
    X509_free(leaf);
    sg_ca_chain_cleanup(&chain);
    sk_X509_pop_free(roots, X509_free);
    sg_der_cleanup(&spki);
    EVP_PKEY_free(k);
    sg_ca_free(ca);
}

TEST(ca_sign_svid_refuses_bad_requests)
{
    sg_ca *ca = new_ca(SG_KEY_EC_P256, 3600, NULL);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    sg_der spki = spki_of(k), eds = spki_of(ed);
    const char *bad_dns[] = {"ok.example", "bad name"};
    sg_ca_svid_params p = {"spiffe://other.org/a", NULL, 0, 60};
    sg_ca_chain chain = {0};
    sg_err err;

    ASSERT_EQ(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "other.org") != NULL);
    p.spiffe_id = "spiffe://example.org";
    ASSERT_EQ(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err), SG_EINVAL);
    p.spiffe_id = "spiffe://example.org/a/../b";
    ASSERT_EQ(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err), SG_EINVAL);
    p.spiffe_id = "spiffe://example.org/a";
    p.ttl_s = 0;
    ASSERT_EQ(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err), SG_EINVAL);
    p.ttl_s = 60;
    p.dns = bad_dns;
    p.ndns = 2;
    ASSERT_EQ(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "bad name") != NULL);
    p.ndns = 0;
    ASSERT_EQ(sg_ca_sign_svid(ca, &p, eds.data, eds.len, &chain, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "Ed25519") != NULL);
    ASSERT_EQ(sg_ca_sign_svid(ca, &p, spki.data, spki.len - 1, &chain, &err), SG_EINVAL);
    ASSERT_EQ(sg_ca_sign_svid(ca, &p, (const uint8_t *)"garbage", 7, &chain, &err), SG_EINVAL);
    ASSERT_EQ(chain.n, 0);
    sg_der_cleanup(&spki);
    sg_der_cleanup(&eds);
    EVP_PKEY_free(k);
    EVP_PKEY_free(ed);
    sg_ca_free(ca);
}

TEST(ca_ttl_capped_by_ca_expiry)
{
    sg_ca *ca = new_ca(SG_KEY_EC_P256, 300, NULL);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    sg_der spki = spki_of(k);
    sg_ca_svid_params p = {"spiffe://example.org/a", NULL, 0, 86400};
    sg_ca_chain chain = {0};
    X509 *leaf;
    sg_err err;

    ASSERT_OK(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err));
    ASSERT_EQ(chain.not_after, sg_ca_not_after(ca));
    leaf = parse(&chain.certs[0]);
    ASSERT_EQ(sg_x509_not_after(leaf), sg_ca_not_after(ca));
    X509_free(leaf);
    sg_ca_chain_cleanup(&chain);
    sg_der_cleanup(&spki);
    EVP_PKEY_free(k);
    sg_ca_free(ca);
}

static sg_ca *new_upstream_ca(const char *key, const char *cert, sg_err *err, int *rc)
{
    sg_ca_options o = {0};
    sg_ca *ca = NULL;

    o.trust_domain = "example.org";
    o.key_type = SG_KEY_EC_P256;
    o.ca_ttl_s = 3600;
    o.upstream_key_file = key;
    o.upstream_cert_file = cert;
    *rc = sg_ca_new(&ca, &o, err);
    return ca;
}

TEST(ca_upstream_quickstart_chain)
{
    sg_err err = {0};
    int rc;
    sg_ca *ca = new_upstream_ca(up_key(), up_crt(), &err, &rc);
    STACK_OF(X509) * roots, *inter = sk_X509_new_null();
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    sg_der spki = spki_of(k);
    sg_ca_svid_params p = {"spiffe://example.org/w", NULL, 0, 600};
    sg_ca_chain chain = {0};
    X509 *leaf, *mid, *up;
    sg_spiffeid id;
    FILE *f;

    if (rc != 0)
        SG__FAIL("sg_ca_new: %s", err.msg);
    roots = bundle_stack(ca);
    ASSERT_EQ(sk_X509_num(roots), 1);
    f = fopen(up_crt(), "r");
    ASSERT(f != NULL);
    up = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    ASSERT_EQ(X509_cmp(sk_X509_value(roots, 0), up), 0);
    ASSERT_OK(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err));
    ASSERT_EQ(chain.n, 2);
    leaf = parse(&chain.certs[0]);
    mid = parse(&chain.certs[1]);
    ASSERT(X509_get_extension_flags(mid) & EXFLAG_CA);
    ASSERT_EQ(X509_NAME_cmp(X509_get_issuer_name(mid), X509_get_subject_name(up)), 0);
    ASSERT(sg_x509_not_after(mid) <= sg_x509_not_after(up));
    ASSERT_EQ(sg_ca_not_after(ca), sg_x509_not_after(mid));
    check_leaf_profile(leaf, mid, k, p.spiffe_id, NULL, 0, false);
    sk_X509_push(inter, mid);
    ASSERT_OK(sg_x509_verify_svid(leaf, inter, roots, 0, &id, &err));
    ASSERT_STREQ(id.str, "spiffe://example.org/w");
    /* Without the intermediate the leaf does not verify. */
    ASSERT_EQ(sg_x509_verify_svid(leaf, NULL, roots, 0, &id, &err), SG_EUNTRUSTED);
    X509_free(leaf);
    X509_free(up);
    sk_X509_pop_free(inter, X509_free);
    sk_X509_pop_free(roots, X509_free);
    sg_ca_chain_cleanup(&chain);
    sg_der_cleanup(&spki);
    EVP_PKEY_free(k);
    sg_ca_free(ca);
}

TEST(ca_server_identity)
{
    sg_ca *ca = new_upstream_ca(up_key(), up_crt(), &(sg_err){0}, &(int){0});
    char *key_pem = NULL, *chain_pem = NULL;
    STACK_OF(X509) *chain = NULL, *roots, *inter = sk_X509_new_null();
    EVP_PKEY *k;
    BIO *b;
    sg_spiffeid id;
    GENERAL_NAMES *gens;
    sg_err err;

    ASSERT(ca != NULL);
    ASSERT_OK(sg_ca_server_identity(ca, 3600, &key_pem, &chain_pem, &err));
    ASSERT_OK(sg_x509_parse_pem_chain(chain_pem, strlen(chain_pem), &chain, &err));
    ASSERT_EQ(sk_X509_num(chain), 2);
    b = BIO_new_mem_buf(key_pem, -1);
    k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    ASSERT(k != NULL);
    ASSERT_EQ(EVP_PKEY_get_bits(k), 256);
    ASSERT_EQ(X509_check_private_key(sk_X509_value(chain, 0), k), 1);
    roots = bundle_stack(ca);
    sk_X509_push(inter, sk_X509_value(chain, 1));
    ASSERT_OK(sg_x509_verify_svid(sk_X509_value(chain, 0), inter, roots, 0, &id, &err));
    ASSERT_STREQ(id.str, "spiffe://example.org/spire/server");
    gens = X509_get_ext_d2i(sk_X509_value(chain, 0), NID_subject_alt_name, NULL, NULL);
    ASSERT_EQ(sk_GENERAL_NAME_num(gens), 1);
    GENERAL_NAMES_free(gens);
    sk_X509_free(inter);
    sk_X509_pop_free(roots, X509_free);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(k);
    sg_key_pem_free(key_pem);
    free(chain_pem);
    sg_ca_free(ca);
}

static void write_file(const char *path, const char *s)
{
    FILE *f = fopen(path, "w");
    ASSERT(f != NULL);
    fputs(s, f);
    fclose(f);
}

TEST(ca_upstream_errors_are_clear)
{
    const char *dir = sg_test_tmpdir();
    char kpath[300], cpath[300], leafpath[300];
    EVP_PKEY *other = NULL;
    sg_err err = {0};
    sg_ca *ca;
    int rc;

    snprintf(kpath, sizeof kpath, "%s/other.key", dir);
    snprintf(cpath, sizeof cpath, "%s/missing.crt", dir);
    snprintf(leafpath, sizeof leafpath, "%s/leaf.crt", dir);
    ASSERT_OK(sg_key_generate(SG_KEY_EC_P384, &other, &err));
    ASSERT_OK(sg_key_write_file(kpath, other, &err));

    /* Key does not match the certificate. */
    ca = new_upstream_ca(kpath, up_crt(), &err, &rc);
    ASSERT(ca == NULL);
    ASSERT_EQ(rc, SG_ECONFIG);
    ASSERT(strstr(err.msg, "does not match") != NULL);
    /* Missing certificate file. */
    ca = new_upstream_ca(up_key(), cpath, &err, &rc);
    ASSERT(ca == NULL);
    ASSERT(strstr(err.msg, "missing.crt") != NULL);
    /* Garbage certificate file. */
    write_file(cpath, "not a certificate\n");
    ca = new_upstream_ca(up_key(), cpath, &err, &rc);
    ASSERT(ca == NULL);
    ASSERT(strstr(err.msg, "missing.crt") != NULL);
    /* Not a CA: an SVID from a sigil CA, with its own key. */
    {
        sg_ca *tmp = new_ca(SG_KEY_EC_P256, 3600, NULL);
        char *kp = NULL, *cp = NULL, lk[300];
        ASSERT_OK(sg_ca_server_identity(tmp, 3600, &kp, &cp, &err));
        write_file(leafpath, cp);
        snprintf(lk, sizeof lk, "%s/leaf.key", dir);
        write_file(lk, kp);
        ca = new_upstream_ca(lk, leafpath, &err, &rc);
        ASSERT(ca == NULL);
        ASSERT_EQ(rc, SG_ECONFIG);
        ASSERT(strstr(err.msg, "not a CA") != NULL);
        sg_key_pem_free(kp);
        free(cp);
        sg_ca_free(tmp);
    }
    /* Only one of the two files. */
    ca = new_upstream_ca(up_key(), NULL, &err, &rc);
    ASSERT(ca == NULL);
    ASSERT_EQ(rc, SG_ECONFIG);
    EVP_PKEY_free(other);
}

static sg_der root_der(sg_ca *ca)
{
    sg_der *certs = NULL;
    size_t n = 0;
    sg_der d;
    ASSERT_OK(sg_ca_bundle_der(ca, &certs, &n, NULL));
    ASSERT_EQ(n, 1);
    d = certs[0];
    free(certs);
    return d;
}

TEST(ca_persisted_across_restarts)
{
    const char *base = sg_test_tmpdir();
    char dir[300], path[400];
    sg_ca *a, *b;
    sg_der da, db;
    struct stat st;

    snprintf(dir, sizeof dir, "%s/keys", base);
    a = new_ca(SG_KEY_EC_P256, 3600, dir);
    da = root_der(a);
    snprintf(path, sizeof path, "%s/ca.key", dir);
    ASSERT_OK(stat(path, &st));
    ASSERT_EQ(st.st_mode & 0777, 0600);
    snprintf(path, sizeof path, "%s/ca.crt", dir);
    ASSERT_OK(stat(path, &st));
    sg_ca_free(a);

    /* Same CA on the next start. */
    b = new_ca(SG_KEY_EC_P256, 3600, dir);
    db = root_der(b);
    ASSERT_EQ(da.len, db.len);
    ASSERT(memcmp(da.data, db.data, da.len) == 0);
    sg_ca_free(b);
    sg_der_cleanup(&db);

    /* A different key type makes a new CA. */
    b = new_ca(SG_KEY_EC_P384, 3600, dir);
    db = root_der(b);
    ASSERT(da.len != db.len || memcmp(da.data, db.data, da.len) != 0);
    sg_ca_free(b);
    sg_der_cleanup(&db);
    sg_der_cleanup(&da);

    /* A corrupt certificate makes a new CA. */
    write_file(path, "garbage");
    b = new_ca(SG_KEY_EC_P384, 3600, dir);
    sg_ca_free(b);

    /* A group-readable key is refused, not silently replaced. */
    b = new_ca(SG_KEY_EC_P384, 3600, dir);
    {
        sg_ca_authority *v = NULL;
        size_t n = 0;
        ASSERT_OK(sg_ca_authorities(b, &v, &n, NULL));
        ASSERT_EQ(n, 1);
        snprintf(path, sizeof path, "%s/ca-%s.key", dir, v[0].id);
        free(v);
    }
    sg_ca_free(b);
    ASSERT_OK(chmod(path, 0640));
    {
        sg_ca_options o = {0};
        sg_err err;
        o.trust_domain = "example.org";
        o.key_type = SG_KEY_EC_P384;
        o.keys_dir = dir;
        b = NULL;
        ASSERT_EQ(sg_ca_new(&b, &o, &err), SG_EPERM);
        ASSERT(strstr(err.msg, ".key") != NULL);
    }
}

TEST(ca_persisted_upstream_reused)
{
    const char *base = sg_test_tmpdir();
    sg_ca_options o = {0};
    sg_ca *a = NULL, *b = NULL;
    sg_ca_chain ca_chain = {0}, cb_chain = {0};
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    sg_der spki = spki_of(k);
    sg_ca_svid_params p = {"spiffe://example.org/w", NULL, 0, 60};
    sg_err err;

    o.trust_domain = "spiffe://example.org";
    o.key_type = SG_KEY_EC_P256;
    o.ca_ttl_s = 3600;
    o.keys_dir = base;
    o.upstream_key_file = up_key();
    o.upstream_cert_file = up_crt();
    ASSERT_OK(sg_ca_new(&a, &o, &err));
    ASSERT_OK(sg_ca_new(&b, &o, &err));
    ASSERT_OK(sg_ca_sign_svid(a, &p, spki.data, spki.len, &ca_chain, &err));
    ASSERT_OK(sg_ca_sign_svid(b, &p, spki.data, spki.len, &cb_chain, &err));
    ASSERT_EQ(ca_chain.certs[1].len, cb_chain.certs[1].len);
    ASSERT(memcmp(ca_chain.certs[1].data, cb_chain.certs[1].data, ca_chain.certs[1].len) == 0);
    sg_ca_chain_cleanup(&ca_chain);
    sg_ca_chain_cleanup(&cb_chain);
    sg_ca_free(a);
    sg_ca_free(b);
    sg_der_cleanup(&spki);
    EVP_PKEY_free(k);
}

struct sign_job {
    sg_ca *ca;
    sg_der spki;
    int failures;
};

static void *sign_many(void *arg)
{
    struct sign_job *j = arg;
    sg_ca_svid_params p = {"spiffe://example.org/t", NULL, 0, 60};
    for (int i = 0; i < 300; i++) {
        sg_ca_chain c = {0};
        if (sg_ca_sign_svid(j->ca, &p, j->spki.data, j->spki.len, &c, NULL) != 0)
            j->failures++;
        sg_ca_chain_cleanup(&c);
    }
    return NULL;
}

TEST(ca_concurrent_signing)
{
    sg_ca *ca = new_ca(SG_KEY_EC_P256, 3600, NULL);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    struct sign_job jobs[4];
    pthread_t th[4];

    for (int i = 0; i < 4; i++) {
        jobs[i].ca = ca;
        jobs[i].spki = spki_of(k);
        jobs[i].failures = 0;
        ASSERT_OK(pthread_create(&th[i], NULL, sign_many, &jobs[i]));
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ASSERT_EQ(jobs[i].failures, 0);
        sg_der_cleanup(&jobs[i].spki);
    }
    EVP_PKEY_free(k);
    sg_ca_free(ca);
}

/* ---- rotation ---- */

static sg_ca *new_ca_opts(int64_t ttl, int64_t max_svid_ttl, const char *keys_dir, bool upstream)
{
    sg_ca_options o = {0};
    sg_ca *ca = NULL;
    sg_err err = {0};

    o.trust_domain = "example.org";
    o.key_type = SG_KEY_EC_P256;
    o.ca_ttl_s = ttl;
    o.max_svid_ttl_s = max_svid_ttl;
    o.keys_dir = keys_dir;
    if (upstream) {
        o.upstream_key_file = up_key();
        o.upstream_cert_file = up_crt();
    }
    if (sg_ca_new(&ca, &o, &err) != 0)
        SG__FAIL("sg_ca_new: %s", err.msg);
    return ca;
}

/* The authorities, in slot order, as "state:id" checks. */
static size_t auths(sg_ca *ca, sg_ca_authority *out, size_t max)
{
    sg_ca_authority *v = NULL;
    size_t n = 0;

    ASSERT_OK(sg_ca_authorities(ca, &v, &n, NULL));
    ASSERT(n <= max);
    memcpy(out, v, n * sizeof *v);
    free(v);
    return n;
}

static const char *id_in(sg_ca *ca, sg_ca_state st)
{
    static char id[SG_CA_AUTHORITY_ID_MAX + 1];
    sg_ca_authority v[16];
    size_t n = auths(ca, v, 16);

    for (size_t i = 0; i < n; i++)
        if (v[i].state == st) {
            memcpy(id, v[i].id, sizeof id);
            return id;
        }
    return NULL;
}

/* Hex SKID of a DER certificate. */
static void skid_of(const sg_der *d, char *out)
{
    X509 *x = parse(d);
    const ASN1_OCTET_STRING *k = X509_get0_subject_key_id(x);
    ASSERT(k != NULL);
    for (int i = 0; i < ASN1_STRING_length(k); i++)
        snprintf(out + 2 * i, 3, "%02x", ASN1_STRING_get0_data(k)[i]);
    X509_free(x);
}

static bool bundle_has(sg_ca *ca, const char *id)
{
    sg_der *certs = NULL;
    size_t n = 0;
    bool found = false;

    ASSERT_OK(sg_ca_bundle_der(ca, &certs, &n, NULL));
    for (size_t i = 0; i < n; i++) {
        char k[SG_CA_AUTHORITY_ID_MAX + 1];
        skid_of(&certs[i], k);
        found = found || strcmp(k, id) == 0;
        sg_der_cleanup(&certs[i]);
    }
    free(certs);
    return found;
}

static size_t bundle_len(sg_ca *ca)
{
    sg_der *certs = NULL;
    size_t n = 0;

    ASSERT_OK(sg_ca_bundle_der(ca, &certs, &n, NULL));
    for (size_t i = 0; i < n; i++)
        sg_der_cleanup(&certs[i]);
    free(certs);
    return n;
}

/* Signs an SVID and verifies it against the bundle at time at; returns the issuer's SKID hex. */
static void sign_and_verify(sg_ca *ca, int64_t at, char *issuer_id)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    sg_der spki = spki_of(k);
    sg_ca_svid_params p = {.spiffe_id = "spiffe://example.org/w", .ttl_s = 60};
    sg_ca_chain ch = {0};
    STACK_OF(X509) *roots = bundle_stack(ca), *inter = sk_X509_new_null();
    X509 *leaf;
    sg_err err;
    const ASN1_OCTET_STRING *akid;

    ASSERT_OK(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &ch, &err));
    leaf = parse(&ch.certs[0]);
    for (size_t i = 1; i < ch.n; i++)
        sk_X509_push(inter, parse(&ch.certs[i]));
    if (sg_x509_verify_svid(leaf, inter, roots, at, NULL, &err) != 0)
        SG__FAIL("verify: %s", err.msg);
    /* The issuing authority: the leaf's AKID (self-signed) or the intermediate's SKID. */
    if (ch.n > 1) {
        skid_of(&ch.certs[1], issuer_id);
    } else {
        akid = X509_get0_authority_key_id(leaf);
        ASSERT(akid != NULL);
        for (int i = 0; i < ASN1_STRING_length(akid); i++)
            snprintf(issuer_id + 2 * i, 3, "%02x", ASN1_STRING_get0_data(akid)[i]);
    }
    X509_free(leaf);
    sk_X509_pop_free(inter, X509_free);
    sk_X509_pop_free(roots, X509_free);
    sg_ca_chain_cleanup(&ch);
    sg_der_cleanup(&spki);
    EVP_PKEY_free(k);
}

TEST(ca_rotation_schedule_self_signed)
{
    sg_ca *ca = new_ca_opts(60, 0, NULL, false);
    int64_t t0 = (int64_t)time(NULL);
    char a[SG_CA_AUTHORITY_ID_MAX + 1], b[SG_CA_AUTHORITY_ID_MAX + 1],
        got[SG_CA_AUTHORITY_ID_MAX + 1];
    bool ch = true;
    sg_ca_authority v[16];

    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    ASSERT_EQ(strlen(a), 40);
    ASSERT_EQ(sg_ca_bundle_sequence(ca), 1);
    ASSERT(bundle_has(ca, a));

    /* More than half the life left: nothing to do. */
    ASSERT_OK(sg_ca_rotate(ca, t0 + 20, &ch, NULL));
    ASSERT(!ch);
    ASSERT_EQ(auths(ca, v, 16), 1);

    /* Under 30 s left: the next authority is prepared and published at once. */
    ASSERT_OK(sg_ca_rotate(ca, t0 + 31, &ch, NULL));
    ASSERT(ch);
    ASSERT_EQ(sg_ca_bundle_sequence(ca), 2);
    ASSERT(id_in(ca, SG_CA_PREPARED) != NULL);
    snprintf(b, sizeof b, "%s", id_in(ca, SG_CA_PREPARED));
    ASSERT(strcmp(a, b) != 0);
    ASSERT_EQ(bundle_len(ca), 2);
    ASSERT(bundle_has(ca, a) && bundle_has(ca, b));
    sign_and_verify(ca, t0 + 1, got);
    ASSERT_STREQ(got, a); /* the prepared one signs nothing */

    /* 15 s left: still above ca_ttl/6. */
    ASSERT_OK(sg_ca_rotate(ca, t0 + 45, &ch, NULL));
    ASSERT(!ch);
    ASSERT_STREQ(id_in(ca, SG_CA_ACTIVE), a);

    /* Under 10 s left: the prepared one becomes active, the active one old. */
    ASSERT_OK(sg_ca_rotate(ca, t0 + 51, &ch, NULL));
    ASSERT(!ch); /* both were in the bundle already */
    ASSERT_EQ(sg_ca_bundle_sequence(ca), 2);
    ASSERT_STREQ(id_in(ca, SG_CA_ACTIVE), b);
    ASSERT_STREQ(id_in(ca, SG_CA_OLD), a);
    ASSERT(id_in(ca, SG_CA_PREPARED) == NULL);
    ASSERT(sg_ca_not_after(ca) > t0 + 85);
    sign_and_verify(ca, t0 + 52, got);
    ASSERT_STREQ(got, b);

    /* The old authority leaves the bundle once expired. */
    ASSERT_OK(sg_ca_rotate(ca, t0 + 61, &ch, NULL));
    ASSERT(ch);
    ASSERT_EQ(sg_ca_bundle_sequence(ca), 3);
    ASSERT_EQ(auths(ca, v, 16), 1);
    ASSERT_EQ(bundle_len(ca), 1);
    ASSERT(!bundle_has(ca, a));

    /* And the cycle goes on for the new one. */
    ASSERT_OK(sg_ca_rotate(ca, t0 + 63, &ch, NULL));
    ASSERT(ch);
    ASSERT_EQ(sg_ca_bundle_sequence(ca), 4);
    ASSERT_EQ(auths(ca, v, 16), 2);
    sg_ca_free(ca);
}

TEST(ca_rotation_taint_and_revoke_rules)
{
    sg_ca *ca = new_ca_opts(3600, 10, NULL, false);
    int64_t t0 = (int64_t)time(NULL);
    char a[SG_CA_AUTHORITY_ID_MAX + 1], b[SG_CA_AUTHORITY_ID_MAX + 1],
        c[SG_CA_AUTHORITY_ID_MAX + 1];
    sg_ca_authority info;
    char **ids = NULL;
    size_t nids = 0;
    uint64_t seq;
    sg_err err;

    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    /* The active authority cannot be tainted. */
    ASSERT_EQ(sg_ca_taint(ca, a, t0, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "only an old authority") != NULL);

    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    ASSERT_EQ(info.state, SG_CA_PREPARED);
    snprintf(b, sizeof b, "%s", info.id);
    ASSERT_EQ(sg_ca_bundle_sequence(ca), 2);
    ASSERT_EQ(sg_ca_taint(ca, b, t0, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "prepared") != NULL);

    /* Activation needs the prepared ID. */
    ASSERT_EQ(sg_ca_activate(ca, "", t0, NULL, &err), SG_EINVAL);
    ASSERT_EQ(sg_ca_activate(ca, "../../etc/passwd", t0, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "../../etc/passwd") != NULL);
    ASSERT_EQ(sg_ca_activate(ca, "abcdef", t0, NULL, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "abcdef") != NULL);
    ASSERT_EQ(sg_ca_activate(ca, a, t0, NULL, &err), SG_EINVAL);
    ASSERT_OK(sg_ca_activate(ca, b, t0, &info, &err));
    ASSERT_EQ(info.state, SG_CA_ACTIVE);
    ASSERT_STREQ(id_in(ca, SG_CA_OLD), a);

    /* Revoke needs a taint first. */
    ASSERT_EQ(sg_ca_revoke(ca, a, t0 + 100, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "not tainted") != NULL);

    seq = sg_ca_bundle_sequence(ca);
    ASSERT_OK(sg_ca_taint(ca, a, t0 + 1, &info, &err));
    ASSERT(info.tainted);
    ASSERT_EQ(info.tainted_at, t0 + 1);
    ASSERT_EQ(sg_ca_bundle_sequence(ca), seq + 1);
    ASSERT_EQ(sg_ca_taint(ca, a, t0 + 2, NULL, &err), SG_EEXIST);
    ASSERT_OK(sg_ca_tainted_ids(ca, &ids, &nids, NULL));
    ASSERT_EQ(nids, 1);
    ASSERT_STREQ(ids[0], a);
    sg_ca_ids_free(ids, nids);

    /* SVIDs of the tainted authority may live max_svid_ttl_s past the taint. */
    ASSERT_EQ(sg_ca_revoke(ca, a, t0 + 5, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "may still have live SVIDs until") != NULL);
    ASSERT(strstr(err.msg, a) != NULL);
    ASSERT(bundle_has(ca, a));
    seq = sg_ca_bundle_sequence(ca);
    ASSERT_OK(sg_ca_revoke(ca, a, t0 + 11, &info, &err));
    ASSERT(!bundle_has(ca, a));
    ASSERT(bundle_has(ca, b));
    ASSERT_EQ(sg_ca_bundle_sequence(ca), seq + 1);
    ASSERT_OK(sg_ca_tainted_ids(ca, &ids, &nids, NULL));
    ASSERT_EQ(nids, 0);
    sg_ca_ids_free(ids, nids);
    ASSERT_EQ(sg_ca_taint(ca, a, t0 + 12, NULL, &err), SG_ENOENT);

    /* A forced prepare replaces an unused prepared authority. */
    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    snprintf(c, sizeof c, "%s", info.id);
    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    ASSERT(strcmp(c, info.id) != 0);
    ASSERT(!bundle_has(ca, c));
    ASSERT(bundle_has(ca, info.id));
    ASSERT_EQ(bundle_len(ca), 2);
    sg_ca_free(ca);
}

TEST(ca_rotation_revoke_waits_for_not_after_without_max_ttl)
{
    sg_ca *ca = new_ca_opts(60, 0, NULL, false);
    int64_t t0 = (int64_t)time(NULL);
    char a[SG_CA_AUTHORITY_ID_MAX + 1];
    sg_ca_authority info;
    sg_err err;

    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    ASSERT_OK(sg_ca_activate(ca, info.id, t0, NULL, &err));
    ASSERT_OK(sg_ca_taint(ca, a, t0, NULL, &err));
    ASSERT_EQ(sg_ca_revoke(ca, a, t0 + 40, NULL, &err), SG_EINVAL);
    ASSERT_OK(sg_ca_revoke(ca, a, t0 + 61, NULL, &err));
    sg_ca_free(ca);
}

TEST(ca_rotation_persisted_across_restarts)
{
    char dir[300], path[500];
    sg_ca *ca;
    int64_t t0 = (int64_t)time(NULL);
    sg_ca_authority v1[16], v2[16], info;
    size_t n1, n2;
    uint64_t seq;
    char a[SG_CA_AUTHORITY_ID_MAX + 1], b[SG_CA_AUTHORITY_ID_MAX + 1];
    struct stat st;
    sg_der *b1 = NULL, *b2 = NULL;
    size_t nb1 = 0, nb2 = 0;
    sg_err err;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    ca = new_ca_opts(3600, 60, dir, false);
    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    snprintf(b, sizeof b, "%s", info.id);
    ASSERT_OK(sg_ca_activate(ca, b, t0, NULL, &err));
    ASSERT_OK(sg_ca_taint(ca, a, t0, NULL, &err));
    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    n1 = auths(ca, v1, 16);
    ASSERT_EQ(n1, 3);
    seq = sg_ca_bundle_sequence(ca);
    ASSERT_OK(sg_ca_bundle_der(ca, &b1, &nb1, NULL));
    sg_ca_free(ca);

    snprintf(path, sizeof path, "%s/ca-%s.key", dir, b);
    ASSERT_OK(stat(path, &st));
    ASSERT_EQ(st.st_mode & 0777, 0600);
    snprintf(path, sizeof path, "%s/ca-slots.json", dir);
    ASSERT_OK(stat(path, &st));

    ca = new_ca_opts(3600, 60, dir, false);
    n2 = auths(ca, v2, 16);
    ASSERT_EQ(n2, n1);
    for (size_t i = 0; i < n1; i++) {
        ASSERT_STREQ(v1[i].id, v2[i].id);
        ASSERT_EQ(v1[i].state, v2[i].state);
        ASSERT_EQ(v1[i].tainted, v2[i].tainted);
        ASSERT_EQ(v1[i].tainted_at, v2[i].tainted_at);
        ASSERT_EQ(v1[i].not_after, v2[i].not_after);
    }
    ASSERT_EQ(sg_ca_bundle_sequence(ca), seq);
    ASSERT_OK(sg_ca_bundle_der(ca, &b2, &nb2, NULL));
    ASSERT_EQ(nb1, nb2);
    for (size_t i = 0; i < nb1; i++) {
        ASSERT(b1[i].len == b2[i].len && memcmp(b1[i].data, b2[i].data, b1[i].len) == 0);
        sg_der_cleanup(&b1[i]);
        sg_der_cleanup(&b2[i]);
    }
    free(b1);
    free(b2);
    {
        char got[SG_CA_AUTHORITY_ID_MAX + 1];
        sign_and_verify(ca, 0, got);
        ASSERT_STREQ(got, b);
    }
    /* A revoked authority stays gone, files included. */
    ASSERT_OK(sg_ca_revoke(ca, a, t0 + 61, NULL, &err));
    sg_ca_free(ca);
    snprintf(path, sizeof path, "%s/ca-%s.key", dir, a);
    ASSERT(stat(path, &st) != 0);
    ca = new_ca_opts(3600, 60, dir, false);
    ASSERT_EQ(auths(ca, v2, 16), 2);
    ASSERT(!bundle_has(ca, a));
    sg_ca_free(ca);
}

TEST(ca_rotation_legacy_layout_and_bad_state_file)
{
    char dir[300], path[500];
    sg_ca *ca;
    char a[SG_CA_AUTHORITY_ID_MAX + 1];
    sg_ca_options o = {0};
    sg_err err;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    ca = new_ca_opts(3600, 0, dir, false);
    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    sg_ca_free(ca);
    /* Only ca.key + ca.crt (the single-CA layout): they become the active authority. */
    snprintf(path, sizeof path, "%s/ca-slots.json", dir);
    ASSERT_OK(unlink(path));
    snprintf(path, sizeof path, "%s/ca-%s.key", dir, a);
    ASSERT_OK(unlink(path));
    snprintf(path, sizeof path, "%s/ca-%s.crt", dir, a);
    ASSERT_OK(unlink(path));
    ca = new_ca_opts(3600, 0, dir, false);
    ASSERT_STREQ(id_in(ca, SG_CA_ACTIVE), a);
    sg_ca_free(ca);
    snprintf(path, sizeof path, "%s/ca-%s.key", dir, a);
    ASSERT(access(path, F_OK) == 0);

    o.trust_domain = "example.org";
    o.key_type = SG_KEY_EC_P256;
    o.ca_ttl_s = 3600;
    o.keys_dir = dir;
    snprintf(path, sizeof path, "%s/ca-slots.json", dir);
    write_file(path, "{\"authorities\": [");
    ca = NULL;
    ASSERT_EQ(sg_ca_new(&ca, &o, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "ca-slots.json") != NULL);
    write_file(path, "{\"authorities\": [{\"id\": \"../../x\", \"state\": \"active\"}]}");
    ASSERT_EQ(sg_ca_new(&ca, &o, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "../../x") != NULL);
    write_file(path, "{\"authorities\": [{\"id\": \"abcd\", \"state\": \"dormant\"}]}");
    ASSERT_EQ(sg_ca_new(&ca, &o, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "dormant") != NULL);
    write_file(path, "{\"authorities\": 7}");
    ASSERT_EQ(sg_ca_new(&ca, &o, &err), SG_ECONFIG);
    /* A listed authority whose files are gone is dropped; a new one is made. */
    write_file(path, "{\"authorities\": [{\"id\": \"abcd\", \"state\": \"active\"}]}");
    ASSERT_OK(sg_ca_new(&ca, &o, &err));
    ASSERT(id_in(ca, SG_CA_ACTIVE) != NULL);
    sg_ca_free(ca);
}

TEST(ca_rotation_upstream_keeps_bundle)
{
    sg_ca *ca = new_ca_opts(60, 10, NULL, true);
    int64_t t0 = (int64_t)time(NULL);
    sg_der *b1 = NULL, *b2 = NULL;
    size_t nb1 = 0, nb2 = 0;
    char a[SG_CA_AUTHORITY_ID_MAX + 1], b[SG_CA_AUTHORITY_ID_MAX + 1],
        got[SG_CA_AUTHORITY_ID_MAX + 1];
    sg_ca_authority info;
    bool ch = true;
    sg_err err;

    ASSERT_OK(sg_ca_bundle_der(ca, &b1, &nb1, NULL));
    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    sign_and_verify(ca, t0 + 1, got);
    ASSERT_STREQ(got, a);
    ASSERT_OK(sg_ca_rotate(ca, t0 + 31, &ch, NULL));
    ASSERT(!ch);
    ASSERT_EQ(sg_ca_bundle_sequence(ca), 1);
    snprintf(b, sizeof b, "%s", id_in(ca, SG_CA_PREPARED));
    ASSERT_OK(sg_ca_rotate(ca, t0 + 51, &ch, NULL));
    ASSERT(!ch);
    ASSERT_STREQ(id_in(ca, SG_CA_ACTIVE), b);
    sign_and_verify(ca, t0 + 52, got);
    ASSERT_STREQ(got, b);
    ASSERT_OK(sg_ca_taint(ca, a, t0 + 52, &info, &err));
    ASSERT(info.upstream_id[0] != '\0');
    ASSERT_OK(sg_ca_revoke(ca, a, t0 + 62, NULL, &err));
    ASSERT_EQ(auths(ca, &info, 1), 1);
    ASSERT_OK(sg_ca_bundle_der(ca, &b2, &nb2, NULL));
    ASSERT_EQ(nb1, nb2);
    for (size_t i = 0; i < nb1; i++) {
        ASSERT(b1[i].len == b2[i].len && memcmp(b1[i].data, b2[i].data, b1[i].len) == 0);
        sg_der_cleanup(&b1[i]);
        sg_der_cleanup(&b2[i]);
    }
    free(b1);
    free(b2);
    sg_ca_free(ca);
}

typedef struct rot_signer {
    sg_ca *ca;
    _Atomic int stop;
    int failures, signed_n;
} rot_signer;

static void *rot_sign_loop(void *arg)
{
    rot_signer *r = arg;
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    sg_der spki = spki_of(k);
    sg_ca_svid_params p = {.spiffe_id = "spiffe://example.org/w", .ttl_s = 30};

    while (!r->stop) {
        sg_ca_chain ch = {0};
        if (sg_ca_sign_svid(r->ca, &p, spki.data, spki.len, &ch, NULL) != 0)
            r->failures++;
        else
            r->signed_n++;
        sg_ca_chain_cleanup(&ch);
    }
    sg_der_cleanup(&spki);
    EVP_PKEY_free(k);
    return NULL;
}

TEST(ca_rotation_while_signing)
{
    rot_signer r = {.ca = new_ca_opts(3600, 0, NULL, false)};
    pthread_t th;
    int64_t t0 = (int64_t)time(NULL);

    ASSERT_OK(pthread_create(&th, NULL, rot_sign_loop, &r));
    for (int i = 0; i < 20; i++) {
        sg_ca_authority info;
        char old[SG_CA_AUTHORITY_ID_MAX + 1];
        snprintf(old, sizeof old, "%s", id_in(r.ca, SG_CA_ACTIVE));
        ASSERT_OK(sg_ca_prepare(r.ca, t0, &info, NULL));
        ASSERT_OK(sg_ca_activate(r.ca, info.id, t0, NULL, NULL));
        ASSERT_OK(sg_ca_taint(r.ca, old, t0, NULL, NULL));
        ASSERT_OK(sg_ca_revoke(r.ca, old, t0 + 4000, NULL, NULL));
    }
    r.stop = 1;
    pthread_join(th, NULL);
    ASSERT_EQ(r.failures, 0);
    ASSERT(r.signed_n > 0);
    sg_ca_free(r.ca);
}

TEST(ca_rotation_revoke_waits_for_long_entry_ttls_signed)
{
    /* max_svid_ttl_s 10, but an entry asked for 30 minutes: revoke must wait for it. */
    sg_ca *ca = new_ca_opts(3600, 10, NULL, false);
    int64_t t0 = (int64_t)time(NULL);
    char a[SG_CA_AUTHORITY_ID_MAX + 1];
    EVP_PKEY *key = NULL;
    sg_ca_svid_params p = {"spiffe://example.org/long", NULL, 0, 1800};
    sg_ca_chain chain = {0};
    sg_ca_authority info;
    sg_err err;

    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    ASSERT_OK(sg_key_generate(SG_KEY_EC_P256, &key, &err));
    sg_der spki = spki_of(key);
    ASSERT_OK(sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err));
    ASSERT_STREQ(chain.authority_id, a);
    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    ASSERT_OK(sg_ca_activate(ca, info.id, t0, NULL, &err));
    ASSERT_OK(sg_ca_taint(ca, a, t0, NULL, &err));
    ASSERT_EQ(sg_ca_revoke(ca, a, t0 + 60, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "may still have live SVIDs") != NULL);
    ASSERT_OK(sg_ca_revoke(ca, a, chain.not_after, NULL, &err));
    sg_ca_chain_cleanup(&chain);
    sg_der_cleanup(&spki);
    EVP_PKEY_free(key);
    sg_ca_free(ca);
}

/* ---- persisted high-water mark of what each authority signed ---- */

static char *slurp(const char *path)
{
    uint8_t *d = NULL;
    size_t n = 0;
    char *s;

    ASSERT_OK(sg_fs_read_file(path, 1 << 20, &d, &n, NULL));
    s = malloc(n + 1);
    memcpy(s, d, n);
    s[n] = '\0';
    free(d);
    return s;
}

/* "signed_until" of authority id in dir's ca-slots.json (-1 when absent). */
static int64_t mark_of(const char *dir, const char *id)
{
    char path[300];
    json_t *root, *arr;
    int64_t v = -1;

    snprintf(path, sizeof path, "%s/ca-slots.json", dir);
    root = json_load_file(path, 0, NULL);
    ASSERT(root != NULL);
    arr = json_object_get(root, "authorities");
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *a = json_array_get(arr, i);
        if (strcmp(json_string_value(json_object_get(a, "id")), id) == 0 &&
            json_is_integer(json_object_get(a, "signed_until")))
            v = (int64_t)json_integer_value(json_object_get(a, "signed_until"));
    }
    json_decref(root);
    return v;
}

static int64_t sign_ttl(sg_ca *ca, int64_t ttl)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    sg_der spki = spki_of(k);
    sg_ca_svid_params p = {.spiffe_id = "spiffe://example.org/w", .ttl_s = ttl};
    sg_ca_chain ch = {0};
    sg_err err;
    int64_t na;

    if (sg_ca_sign_svid(ca, &p, spki.data, spki.len, &ch, &err) != 0)
        SG__FAIL("sign: %s", err.msg);
    na = ch.not_after;
    sg_ca_chain_cleanup(&ch);
    sg_der_cleanup(&spki);
    EVP_PKEY_free(k);
    return na;
}

TEST(ca_signed_until_reserved_ahead_and_kept_across_restart)
{
    char dir[256], path[300], a[SG_CA_AUTHORITY_ID_MAX + 1], *before, *after;
    sg_ca *ca;
    sg_ca_authority info;
    int64_t t0 = (int64_t)time(NULL), na, mark;
    sg_err err;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    snprintf(path, sizeof path, "%s/ca-slots.json", dir);
    /* max_svid_ttl_s 10, but an entry asks for 20 minutes. */
    ca = new_ca_opts(7200, 10, dir, false);
    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    ASSERT_EQ(mark_of(dir, a), 0);
    na = sign_ttl(ca, 1200);
    mark = mark_of(dir, a);
    /* Written before the SVID was handed out, with room for 2 x the TTL. */
    ASSERT(mark >= na);
    ASSERT(mark >= t0 + 2400 && mark <= (int64_t)time(NULL) + 2400);
    /* Shorter SVIDs under the mark do not write the file again. */
    before = slurp(path);
    sign_ttl(ca, 60);
    sign_ttl(ca, 1200);
    after = slurp(path);
    ASSERT_STREQ(before, after);
    free(before);
    free(after);
    sg_ca_free(ca);

    /* After a restart the mark, not max_svid_ttl_s, bounds what it signed. */
    ca = new_ca_opts(7200, 10, dir, false);
    ASSERT_STREQ(id_in(ca, SG_CA_ACTIVE), a);
    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    ASSERT_OK(sg_ca_activate(ca, info.id, t0, NULL, &err));
    ASSERT_OK(sg_ca_taint(ca, a, t0, NULL, &err));
    ASSERT_EQ(sg_ca_revoke(ca, a, t0 + 60, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "may still have live SVIDs") != NULL);
    ASSERT_EQ(sg_ca_revoke(ca, a, na, NULL, &err), SG_EINVAL);
    sg_ca_free(ca);

    /* The mark survives a second restart and the taint with it. */
    ca = new_ca_opts(7200, 10, dir, false);
    ASSERT_EQ(mark_of(dir, a), mark);
    ASSERT_EQ(sg_ca_revoke(ca, a, mark - 1, NULL, &err), SG_EINVAL);
    ASSERT_OK(sg_ca_revoke(ca, a, mark, NULL, &err));
    ASSERT(!bundle_has(ca, a));
    sg_ca_free(ca);
}

TEST(ca_state_file_without_mark_falls_back_to_ttls)
{
    char dir[256], path[300], a[SG_CA_AUTHORITY_ID_MAX + 1], *text;
    sg_ca *ca;
    sg_ca_authority info;
    int64_t t0 = (int64_t)time(NULL);
    sg_err err;
    FILE *f;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    snprintf(path, sizeof path, "%s/ca-slots.json", dir);
    ca = new_ca_opts(3600, 10, dir, false);
    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    sg_ca_free(ca);
    /* A state file written before marks existed. */
    text = malloc(1000);
    snprintf(text, 1000,
             "{\"version\":1,\"bundle_sequence\":1,\"authorities\":[{\"id\":\"%s\","
             "\"state\":\"active\",\"tainted\":false,\"tainted_at\":0}]}",
             a);
    f = fopen(path, "w");
    ASSERT(f != NULL);
    fputs(text, f);
    fclose(f);
    free(text);
    ca = new_ca_opts(3600, 10, dir, false);
    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    ASSERT_OK(sg_ca_activate(ca, info.id, t0, NULL, &err));
    ASSERT_OK(sg_ca_taint(ca, a, t0, NULL, &err));
    ASSERT_EQ(sg_ca_revoke(ca, a, t0 + 5, NULL, &err), SG_EINVAL);
    ASSERT_OK(sg_ca_revoke(ca, a, t0 + 11, NULL, &err));
    sg_ca_free(ca);

    /* A bad mark is a clear error. */
    f = fopen(path, "w");
    ASSERT(f != NULL);
    fprintf(f, "{\"authorities\":[{\"id\":\"%s\",\"state\":\"active\",\"signed_until\":\"x\"}]}",
            info.id);
    fclose(f);
    {
        sg_ca_options o = {.trust_domain = "example.org",
                           .key_type = SG_KEY_EC_P256,
                           .ca_ttl_s = 3600,
                           .keys_dir = dir};
        sg_ca *bad = NULL;
        ASSERT_EQ(sg_ca_new(&bad, &o, &err), SG_ECONFIG);
        ASSERT(strstr(err.msg, "signed_until") != NULL);
    }
}

/* ---- UpstreamAuthority rotation, taint and revoke ---- */

/* A fresh upstream root (key + self-signed cert files) under tmpdir/name. */
static void make_root(const char *name, char *key, char *crt, size_t len)
{
    sg_ca_options o = {0};
    sg_ca *ca = NULL;
    sg_err err;
    char dir[256];

    snprintf(dir, sizeof dir, "%s/%s", sg_test_tmpdir(), name);
    o.trust_domain = "local";
    o.key_type = SG_KEY_EC_P256;
    o.ca_ttl_s = 86400;
    o.keys_dir = dir;
    if (sg_ca_new(&ca, &o, &err) != 0)
        SG__FAIL("upstream root: %s", err.msg);
    sg_ca_free(ca);
    snprintf(key, len, "%s/ca.key", dir);
    snprintf(crt, len, "%s/ca.crt", dir);
}

static void copy_file(const char *from, const char *to, bool append)
{
    char *s = slurp(from);
    FILE *f = fopen(to, append ? "a" : "w");

    ASSERT(f != NULL);
    fputs(s, f);
    fclose(f);
    free(s);
    chmod(to, 0600);
}

static void pem_skid(const char *path, char *out)
{
    char *pem = slurp(path);
    STACK_OF(X509) *sk = NULL;
    sg_der d = {0};

    ASSERT_OK(sg_x509_parse_pem_chain(pem, strlen(pem), &sk, NULL));
    ASSERT_OK(sg_x509_to_der(sk_X509_value(sk, 0), &d, NULL));
    skid_of(&d, out);
    sg_der_cleanup(&d);
    sk_X509_pop_free(sk, X509_free);
    free(pem);
}

typedef struct up_env {
    char dir[300], key[300], crt[300], bundle[300];
    char k1[300], c1[300], k2[300], c2[300];
    char r1[SG_CA_AUTHORITY_ID_MAX + 1], r2[SG_CA_AUTHORITY_ID_MAX + 1];
} up_env;

static void up_env_init(up_env *e)
{
    const char *t = sg_test_tmpdir();

    snprintf(e->dir, sizeof e->dir, "%s/keys", t);
    snprintf(e->key, sizeof e->key, "%s/upstream.key", t);
    snprintf(e->crt, sizeof e->crt, "%s/upstream.crt", t);
    snprintf(e->bundle, sizeof e->bundle, "%s/upstream-bundle.pem", t);
    make_root("root1", e->k1, e->c1, sizeof e->k1);
    make_root("root2", e->k2, e->c2, sizeof e->k2);
    pem_skid(e->c1, e->r1);
    pem_skid(e->c2, e->r2);
    ASSERT(strcmp(e->r1, e->r2) != 0);
    copy_file(e->k1, e->key, false);
    copy_file(e->c1, e->crt, false);
    copy_file(e->c1, e->bundle, false);
}

static int up_ca(const up_env *e, int64_t max_svid_ttl, sg_ca **out, sg_err *err)
{
    sg_ca_options o = {0};

    o.trust_domain = "example.org";
    o.key_type = SG_KEY_EC_P256;
    o.ca_ttl_s = 3600;
    o.max_svid_ttl_s = max_svid_ttl;
    o.keys_dir = e->dir;
    o.upstream_key_file = e->key;
    o.upstream_cert_file = e->crt;
    o.upstream_bundle_file = e->bundle;
    *out = NULL;
    return sg_ca_new(out, &o, err);
}

TEST(ca_upstream_rotate_taint_revoke)
{
    up_env e;
    sg_ca *ca = NULL, *plain;
    char a[SG_CA_AUTHORITY_ID_MAX + 1], b[SG_CA_AUTHORITY_ID_MAX + 1],
        got[SG_CA_AUTHORITY_ID_MAX + 1];
    sg_ca_authority info;
    char **ids = NULL;
    size_t nids = 0;
    uint64_t seq;
    int64_t t0 = (int64_t)time(NULL);
    sg_err err;

    up_env_init(&e);
    if (up_ca(&e, 10, &ca, &err) != 0)
        SG__FAIL("sg_ca_new: %s", err.msg);
    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    ASSERT_EQ(bundle_len(ca), 1);
    ASSERT(bundle_has(ca, e.r1));
    sign_and_verify(ca, t0 + 1, got);
    ASSERT_STREQ(got, a);

    /* Refusals: no upstream, bad or unknown SKID, the active authority chains to it. */
    plain = new_ca_opts(3600, 10, NULL, false);
    ASSERT_EQ(sg_ca_upstream_taint(plain, e.r1, t0, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "no UpstreamAuthority") != NULL);
    ASSERT_EQ(sg_ca_upstream_revoke(plain, e.r1, t0, &err), SG_EINVAL);
    sg_ca_free(plain);
    ASSERT_EQ(sg_ca_upstream_taint(ca, "", t0, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "-subjectKeyID") != NULL);
    ASSERT_EQ(sg_ca_upstream_taint(ca, "xyz/../", t0, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "xyz/../") != NULL);
    ASSERT_EQ(sg_ca_upstream_taint(ca, "abcdef", t0, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "abcdef") != NULL && strstr(err.msg, e.r1) != NULL);
    ASSERT_EQ(sg_ca_upstream_taint(ca, a, t0, &err), SG_ENOENT); /* a local authority */
    ASSERT_EQ(sg_ca_upstream_taint(ca, e.r1, t0, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "active local authority") != NULL);
    ASSERT_EQ(sg_ca_upstream_revoke(ca, e.r1, t0, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "not tainted") != NULL);

    /* The operator installs a new upstream key; the bundle file holds both roots. */
    copy_file(e.k2, e.key, false);
    copy_file(e.c2, e.crt, false);
    copy_file(e.c2, e.bundle, true);
    seq = sg_ca_bundle_sequence(ca);
    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    snprintf(b, sizeof b, "%s", info.id);
    ASSERT_STREQ(info.upstream_id, e.r2);
    ASSERT_EQ(bundle_len(ca), 2);
    ASSERT(sg_ca_bundle_sequence(ca) > seq);
    ASSERT_EQ(sg_ca_upstream_taint(ca, e.r2, t0, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "prepared local authority") != NULL);
    ASSERT_OK(sg_ca_activate(ca, b, t0, NULL, &err));
    sign_and_verify(ca, t0 + 2, got);
    ASSERT_STREQ(got, b);
    ASSERT_EQ(sg_ca_upstream_taint(ca, e.r2, t0, &err), SG_EINVAL);

    /* Taint: every local authority under the old root is tainted. */
    seq = sg_ca_bundle_sequence(ca);
    ASSERT_OK(sg_ca_upstream_taint(ca, e.r1, t0 + 2, &err));
    ASSERT(sg_ca_bundle_sequence(ca) > seq);
    ASSERT_OK(sg_ca_tainted_ids(ca, &ids, &nids, NULL));
    ASSERT_EQ(nids, 1);
    ASSERT_STREQ(ids[0], a);
    sg_ca_ids_free(ids, nids);
    ASSERT_EQ(sg_ca_upstream_taint(ca, e.r1, t0 + 3, &err), SG_EEXIST);
    ASSERT(bundle_has(ca, e.r1));

    /* Revoke waits for the SVIDs signed under it (60 s TTL signed above). */
    ASSERT_EQ(sg_ca_upstream_revoke(ca, e.r1, t0 + 30, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "may still have live SVIDs") != NULL && strstr(err.msg, a) != NULL);
    seq = sg_ca_bundle_sequence(ca);
    ASSERT_OK(sg_ca_upstream_revoke(ca, e.r1, t0 + 70, &err));
    ASSERT(sg_ca_bundle_sequence(ca) > seq);
    ASSERT_EQ(bundle_len(ca), 1);
    ASSERT(!bundle_has(ca, e.r1));
    ASSERT(bundle_has(ca, e.r2));
    ASSERT_EQ(auths(ca, &info, 1), 1);
    ASSERT_STREQ(info.id, b);
    ASSERT_EQ(sg_ca_upstream_revoke(ca, e.r1, t0 + 71, &err), SG_ENOENT);
    ASSERT_EQ(sg_ca_upstream_taint(ca, e.r1, t0 + 71, &err), SG_EEXIST);
    sign_and_verify(ca, (int64_t)time(NULL) + 1, got);
    sg_ca_free(ca);

    /* A restart with the old root still in the bundle file does not bring it back. */
    if (up_ca(&e, 10, &ca, &err) != 0)
        SG__FAIL("restart: %s", err.msg);
    ASSERT_EQ(bundle_len(ca), 1);
    ASSERT(bundle_has(ca, e.r2));
    ASSERT_STREQ(id_in(ca, SG_CA_ACTIVE), b);
    sg_ca_free(ca);

    /* Going back to the revoked upstream key is refused with a clear error. */
    copy_file(e.k1, e.key, false);
    copy_file(e.c1, e.crt, false);
    ASSERT_EQ(up_ca(&e, 10, &ca, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "revoked") != NULL && strstr(err.msg, e.r1) != NULL);
}

TEST(ca_upstream_replaced_before_restart_keeps_old_authority)
{
    up_env e;
    sg_ca *ca = NULL;
    char a[SG_CA_AUTHORITY_ID_MAX + 1], got[SG_CA_AUTHORITY_ID_MAX + 1];
    sg_ca_authority v[4];
    char **ids = NULL;
    size_t nids = 0;
    int64_t t0 = (int64_t)time(NULL);
    sg_err err;

    up_env_init(&e);
    if (up_ca(&e, 10, &ca, &err) != 0)
        SG__FAIL("sg_ca_new: %s", err.msg);
    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    sg_ca_free(ca);
    copy_file(e.k2, e.key, false);
    copy_file(e.c2, e.crt, false);
    copy_file(e.c2, e.bundle, true);
    /* The authority under the old upstream key stays, as old, so it can be tainted. */
    if (up_ca(&e, 10, &ca, &err) != 0)
        SG__FAIL("restart: %s", err.msg);
    ASSERT_EQ(auths(ca, v, 4), 2);
    ASSERT_STREQ(id_in(ca, SG_CA_OLD), a);
    ASSERT_STREQ(v[1].upstream_id, e.r2);
    sign_and_verify(ca, t0 + 1, got);
    ASSERT_STREQ(got, v[1].id);
    ASSERT_OK(sg_ca_upstream_taint(ca, e.r1, t0, &err));
    ASSERT_OK(sg_ca_tainted_ids(ca, &ids, &nids, NULL));
    ASSERT_EQ(nids, 1);
    ASSERT_STREQ(ids[0], a);
    sg_ca_ids_free(ids, nids);
    sg_ca_free(ca);
}

TEST(ca_upstream_schedule_uses_replaced_files)
{
    up_env e;
    sg_ca *ca = NULL;
    sg_ca_authority v[4];
    int64_t t0 = (int64_t)time(NULL);
    bool ch = false;
    sg_err err;

    up_env_init(&e);
    if (up_ca(&e, 10, &ca, &err) != 0)
        SG__FAIL("sg_ca_new: %s", err.msg);
    copy_file(e.k2, e.key, false);
    copy_file(e.c2, e.crt, false);
    copy_file(e.c2, e.bundle, true);
    /* The scheduled prepare (under ca_ttl/2 left) signs with the new upstream key. */
    ASSERT_OK(sg_ca_rotate(ca, t0 + 1900, &ch, &err));
    ASSERT(ch);
    ASSERT_EQ(auths(ca, v, 4), 2);
    ASSERT_EQ(v[1].state, SG_CA_PREPARED);
    ASSERT_STREQ(v[1].upstream_id, e.r2);
    ASSERT_EQ(bundle_len(ca), 2);
    /* Unreadable upstream files: an explicit prepare says why, the schedule keeps going. */
    write_file(e.crt, "not a certificate");
    ASSERT(sg_ca_prepare(ca, t0, NULL, &err) < 0);
    ASSERT(strstr(err.msg, e.crt) != NULL);
    ASSERT_OK(sg_ca_rotate(ca, t0 + 3100, &ch, &err));
    ASSERT_EQ(v[1].state, SG_CA_PREPARED);
    ASSERT_STREQ(id_in(ca, SG_CA_ACTIVE), v[1].id);
    sg_ca_free(ca);
}

/*
 * ca-slots.json as written before the slot machine moved to server/slots.c
 * (same keys, same order): a server on such a data_dir keeps its
 * authorities, their taint, the bundle sequence and each high-water mark.
 * The entry repeated at the end is skipped.
 */
TEST(ca_reads_state_file_of_earlier_versions)
{
    char dir[300], path[500], text[2048], a[SG_CA_AUTHORITY_ID_MAX + 1];
    char b[SG_CA_AUTHORITY_ID_MAX + 1];
    int64_t t0 = (int64_t)time(NULL);
    sg_ca_authority v[16], info;
    sg_ca *ca;
    sg_err err;

    snprintf(dir, sizeof dir, "%s/keys", sg_test_tmpdir());
    ca = new_ca_opts(3600, 60, dir, false);
    snprintf(a, sizeof a, "%s", id_in(ca, SG_CA_ACTIVE));
    ASSERT_OK(sg_ca_prepare(ca, t0, &info, &err));
    snprintf(b, sizeof b, "%s", info.id);
    sg_ca_free(ca);
    snprintf(text, sizeof text,
             "{\n  \"version\": 1,\n  \"bundle_sequence\": 41,\n  \"authorities\": [\n"
             "    {\n      \"id\": \"%s\",\n      \"state\": \"old\",\n      \"tainted\": true,\n"
             "      \"tainted_at\": %lld,\n      \"signed_until\": %lld\n    },\n"
             "    {\n      \"id\": \"%s\",\n      \"state\": \"active\",\n"
             "      \"tainted\": false,\n      \"tainted_at\": 0,\n      \"signed_until\": 0\n"
             "    },\n"
             "    {\n      \"id\": \"%s\",\n      \"state\": \"prepared\",\n"
             "      \"tainted\": false,\n      \"tainted_at\": 0,\n      \"signed_until\": 0\n"
             "    }\n  ],\n  \"upstream_authorities\": []\n}",
             a, (long long)t0, (long long)(t0 + 1000), b, a);
    snprintf(path, sizeof path, "%s/ca-slots.json", dir);
    write_file(path, text);

    ca = new_ca_opts(3600, 60, dir, false);
    ASSERT_EQ(auths(ca, v, 16), 2);
    ASSERT_STREQ(v[0].id, a);
    ASSERT_EQ(v[0].state, SG_CA_OLD);
    ASSERT(v[0].tainted);
    ASSERT_EQ(v[0].tainted_at, t0);
    ASSERT_STREQ(v[1].id, b);
    ASSERT_EQ(v[1].state, SG_CA_ACTIVE);
    ASSERT_EQ(sg_ca_bundle_sequence(ca), 41);
    ASSERT(bundle_has(ca, a) && bundle_has(ca, b));
    /* The mark read from the file holds revoke back past tainted_at + max TTL. */
    ASSERT_EQ(sg_ca_revoke(ca, a, t0 + 61, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "may still have live SVIDs") != NULL);
    ASSERT_OK(sg_ca_revoke(ca, a, t0 + 1000, NULL, &err));
    sg_ca_free(ca);
}
