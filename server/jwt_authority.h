/*
 * The JWT signing authority of one trust domain: signing key slots
 * (prepared -> active -> old) rotated on the CA's schedule, each key with a
 * kid and an expiry. Signs JWT-SVIDs with the active key and publishes
 * every key whose tokens may still be live. Keys persist (0600) in
 * keys_dir with KeyManager "disk", in memory otherwise. Every function is
 * thread-safe; signing holds a reference to the active key, never a lock
 * across the signature.
 */
#ifndef SG_SERVER_JWT_AUTHORITY_H
#define SG_SERVER_JWT_AUTHORITY_H

#include "common/bundle.h"
#include "common/err.h"
#include "common/jwt.h"
#include "common/key.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sg_jwt_authority sg_jwt_authority;

/* Default JWT-SVID lifetime (SPIRE's default_jwt_svid_ttl). */
#define SG_JWT_SVID_TTL_DEFAULT_S 300
/* Longest audience list and audience string a JWT-SVID request may carry. */
#define SG_JWT_AUD_MAX     32
#define SG_JWT_AUD_LEN_MAX 1024
/* A kid is 32 base64url characters (sg_jwt_kid). */
#define SG_JWT_KID_MAX 32

typedef struct sg_jwt_authority_options {
    const char *trust_domain; /* required, name without "spiffe://" */
    sg_key_type key_type;     /* from jwt_key_type (sg_jwt_key_type_parse) */
    sg_jwt_alg alg;
    int64_t key_ttl_s;          /* lifetime of a signing key (ca_ttl); 0 = 24h */
    int64_t default_svid_ttl_s; /* default_jwt_svid_ttl; 0 = SG_JWT_SVID_TTL_DEFAULT_S */
    int64_t max_svid_ttl_s;     /* longest JWT-SVID TTL configured: bounds revoke; 0 = key life */
    const char *keys_dir;       /* KeyManager "disk": jwt-<kid>.key (0600) + jwt-slots.json */
    const char *issuer;         /* jwt_issuer; NULL = no iss claim */
} sg_jwt_authority_options;

/*
 * Loads the keys listed in keys_dir/jwt-slots.json when usable (unexpired,
 * key file 0600), or creates an active key. opts is copied.
 */
int sg_jwt_authority_new(sg_jwt_authority **out, const sg_jwt_authority_options *opts, int64_t now,
                         sg_err *err);
void sg_jwt_authority_free(sg_jwt_authority *a);

/* What one signed JWT-SVID was. */
typedef struct sg_jwt_svid {
    char *token; /* malloc'd compact JWS */
    int64_t issued_at;
    int64_t expires_at;
    char kid[SG_JWT_KID_MAX + 1];
} sg_jwt_svid;

void sg_jwt_svid_cleanup(sg_jwt_svid *s);

/*
 * Signs a JWT-SVID for spiffe_id (checked: a SPIFFE ID of this trust
 * domain) and aud (1..SG_JWT_AUD_MAX non-empty strings of at most
 * SG_JWT_AUD_LEN_MAX bytes) with the active key: claims sub, aud, iat=now,
 * exp=now+ttl_s (ttl_s <= 0: the default TTL), capped by the
 * key's expiry, and iss when configured. SG_EINVAL naming the bad input.
 */
int sg_jwt_authority_sign(sg_jwt_authority *a, const char *spiffe_id, const char *const *aud,
                          size_t naud, int64_t ttl_s, int64_t now, sg_jwt_svid *out, sg_err *err);

/* Checks an audience list as sg_jwt_authority_sign does. */
int sg_jwt_audience_check(const char *const *aud, size_t naud, sg_err *err);

/* ---- slots ---- */

typedef enum sg_jwt_key_state {
    SG_JWT_KEY_PREPARED,
    SG_JWT_KEY_ACTIVE,
    SG_JWT_KEY_OLD
} sg_jwt_key_state;

/* "prepared", "active", "old". */
const char *sg_jwt_key_state_name(sg_jwt_key_state s);

typedef struct sg_jwt_authority_info {
    char kid[SG_JWT_KID_MAX + 1];
    sg_jwt_key_state state;
    int64_t issued_at;
    int64_t expires_at;
    bool tainted;
    int64_t tainted_at;
    int64_t signed_until; /* latest exp of a token it signed in this process (0 = none) */
    sg_der spki;          /* DER SubjectPublicKeyInfo, owned: sg_jwt_authority_infos_free */
} sg_jwt_authority_info;

/* Every key (prepared, active, old), oldest first. Free with sg_jwt_authority_infos_free. */
int sg_jwt_authority_list(sg_jwt_authority *a, sg_jwt_authority_info **out, size_t *n, sg_err *err);
void sg_jwt_authority_infos_free(sg_jwt_authority_info *v, size_t n);
/* Frees the spki of one info (from prepare/activate/taint/revoke). NULL-safe. */
void sg_jwt_authority_info_cleanup(sg_jwt_authority_info *i);

/*
 * The published keys (every slot: what agents and workloads validate
 * with), as bundle JWT keys with expires_at. *keys malloc'd; free with
 * sg_jwt_authority_keys_free.
 */
int sg_jwt_authority_keys(sg_jwt_authority *a, sg_jwt_key **keys, size_t *n, sg_err *err);
void sg_jwt_authority_keys_free(sg_jwt_key *keys, size_t n);

/* kids of tainted keys. Free with sg_jwt_authority_kids_free. */
int sg_jwt_authority_tainted(sg_jwt_authority *a, char ***kids, size_t *n, sg_err *err);
void sg_jwt_authority_kids_free(char **kids, size_t n);

/* Bumped on every change of the published keys or their taint. */
uint64_t sg_jwt_authority_generation(sg_jwt_authority *a);

/*
 * The scheduled step: prepares a key when the active one has less than
 * min(key_ttl/2, 30d) left, activates it below min(key_ttl/6, 7d), drops
 * old keys once every token they signed has expired. *changed (may be
 * NULL) tells whether the published keys changed.
 */
int sg_jwt_authority_rotate(sg_jwt_authority *a, int64_t now, bool *changed, sg_err *err);

/* Operator actions (`localauthority jwt ...`); out (may be NULL) gets the key acted on. */
int sg_jwt_authority_prepare(sg_jwt_authority *a, int64_t now, sg_jwt_authority_info *out,
                             sg_err *err);
int sg_jwt_authority_activate(sg_jwt_authority *a, const char *kid, int64_t now,
                              sg_jwt_authority_info *out, sg_err *err);
/* Only an old key can be tainted. */
int sg_jwt_authority_taint(sg_jwt_authority *a, const char *kid, int64_t now,
                           sg_jwt_authority_info *out, sg_err *err);
/* Only a tainted key, and only once no token it signed can still be live. */
int sg_jwt_authority_revoke(sg_jwt_authority *a, const char *kid, int64_t now,
                            sg_jwt_authority_info *out, sg_err *err);

#endif
