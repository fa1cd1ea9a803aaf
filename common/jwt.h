/*
 * JWT-SVIDs (SPIFFE JWT-SVID spec): signing compact JWS tokens with the
 * server's JWT authority and validating them the way the Workload API's
 * ValidateJWTSVID must: compact JWS only, alg in the allowed set, typ JWT
 * or JOSE when present, no header beyond alg/kid/typ, kid known in the
 * bundle of the token's trust domain, signature, aud contains the
 * audience, exp in the future.
 */
#ifndef SG_COMMON_JWT_H
#define SG_COMMON_JWT_H

#include "common/bundle.h"
#include "common/err.h"
#include "common/key.h"

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

typedef enum sg_jwt_alg {
    SG_JWT_ES256 = 0, /* default */
    SG_JWT_ES384,
    SG_JWT_ES512,
    SG_JWT_RS256,
    SG_JWT_RS384,
    SG_JWT_RS512,
    SG_JWT_PS256,
    SG_JWT_PS384,
    SG_JWT_PS512,
} sg_jwt_alg;

/* "ES256" ... Case-sensitive as JOSE is. SG_EINVAL naming the value otherwise. */
int sg_jwt_alg_parse(const char *s, sg_jwt_alg *out, sg_err *err);
const char *sg_jwt_alg_name(sg_jwt_alg a);

/*
 * jwt_key_type as the server config spells it ("ec-p256" | "ec-p384" |
 * "rsa-2048" | "rsa-4096", SPIRE's key types, plus the JOSE names "ES256",
 * "ES384", "RS256", "PS256"): the key to generate and the alg to sign with.
 */
int sg_jwt_key_type_parse(const char *s, sg_key_type *key, sg_jwt_alg *alg, sg_err *err);

/* The alg a key signs with by default: ES256/ES384/ES512 by curve, RS256 for RSA. */
int sg_jwt_alg_for_key(EVP_PKEY *key, sg_jwt_alg *out, sg_err *err);

/*
 * A kid for a public key: 32 characters, base64url of the first 24 bytes
 * of SHA-256 over the DER SubjectPublicKeyInfo (stable for a key).
 */
int sg_jwt_kid(EVP_PKEY *key, char out[33], sg_err *err);

/* Claims of a JWT-SVID to sign. Borrowed for the call. */
typedef struct sg_jwt_claims {
    const char *sub; /* the SPIFFE ID */
    const char *const *aud;
    size_t naud; /* >= 1; one audience is written as a string, more as an array */
    int64_t iat;
    int64_t exp;
    const char *iss; /* may be NULL */
} sg_jwt_claims;

/*
 * Signs: header {"alg","kid","typ":"JWT"}, the claims above. *token
 * malloc'd (compact JWS, NUL-terminated).
 */
int sg_jwt_sign(EVP_PKEY *key, sg_jwt_alg alg, const char *kid, const sg_jwt_claims *c,
                char **token, sg_err *err);

/* Looks up the bundle of a trust domain (name without "spiffe://"); NULL when none. */
typedef const sg_bundle *(*sg_jwt_bundle_lookup)(void *ctx, const char *trust_domain);

/* A validated token. Heap-owned (sg_jwt_validated_cleanup). */
typedef struct sg_jwt_validated {
    char *spiffe_id;   /* sub */
    char *claims_json; /* the whole payload, as JSON text */
    int64_t exp;
} sg_jwt_validated;

void sg_jwt_validated_cleanup(sg_jwt_validated *v);

/*
 * Validates token for audience at time now against the bundle that lookup
 * returns for the trust domain of its sub. Every failure is SG_EINVAL
 * with a message saying which check failed (never echoing the whole
 * token); a token longer than SG_JWT_MAX_LEN is refused before parsing.
 */
#define SG_JWT_MAX_LEN 16384
int sg_jwt_validate(const char *token, const char *audience, int64_t now,
                    sg_jwt_bundle_lookup lookup, void *ctx, sg_jwt_validated *out, sg_err *err);

#endif
