/*
 * X.509 helpers shared by server and agent (OpenSSL 3): DER/PEM
 * conversion, SPIFFE ID from a certificate, CSR creation and the CSR /
 * public-key policy, chain verification against a bundle.
 */
#ifndef SG_COMMON_X509_H
#define SG_COMMON_X509_H

#include "common/err.h"
#include "common/spiffeid.h"

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>

#define SG_X509_MAX_DER (64 * 1024) /* largest certificate / CSR accepted */

/* A DER blob; data is malloc'd and owned by whoever owns the struct. */
typedef struct sg_der {
    uint8_t *data;
    size_t len;
} sg_der;

/* Frees d->data and zeroes d. NULL-safe. */
void sg_der_cleanup(sg_der *d);

/* Parses one DER certificate. *out owned by the caller (X509_free). */
int sg_x509_from_der(const uint8_t *der, size_t len, X509 **out, sg_err *err);

/* Encodes cert as DER into out. */
int sg_x509_to_der(X509 *cert, sg_der *out, sg_err *err);

/*
 * Parses every certificate of a PEM string or file contents (at least one).
 * *certs is a new STACK_OF(X509) (free with sk_X509_pop_free(certs, X509_free)).
 */
int sg_x509_parse_pem_chain(const char *pem, size_t len, STACK_OF(X509) * *certs, sg_err *err);

/*
 * Parses concatenated DER certificates (the Workload API's bundle and
 * x509_svid fields) into a new stack.
 */
int sg_x509_parse_der_chain(const uint8_t *der, size_t len, STACK_OF(X509) * *certs, sg_err *err);

/* PEM text of certs[0..n) concatenated; malloc'd, NUL-terminated. */
int sg_x509_der_list_to_pem(const sg_der *certs, size_t n, char **pem, sg_err *err);

/* PEM text of one certificate; malloc'd. */
int sg_x509_to_pem(X509 *cert, char **pem, sg_err *err);

/*
 * Extracts the SPIFFE ID of an SVID: exactly one URI SAN that parses as a
 * SPIFFE ID (X509-SVID 2). Errors name what was found instead.
 */
int sg_x509_spiffeid(X509 *cert, sg_spiffeid *out, sg_err *err);

/* Serial number as lower-case hex (out: at least 41 bytes). */
void sg_x509_serial_hex(X509 *cert, char *out, size_t outlen);

/* notAfter as unix seconds. */
int64_t sg_x509_not_after(X509 *cert);

/*
 * Builds a DER PKCS#10 CSR signed by key, with an optional URI SAN
 * (uri may be NULL). out->data is malloc'd.
 */
int sg_x509_csr_create(EVP_PKEY *key, const char *uri, sg_der *out, sg_err *err);

/*
 * CSR policy for signing requests from peers: parses a DER CSR (at most
 * SG_X509_MAX_DER), checks its self-signature and that the key passes
 * sg_x509_spki_check, and returns the DER SubjectPublicKeyInfo in *spki.
 * Nothing else from the CSR (subject, SANs, extensions) is ever used.
 */
int sg_x509_csr_public_key(const uint8_t *der, size_t len, sg_der *spki, sg_err *err);

/*
 * Checks a DER SubjectPublicKeyInfo without building an EVP_PKEY (the mint
 * fast path): well-formed, algorithm EC (P-256 or P-384, uncompressed or
 * compressed point of the right size) or RSA (2048..8192 bits, odd
 * modulus). Returns 0 or SG_EINVAL with the reason.
 */
int sg_x509_spki_check(const uint8_t *der, size_t len, sg_err *err);

/*
 * Verifies leaf (with optional intermediates) against roots at time now
 * (0 = current time), as an X509-SVID: leaf is not a CA, has exactly one
 * SPIFFE URI SAN, digitalSignature key usage. *id (may be NULL) receives
 * the ID. Errors say why verification failed.
 */
int sg_x509_verify_svid(X509 *leaf, STACK_OF(X509) * intermediates, STACK_OF(X509) * roots,
                        int64_t now, sg_spiffeid *id, sg_err *err);

#endif
