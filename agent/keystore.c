/*
 * Persistence of the agent's key, SVID chain and trust bundle for
 * KeyManager "disk"; a memory keystore stores nothing. A stored SVID that
 * no longer parses, has expired or does not match its key is ignored with
 * a warning so the agent falls back to attestation.
 */
#include "agent/keystore.h"

#include "common/fsutil.h"
#include "common/key.h"
#include "common/log.h"

#include <errno.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KEYSTORE_MAX_FILE (1024 * 1024)

int sg_keystore_init(sg_keystore *ks, const char *dir, sg_err *err)
{
    ks->dir = NULL;
    if (dir == NULL)
        return 0;
    if (dir[0] == '\0')
        return sg_err_set(err, SG_ECONFIG, "KeyManager \"disk\": empty directory");
    int rc = sg_fs_mkdir_p(dir, 0700, err);
    if (rc < 0)
        return rc;
    ks->dir = strdup(dir);
    if (ks->dir == NULL)
        return sg_err_set(err, SG_ENOMEM, "keystore: out of memory");
    return 0;
}

void sg_keystore_cleanup(sg_keystore *ks)
{
    if (ks == NULL)
        return;
    free(ks->dir);
    ks->dir = NULL;
}

bool sg_keystore_on_disk(const sg_keystore *ks)
{
    return ks != NULL && ks->dir != NULL;
}

void sg_keystore_svid_cleanup(sg_keystore_svid *s)
{
    if (s == NULL)
        return;
    EVP_PKEY_free(s->key);
    for (size_t i = 0; i < s->nchain; i++)
        sg_der_cleanup(&s->chain[i]);
    free(s->chain);
    memset(s, 0, sizeof(*s));
}

static int64_t asn1_time_unix(const ASN1_TIME *t)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

static int der_array_copy(const sg_der *src, size_t n, sg_der **out, sg_err *err)
{
    sg_der *a = calloc(n ? n : 1, sizeof(*a));
    if (a == NULL)
        return sg_err_set(err, SG_ENOMEM, "keystore: out of memory");
    for (size_t i = 0; i < n; i++) {
        a[i].data = malloc(src[i].len ? src[i].len : 1);
        if (a[i].data == NULL) {
            for (size_t j = 0; j < i; j++)
                sg_der_cleanup(&a[j]);
            free(a);
            return sg_err_set(err, SG_ENOMEM, "keystore: out of memory");
        }
        memcpy(a[i].data, src[i].data, src[i].len);
        a[i].len = src[i].len;
    }
    *out = a;
    return 0;
}

static void der_array_free(sg_der *a, size_t n)
{
    for (size_t i = 0; a != NULL && i < n; i++)
        sg_der_cleanup(&a[i]);
    free(a);
}

int sg_keystore_svid_make(EVP_PKEY *key, const sg_der *chain, size_t nchain, sg_keystore_svid *out,
                          sg_err *err)
{
    if (key == NULL || chain == NULL || nchain == 0)
        return sg_err_set(err, SG_EINVAL, "agent SVID: no key or empty certificate chain");
    X509 *leaf = NULL;
    int rc = sg_x509_from_der(chain[0].data, chain[0].len, &leaf, err);
    if (rc < 0)
        return rc;
    sg_spiffeid id;
    rc = sg_x509_spiffeid(leaf, &id, err);
    if (rc < 0) {
        X509_free(leaf);
        return rc;
    }
    if (X509_check_private_key(leaf, key) != 1) {
        X509_free(leaf);
        return sg_err_ssl(err, "agent SVID for %.100s does not match its private key", id.str);
    }
    sg_keystore_svid s;
    memset(&s, 0, sizeof(s));
    s.not_before = asn1_time_unix(X509_get0_notBefore(leaf));
    s.not_after = sg_x509_not_after(leaf);
    X509_free(leaf);
    snprintf(s.spiffe_id, sizeof(s.spiffe_id), "%s", id.str);
    rc = der_array_copy(chain, nchain, &s.chain, err);
    if (rc < 0)
        return rc;
    s.nchain = nchain;
    if (EVP_PKEY_up_ref(key) != 1) {
        der_array_free(s.chain, nchain);
        return sg_err_ssl(err, "keystore: cannot reference the agent key");
    }
    s.key = key;
    *out = s;
    return 0;
}

/* Converts a PEM certificate list into a DER array. */
static int pem_to_der_array(const char *pem, size_t len, sg_der **out, size_t *n, sg_err *err)
{
    STACK_OF(X509) *certs = NULL;
    int rc = sg_x509_parse_pem_chain(pem, len, &certs, err);
    if (rc < 0)
        return rc;
    int count = sk_X509_num(certs);
    sg_der *a = calloc(count > 0 ? (size_t)count : 1, sizeof(*a));
    if (a == NULL) {
        sk_X509_pop_free(certs, X509_free);
        return sg_err_set(err, SG_ENOMEM, "keystore: out of memory");
    }
    for (int i = 0; i < count; i++) {
        rc = sg_x509_to_der(sk_X509_value(certs, i), &a[i], err);
        if (rc < 0) {
            der_array_free(a, (size_t)i);
            sk_X509_pop_free(certs, X509_free);
            return rc;
        }
    }
    sk_X509_pop_free(certs, X509_free);
    *out = a;
    *n = (size_t)count;
    return 0;
}

int sg_keystore_load_svid(const sg_keystore *ks, int64_t now, sg_keystore_svid *out, sg_err *err)
{
    if (!sg_keystore_on_disk(ks))
        return sg_err_set(err, SG_ENOENT, "no stored agent SVID (KeyManager \"memory\")");
    char *kpath = sg_fs_join(ks->dir, SG_KEYSTORE_KEY_FILE);
    char *cpath = sg_fs_join(ks->dir, SG_KEYSTORE_SVID_FILE);
    uint8_t *pem = NULL;
    size_t pemlen = 0;
    EVP_PKEY *key = NULL;
    sg_der *chain = NULL;
    size_t nchain = 0;
    sg_err e;
    sg_err_clear(&e);
    int rc;
    if (kpath == NULL || cpath == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "keystore: out of memory");
        goto done;
    }
    if (access(cpath, F_OK) != 0 && access(kpath, F_OK) != 0) {
        rc = sg_err_set(err, SG_ENOENT, "no stored agent SVID in %.200s", ks->dir);
        goto done;
    }
    rc = sg_fs_read_file(cpath, KEYSTORE_MAX_FILE, &pem, &pemlen, &e);
    if (rc == 0)
        rc = pem_to_der_array((const char *)pem, pemlen, &chain, &nchain, &e);
    if (rc == 0)
        rc = sg_key_read_file(kpath, &key, &e);
    sg_keystore_svid s;
    memset(&s, 0, sizeof(s));
    if (rc == 0)
        rc = sg_keystore_svid_make(key, chain, nchain, &s, &e);
    if (rc < 0) {
        sg_log_warn("ignoring the stored agent SVID in %s: %s", ks->dir, e.msg);
        rc = sg_err_set(err, SG_ENOENT, "stored agent SVID unusable: %.200s", e.msg);
        goto done;
    }
    if (now <= 0)
        now = (int64_t)time(NULL);
    if (s.not_after <= now) {
        sg_log_warn("ignoring the stored agent SVID %s: expired", s.spiffe_id);
        rc = sg_err_set(err, SG_ENOENT, "stored agent SVID %.200s has expired", s.spiffe_id);
        sg_keystore_svid_cleanup(&s);
        goto done;
    }
    *out = s;
    rc = 0;
done:
    EVP_PKEY_free(key);
    der_array_free(chain, nchain);
    free(pem);
    free(kpath);
    free(cpath);
    return rc;
}

int sg_keystore_save_svid(const sg_keystore *ks, const sg_keystore_svid *svid, sg_err *err)
{
    if (!sg_keystore_on_disk(ks))
        return 0;
    if (svid == NULL || svid->key == NULL || svid->nchain == 0)
        return sg_err_set(err, SG_EINVAL, "keystore: no SVID to save");
    char *kpath = sg_fs_join(ks->dir, SG_KEYSTORE_KEY_FILE);
    char *cpath = sg_fs_join(ks->dir, SG_KEYSTORE_SVID_FILE);
    char *pem = NULL;
    int rc;
    if (kpath == NULL || cpath == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "keystore: out of memory");
        goto done;
    }
    rc = sg_x509_der_list_to_pem(svid->chain, svid->nchain, &pem, err);
    if (rc < 0)
        goto done;
    /* The key goes first: a crash between the two writes leaves a key and
     * certificate that do not match, which load detects and ignores. */
    rc = sg_key_write_file(kpath, svid->key, err);
    if (rc < 0)
        goto done;
    rc = sg_fs_write_atomic(cpath, pem, strlen(pem), 0644, err);
done:
    free(pem);
    free(kpath);
    free(cpath);
    return rc;
}

static int unlink_if_present(const char *dir, const char *name, sg_err *err)
{
    char *path = sg_fs_join(dir, name);
    if (path == NULL)
        return sg_err_set(err, SG_ENOMEM, "keystore: out of memory");
    int rc = 0;
    if (unlink(path) != 0 && errno != ENOENT)
        rc = sg_err_sys(err, "cannot remove %.200s", path);
    free(path);
    return rc;
}

int sg_keystore_remove_svid(const sg_keystore *ks, sg_err *err)
{
    if (!sg_keystore_on_disk(ks))
        return 0;
    int rc = unlink_if_present(ks->dir, SG_KEYSTORE_SVID_FILE, err);
    if (rc == 0)
        rc = unlink_if_present(ks->dir, SG_KEYSTORE_KEY_FILE, err);
    return rc;
}

int sg_keystore_load_bundle(const sg_keystore *ks, sg_der **certs, size_t *n, sg_err *err)
{
    if (!sg_keystore_on_disk(ks))
        return sg_err_set(err, SG_ENOENT, "no stored bundle (KeyManager \"memory\")");
    char *path = sg_fs_join(ks->dir, SG_KEYSTORE_BUNDLE_FILE);
    if (path == NULL)
        return sg_err_set(err, SG_ENOMEM, "keystore: out of memory");
    int rc;
    if (access(path, F_OK) != 0) {
        rc = sg_err_set(err, SG_ENOENT, "no stored bundle in %.200s", ks->dir);
        free(path);
        return rc;
    }
    uint8_t *pem = NULL;
    size_t len = 0;
    rc = sg_fs_read_file(path, KEYSTORE_MAX_FILE, &pem, &len, err);
    if (rc == 0)
        rc = pem_to_der_array((const char *)pem, len, certs, n, err);
    free(pem);
    free(path);
    return rc;
}

int sg_keystore_save_bundle(const sg_keystore *ks, const sg_der *certs, size_t n, sg_err *err)
{
    if (!sg_keystore_on_disk(ks))
        return 0;
    if (certs == NULL || n == 0)
        return sg_err_set(err, SG_EINVAL, "keystore: empty bundle");
    char *path = sg_fs_join(ks->dir, SG_KEYSTORE_BUNDLE_FILE);
    if (path == NULL)
        return sg_err_set(err, SG_ENOMEM, "keystore: out of memory");
    char *pem = NULL;
    int rc = sg_x509_der_list_to_pem(certs, n, &pem, err);
    if (rc == 0)
        rc = sg_fs_write_atomic(path, pem, strlen(pem), 0644, err);
    free(pem);
    free(path);
    return rc;
}
