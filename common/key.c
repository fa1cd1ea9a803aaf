/*
 * Key types, key generation and key encodings on OpenSSL 3 EVP_PKEY.
 * Private key bytes only ever live in buffers that are wiped before free.
 */
#include "common/key.h"

#include "common/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_FILE_MAX (64 * 1024) /* larger than any PEM key we accept */

static const struct {
    sg_key_type type;
    const char *name;
} key_types[] = {
    {SG_KEY_EC_P256, "ec-p256"},
    {SG_KEY_EC_P384, "ec-p384"},
    {SG_KEY_RSA_2048, "rsa-2048"},
    {SG_KEY_RSA_4096, "rsa-4096"},
};

int sg_key_type_parse(const char *s, sg_key_type *out, sg_err *err)
{
    if (s == NULL)
        return sg_err_set(err, SG_EINVAL, "key type is missing");
    for (size_t i = 0; i < sizeof key_types / sizeof key_types[0]; i++) {
        if (strcmp(s, key_types[i].name) == 0) {
            *out = key_types[i].type;
            return 0;
        }
    }
    return sg_err_set(
        err, SG_EINVAL,
        "unknown key type \"%.64s\" (expected ec-p256, ec-p384, rsa-2048 or rsa-4096)", s);
}

const char *sg_key_type_name(sg_key_type t)
{
    for (size_t i = 0; i < sizeof key_types / sizeof key_types[0]; i++) {
        if (key_types[i].type == t)
            return key_types[i].name;
    }
    return "unknown";
}

int sg_key_generate(sg_key_type t, EVP_PKEY **out, sg_err *err)
{
    EVP_PKEY *k = NULL;

    switch (t) {
    case SG_KEY_EC_P256:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        break;
    case SG_KEY_EC_P384:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
        break;
    case SG_KEY_RSA_2048:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
        break;
    case SG_KEY_RSA_4096:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)4096);
        break;
    default:
        return sg_err_set(err, SG_EINVAL, "unknown key type %d", (int)t);
    }
    if (k == NULL)
        return sg_err_ssl(err, "generating %s key", sg_key_type_name(t));
    *out = k;
    return 0;
}

int sg_key_to_pkcs8_der(EVP_PKEY *key, uint8_t **der, size_t *len, sg_err *err)
{
    PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(key);
    unsigned char *buf = NULL;
    int n;

    if (p8 == NULL)
        return sg_err_ssl(err, "encoding private key as PKCS#8");
    n = i2d_PKCS8_PRIV_KEY_INFO(p8, &buf);
    PKCS8_PRIV_KEY_INFO_free(p8);
    if (n <= 0)
        return sg_err_ssl(err, "encoding private key as PKCS#8");
    *der = buf;
    *len = (size_t)n;
    return 0;
}

int sg_key_to_spki_der(EVP_PKEY *key, uint8_t **der, size_t *len, sg_err *err)
{
    unsigned char *buf = NULL;
    int n = i2d_PUBKEY(key, &buf);

    if (n <= 0)
        return sg_err_ssl(err, "encoding public key as SubjectPublicKeyInfo");
    *der = buf;
    *len = (size_t)n;
    return 0;
}

int sg_key_to_pem(EVP_PKEY *key, char **pem, sg_err *err)
{
    BIO *b = BIO_new(BIO_s_secmem());
    char *data, *s;
    long n;

    if (b == NULL)
        return sg_err_ssl(err, "allocating PEM buffer");
    if (!PEM_write_bio_PKCS8PrivateKey(b, key, NULL, NULL, 0, NULL, NULL)) {
        BIO_free(b);
        return sg_err_ssl(err, "encoding private key as PEM");
    }
    n = BIO_get_mem_data(b, &data);
    s = malloc((size_t)n + 1);
    if (s == NULL) {
        BIO_free(b);
        return sg_err_set(err, SG_ENOMEM, "out of memory encoding private key");
    }
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    BIO_free(b); /* secure-heap BIO: wiped on free */
    *pem = s;
    return 0;
}

void sg_key_pem_free(char *pem)
{
    if (pem == NULL)
        return;
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
}

int sg_key_write_file(const char *path, EVP_PKEY *key, sg_err *err)
{
    char *pem = NULL;
    int rc = sg_key_to_pem(key, &pem, err);

    if (rc < 0)
        return rc;
    rc = sg_fs_write_atomic(path, pem, strlen(pem), 0600, err);
    sg_key_pem_free(pem);
    return rc;
}

/* Reads path (bounded) into a malloc'd buffer; optionally refuses group/other access. */
static int read_key_bytes(const char *path, bool check_mode, char **out, size_t *outlen,
                          sg_err *err)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd, rc;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return sg_err_set(err, SG_ENOENT, "key file %s does not exist", path);
        return sg_err_sys(err, "opening key file %s", path);
    }
    if (fstat(fd, &st) < 0) {
        rc = sg_err_sys(err, "stat of key file %s", path);
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = sg_err_set(err, SG_EINVAL, "key file %s is not a regular file", path);
        goto fail;
    }
    if (check_mode && (st.st_mode & 077) != 0) {
        rc = sg_err_set(err, SG_EPERM,
                        "key file %s has mode %04o: group or others may access it (want 0600)",
                        path, (unsigned)(st.st_mode & 07777));
        goto fail;
    }
    if (st.st_size > KEY_FILE_MAX) {
        rc = sg_err_set(err, SG_ETOOBIG, "key file %s is %lld bytes (limit %d)", path,
                        (long long)st.st_size, KEY_FILE_MAX);
        goto fail;
    }
    buf = malloc(KEY_FILE_MAX + 1);
    if (buf == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory reading %s", path);
        goto fail;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, KEY_FILE_MAX + 1 - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = sg_err_sys(err, "reading key file %s", path);
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > KEY_FILE_MAX) {
            rc = sg_err_set(err, SG_ETOOBIG, "key file %s exceeds %d bytes", path, KEY_FILE_MAX);
            goto fail;
        }
    }
    close(fd);
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    return 0;
fail:
    if (buf != NULL) {
        OPENSSL_cleanse(buf, len);
        free(buf);
    }
    close(fd);
    return rc;
}

static int key_read(const char *path, bool check_mode, EVP_PKEY **out, sg_err *err)
{
    char *buf = NULL;
    size_t len = 0;
    EVP_PKEY *k;
    BIO *b;
    int rc;

    rc = read_key_bytes(path, check_mode, &buf, &len, err);
    if (rc < 0)
        return rc;
    b = BIO_new_mem_buf(buf, (int)len);
    if (b == NULL) {
        rc = sg_err_ssl(err, "reading key file %s", path);
        goto done;
    }
    k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    if (k == NULL) {
        sg_err_ssl(err, "key file %s holds no readable PEM private key", path);
        if (err != NULL)
            err->code = SG_EINVAL;
        rc = SG_EINVAL;
        goto done;
    }
    *out = k;
    rc = 0;
done:
    OPENSSL_cleanse(buf, len);
    free(buf);
    return rc;
}

int sg_key_read_file(const char *path, EVP_PKEY **out, sg_err *err)
{
    return key_read(path, true, out, err);
}

int sg_key_read_file_any_mode(const char *path, EVP_PKEY **out, sg_err *err)
{
    return key_read(path, false, out, err);
}
