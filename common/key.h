/*
 * Key types, key generation and key encodings (OpenSSL 3 EVP_PKEY).
 */
#ifndef SG_COMMON_KEY_H
#define SG_COMMON_KEY_H

#include "common/err.h"

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

typedef enum sg_key_type {
    SG_KEY_EC_P256 = 0, /* default */
    SG_KEY_EC_P384,
    SG_KEY_RSA_2048,
    SG_KEY_RSA_4096,
} sg_key_type;

/* Parses SPIRE's names "ec-p256", "ec-p384", "rsa-2048", "rsa-4096". */
int sg_key_type_parse(const char *s, sg_key_type *out, sg_err *err);

/* Static name of t ("ec-p256"). */
const char *sg_key_type_name(sg_key_type t);

/* Generates a new key of type t. *out is owned by the caller (EVP_PKEY_free). */
int sg_key_generate(sg_key_type t, EVP_PKEY **out, sg_err *err);

/*
 * Encodes key as PKCS#8 DER (the Workload API's x509_svid_key). *der is
 * OPENSSL_malloc'd; the caller frees it with OPENSSL_clear_free(*der, *len).
 */
int sg_key_to_pkcs8_der(EVP_PKEY *key, uint8_t **der, size_t *len, sg_err *err);

/* Encodes key's public half as DER SubjectPublicKeyInfo. Free with OPENSSL_free. */
int sg_key_to_spki_der(EVP_PKEY *key, uint8_t **der, size_t *len, sg_err *err);

/* Encodes key as PKCS#8 PEM into a malloc'd NUL-terminated string (free with sg_key_pem_free). */
int sg_key_to_pem(EVP_PKEY *key, char **pem, sg_err *err);

/* Wipes and frees a PEM string from sg_key_to_pem. NULL-safe. */
void sg_key_pem_free(char *pem);

/*
 * Writes key as PKCS#8 PEM to path with mode 0600, atomically (temp file in
 * the same directory, O_EXCL|O_NOFOLLOW, fsync, rename).
 */
int sg_key_write_file(const char *path, EVP_PKEY *key, sg_err *err);

/*
 * Reads a PEM private key (PKCS#8, SEC1 or PKCS#1) from path. Refuses a file
 * that group or others can read or write, with a message naming the path
 * and its mode. *out is owned by the caller.
 */
int sg_key_read_file(const char *path, EVP_PKEY **out, sg_err *err);

/* Like sg_key_read_file without the permission check (for operator-supplied upstream keys). */
int sg_key_read_file_any_mode(const char *path, EVP_PKEY **out, sg_err *err);

#endif
