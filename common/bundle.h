/*
 * SPIFFE bundles (SPIFFE Trust Domain and Bundle, section 4): the X.509
 * authorities and JWT signing keys of one trust domain, with a sequence
 * number and refresh hint. Encodes and strictly decodes the JWKS form
 * (use "x509-svid" with x5c, use "jwt-svid" with kid) and the JWKS that
 * FetchJWTBundles carries (jwt-svid keys only).
 */
#ifndef SG_COMMON_BUNDLE_H
#define SG_COMMON_BUNDLE_H

#include "common/err.h"
#include "common/x509.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A JWT signing key: its kid and DER SubjectPublicKeyInfo. */
typedef struct sg_jwt_key {
    char *kid;
    sg_der spki;
    int64_t expires_at; /* unix seconds, 0 = unknown (not in the JWKS form) */
} sg_jwt_key;

/* One trust domain's bundle. Every member heap-owned (sg_bundle_cleanup). */
typedef struct sg_bundle {
    char *trust_domain; /* the name, without "spiffe://" */
    sg_der *x509;       /* DER CA certificates */
    size_t nx509;
    sg_jwt_key *jwt;
    size_t njwt;
    uint64_t sequence;    /* spiffe_sequence, 0 = absent */
    int64_t refresh_hint; /* seconds, 0 = absent */
} sg_bundle;

void sg_bundle_cleanup(sg_bundle *b);
int sg_bundle_copy(sg_bundle *dst, const sg_bundle *src, sg_err *err);
/* Same authorities (order-insensitive), ignoring sequence and refresh hint. */
bool sg_bundle_same_keys(const sg_bundle *a, const sg_bundle *b);

/*
 * The SPIFFE bundle JSON (JWKS) of b: x509-svid keys carry x5c (and the
 * key's public parameters), jwt-svid keys carry kid; spiffe_sequence and
 * spiffe_refresh_hint when non-zero. *json malloc'd, NUL-terminated.
 */
int sg_bundle_to_jwks(const sg_bundle *b, char **json, sg_err *err);

/*
 * Only the jwt-svid keys, as a JWKS (what FetchJWTBundles returns per
 * trust domain). *json malloc'd.
 */
int sg_bundle_jwt_jwks(const sg_bundle *b, char **json, sg_err *err);

/*
 * Parses SPIFFE bundle JSON for trust_domain (name without "spiffe://").
 * Strict where the spec is: keys must be an array; every x509-svid key
 * has exactly one x5c certificate that is a CA; every jwt-svid key has a
 * non-empty kid, unique in the bundle, and a supported public key (EC
 * P-256/P-384/P-521, RSA >= 2048); keys with an unknown use are skipped as
 * the spec says. Errors name the key index and field.
 */
int sg_bundle_from_jwks(const char *trust_domain, const char *json, size_t len, sg_bundle *out,
                        sg_err *err);

/* The X.509 authorities as concatenated PEM (malloc'd). */
int sg_bundle_x509_pem(const sg_bundle *b, char **pem, sg_err *err);

/* Parses PEM CA certificates into a bundle with no JWT keys. */
int sg_bundle_from_pem(const char *trust_domain, const char *pem, size_t len, sg_bundle *out,
                       sg_err *err);

/* The key with kid in b, or NULL. */
const sg_jwt_key *sg_bundle_find_jwt_key(const sg_bundle *b, const char *kid);

/*
 * Base64 as the JOSE formats use it: url = base64url without padding
 * (JWS parts, JWK parameters, RFC 7515 section 2), otherwise standard
 * base64 with padding (x5c, RFC 7517 section 4.7). *out is malloc'd and
 * NUL-terminated. Decoding is strict: only the alphabet of the variant,
 * padding exactly as the variant requires, no whitespace, no non-zero
 * trailing bits; SG_EINVAL otherwise. *out of decode is malloc'd with a
 * NUL byte after its *outlen bytes (so an empty input still gives a
 * freeable pointer, and decoded text is a C string).
 */
int sg_bundle_b64_encode(const uint8_t *in, size_t len, bool url, char **out, sg_err *err);
int sg_bundle_b64_decode(const char *in, size_t len, bool url, uint8_t **out, size_t *outlen,
                         sg_err *err);

#endif
