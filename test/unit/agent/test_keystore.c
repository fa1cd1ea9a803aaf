/*
 * Unit tests for the agent keystore: round trips on disk, file modes,
 * memory mode, and stored SVIDs that must be ignored.
 */
#include "agent/keystore.h"
#include "common/fsutil.h"
#include "common/key.h"
#include "test/runner.h"

#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define AGENT_ID "spiffe://example.org/spire/agent/join_token/abc"

/* A certificate for key signed by signer (self-signed when signer is NULL). */
static X509 *make_cert(EVP_PKEY *key, EVP_PKEY *signer, X509 *issuer, const char *uri,
                       long not_before_off, long not_after_off, bool ca)
{
    X509 *x = X509_new();
    ASSERT(x != NULL);
    ASSERT(X509_set_version(x, 2) == 1);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
    ASSERT(X509_gmtime_adj(X509_getm_notBefore(x), not_before_off) != NULL);
    ASSERT(X509_gmtime_adj(X509_getm_notAfter(x), not_after_off) != NULL);
    ASSERT(X509_set_pubkey(x, key) == 1);
    X509_NAME *name = X509_NAME_new();
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"test", -1, -1, 0);
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name);
    X509_NAME_free(name);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer != NULL ? issuer : x, x, NULL, NULL, 0);
    if (ca) {
        X509_EXTENSION *ext =
            X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints, "critical,CA:TRUE");
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    } else {
        X509_EXTENSION *ext =
            X509V3_EXT_conf_nid(NULL, &ctx, NID_key_usage, "critical,digitalSignature");
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (uri != NULL) {
        char san[512];
        snprintf(san, sizeof(san), "URI:%s", uri);
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, san);
        ASSERT(ext != NULL);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    ASSERT(X509_sign(x, signer != NULL ? signer : key, EVP_sha256()) > 0);
    return x;
}

typedef struct fixture {
    EVP_PKEY *ca_key, *key;
    sg_der ca_der, leaf_der;
} fixture;

static void fixture_make(fixture *f, const char *uri, long nb, long na)
{
    sg_err err;
    sg_err_clear(&err);
    memset(f, 0, sizeof(*f));
    ASSERT_OK(sg_key_generate(SG_KEY_EC_P256, &f->ca_key, &err));
    ASSERT_OK(sg_key_generate(SG_KEY_EC_P256, &f->key, &err));
    X509 *ca = make_cert(f->ca_key, NULL, NULL, "spiffe://example.org", -60, 86400, true);
    X509 *leaf = make_cert(f->key, f->ca_key, ca, uri, nb, na, false);
    ASSERT_OK(sg_x509_to_der(ca, &f->ca_der, &err));
    ASSERT_OK(sg_x509_to_der(leaf, &f->leaf_der, &err));
    X509_free(ca);
    X509_free(leaf);
}

static void fixture_free(fixture *f)
{
    EVP_PKEY_free(f->ca_key);
    EVP_PKEY_free(f->key);
    sg_der_cleanup(&f->ca_der);
    sg_der_cleanup(&f->leaf_der);
}

static void save_fixture(const sg_keystore *ks, fixture *f)
{
    sg_der chain[2] = {f->leaf_der, f->ca_der};
    sg_keystore_svid s;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_keystore_svid_make(f->key, chain, 2, &s, &err));
    ASSERT_OK(sg_keystore_save_svid(ks, &s, &err));
    sg_keystore_svid_cleanup(&s);
    ASSERT_OK(sg_keystore_save_bundle(ks, &f->ca_der, 1, &err));
}

static char *path_in(const char *dir, const char *name)
{
    char *p = sg_fs_join(dir, name);
    ASSERT(p != NULL);
    return p;
}

TEST(keystore_disk_round_trip)
{
    const char *dir = sg_test_tmpdir();
    char sub[512];
    snprintf(sub, sizeof(sub), "%s/keys/agent", dir);
    sg_keystore ks;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_keystore_init(&ks, sub, &err));
    ASSERT(sg_keystore_on_disk(&ks));
    fixture f;
    fixture_make(&f, AGENT_ID, -60, 3600);
    save_fixture(&ks, &f);

    struct stat sb;
    char *kp = path_in(sub, SG_KEYSTORE_KEY_FILE);
    ASSERT_OK(stat(kp, &sb));
    ASSERT_EQ(sb.st_mode & 0777, 0600);
    free(kp);

    sg_keystore_svid s;
    ASSERT_OK(sg_keystore_load_svid(&ks, 0, &s, &err));
    ASSERT_STREQ(s.spiffe_id, AGENT_ID);
    ASSERT_EQ(s.nchain, 2);
    ASSERT_EQ(s.chain[0].len, f.leaf_der.len);
    ASSERT(memcmp(s.chain[0].data, f.leaf_der.data, f.leaf_der.len) == 0);
    int64_t now = (int64_t)time(NULL);
    ASSERT(s.not_after > now + 3500 && s.not_after <= now + 3601);
    ASSERT(s.not_before < now && s.not_before >= now - 120);
    ASSERT(EVP_PKEY_eq(s.key, f.key) == 1);
    sg_keystore_svid_cleanup(&s);

    sg_der *certs = NULL;
    size_t n = 0;
    ASSERT_OK(sg_keystore_load_bundle(&ks, &certs, &n, &err));
    ASSERT_EQ(n, 1);
    ASSERT_EQ(certs[0].len, f.ca_der.len);
    ASSERT(memcmp(certs[0].data, f.ca_der.data, f.ca_der.len) == 0);
    sg_der_cleanup(&certs[0]);
    free(certs);

    fixture_free(&f);
    sg_keystore_cleanup(&ks);
}

TEST(keystore_memory_stores_nothing)
{
    sg_keystore ks;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_keystore_init(&ks, NULL, &err));
    ASSERT(!sg_keystore_on_disk(&ks));
    fixture f;
    fixture_make(&f, AGENT_ID, -60, 3600);
    save_fixture(&ks, &f);
    sg_keystore_svid s;
    ASSERT_EQ(sg_keystore_load_svid(&ks, 0, &s, &err), SG_ENOENT);
    sg_der *certs = NULL;
    size_t n = 0;
    ASSERT_EQ(sg_keystore_load_bundle(&ks, &certs, &n, &err), SG_ENOENT);
    ASSERT_OK(sg_keystore_remove_svid(&ks, &err));
    fixture_free(&f);
    sg_keystore_cleanup(&ks);
}

TEST(keystore_empty_directory_has_nothing)
{
    sg_keystore ks;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_keystore_init(&ks, sg_test_tmpdir(), &err));
    sg_keystore_svid s;
    ASSERT_EQ(sg_keystore_load_svid(&ks, 0, &s, &err), SG_ENOENT);
    sg_der *certs = NULL;
    size_t n = 0;
    ASSERT_EQ(sg_keystore_load_bundle(&ks, &certs, &n, &err), SG_ENOENT);
    sg_keystore_cleanup(&ks);
}

TEST(keystore_ignores_expired_svid)
{
    sg_keystore ks;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_keystore_init(&ks, sg_test_tmpdir(), &err));
    fixture f;
    fixture_make(&f, AGENT_ID, -7200, -60);
    save_fixture(&ks, &f);
    sg_keystore_svid s;
    ASSERT_EQ(sg_keystore_load_svid(&ks, 0, &s, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "expired") != NULL);
    fixture_free(&f);

    /* Valid now, but expired at a later "now". */
    fixture_make(&f, AGENT_ID, -60, 600);
    save_fixture(&ks, &f);
    ASSERT_OK(sg_keystore_load_svid(&ks, 0, &s, &err));
    sg_keystore_svid_cleanup(&s);
    ASSERT_EQ(sg_keystore_load_svid(&ks, (int64_t)time(NULL) + 3600, &s, &err), SG_ENOENT);
    fixture_free(&f);
    sg_keystore_cleanup(&ks);
}

TEST(keystore_ignores_unparsable_svid)
{
    const char *dir = sg_test_tmpdir();
    sg_keystore ks;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_keystore_init(&ks, dir, &err));
    fixture f;
    fixture_make(&f, AGENT_ID, -60, 3600);
    save_fixture(&ks, &f);
    char *cp = path_in(dir, SG_KEYSTORE_SVID_FILE);
    const char *junk =
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n";
    ASSERT_OK(sg_fs_write_atomic(cp, junk, strlen(junk), 0644, &err));
    sg_keystore_svid s;
    ASSERT_EQ(sg_keystore_load_svid(&ks, 0, &s, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "unusable") != NULL);

    /* A certificate file with no key next to it. */
    save_fixture(&ks, &f);
    char *kp = path_in(dir, SG_KEYSTORE_KEY_FILE);
    ASSERT_OK(unlink(kp));
    ASSERT_EQ(sg_keystore_load_svid(&ks, 0, &s, &err), SG_ENOENT);
    free(kp);
    free(cp);
    fixture_free(&f);
    sg_keystore_cleanup(&ks);
}

TEST(keystore_ignores_svid_that_does_not_match_key)
{
    const char *dir = sg_test_tmpdir();
    sg_keystore ks;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_keystore_init(&ks, dir, &err));
    fixture f;
    fixture_make(&f, AGENT_ID, -60, 3600);
    save_fixture(&ks, &f);
    EVP_PKEY *other = NULL;
    ASSERT_OK(sg_key_generate(SG_KEY_EC_P256, &other, &err));
    char *kp = path_in(dir, SG_KEYSTORE_KEY_FILE);
    ASSERT_OK(sg_key_write_file(kp, other, &err));
    sg_keystore_svid s;
    ASSERT_EQ(sg_keystore_load_svid(&ks, 0, &s, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "does not match") != NULL);
    EVP_PKEY_free(other);
    free(kp);
    fixture_free(&f);
    sg_keystore_cleanup(&ks);
}

TEST(keystore_svid_make_requires_spiffe_id)
{
    fixture f;
    fixture_make(&f, NULL, -60, 3600);
    sg_keystore_svid s;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_ERR(sg_keystore_svid_make(f.key, &f.leaf_der, 1, &s, &err));
    ASSERT(err.msg[0] != '\0');
    ASSERT_EQ(sg_keystore_svid_make(f.key, NULL, 0, &s, &err), SG_EINVAL);
    fixture_free(&f);
}

TEST(keystore_remove_svid_forgets_identity)
{
    const char *dir = sg_test_tmpdir();
    sg_keystore ks;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_keystore_init(&ks, dir, &err));
    fixture f;
    fixture_make(&f, AGENT_ID, -60, 3600);
    save_fixture(&ks, &f);
    ASSERT_OK(sg_keystore_remove_svid(&ks, &err));
    sg_keystore_svid s;
    ASSERT_EQ(sg_keystore_load_svid(&ks, 0, &s, &err), SG_ENOENT);
    /* Removing twice is fine; the bundle stays. */
    ASSERT_OK(sg_keystore_remove_svid(&ks, &err));
    sg_der *certs = NULL;
    size_t n = 0;
    ASSERT_OK(sg_keystore_load_bundle(&ks, &certs, &n, &err));
    ASSERT_EQ(n, 1);
    sg_der_cleanup(&certs[0]);
    free(certs);
    fixture_free(&f);
    sg_keystore_cleanup(&ks);
}
