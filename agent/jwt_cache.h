/*
 * The agent's JWT-SVID cache: tokens the server minted, keyed by entry and
 * audience set (order and duplicates ignored). A token is served until
 * half its lifetime has passed, then re-fetched on the next request;
 * expired tokens are never served. The cache is bounded: when full, the
 * least recently used token goes. Loop-thread-only, no locks.
 */
#ifndef SG_AGENT_JWT_CACHE_H
#define SG_AGENT_JWT_CACHE_H

#include "common/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sg_jwt_cache sg_jwt_cache;

#define SG_JWT_CACHE_DEFAULT_MAX 1000 /* SPIRE's jwt_svid_cache_max_size default */
#define SG_JWT_CACHE_MAX_AUD     32   /* audiences per request */
#define SG_JWT_CACHE_MAX_AUD_LEN 1024 /* bytes per audience */

/* A cached token. Read-only for callers; owned by the cache. */
typedef struct sg_jwt_cache_token {
    const char *entry_id;
    const char *spiffe_id;
    const char *token;
    const char *kid;
    int64_t issued_at;
    int64_t expires_at;
    int64_t revision; /* entry revision it was minted for */
} sg_jwt_cache_token;

/* max: most tokens held (0 = SG_JWT_CACHE_DEFAULT_MAX). */
int sg_jwt_cache_new(sg_jwt_cache **out, size_t max, sg_err *err);

/* Frees the cache, wiping every token. NULL-safe. */
void sg_jwt_cache_free(sg_jwt_cache *c);

/*
 * Checks an audience list from a workload: 1..SG_JWT_CACHE_MAX_AUD
 * non-empty strings of at most SG_JWT_CACHE_MAX_AUD_LEN bytes each.
 * SG_EINVAL naming the bad one.
 */
int sg_jwt_cache_check_audience(const char *const *aud, size_t naud, sg_err *err);

/*
 * The token for (entry_id, aud) that is fresh at now: issued for the
 * entry's revision, and now before the half-life point. fresh == false
 * also accepts a token past its half-life but not expired (served when
 * the server cannot be reached). NULL when none; the pointer stays valid
 * until the next mutating call. Marks the token as used.
 */
const sg_jwt_cache_token *sg_jwt_cache_get(sg_jwt_cache *c, const char *entry_id, int64_t revision,
                                           const char *const *aud, size_t naud, int64_t now,
                                           bool fresh);

/*
 * Stores a token (every argument borrowed and copied), replacing the one
 * held for the same key and evicting the least recently used one when
 * full.
 */
int sg_jwt_cache_put(sg_jwt_cache *c, const char *entry_id, int64_t revision,
                     const char *const *aud, size_t naud, const char *spiffe_id, const char *token,
                     const char *kid, int64_t issued_at, int64_t expires_at, sg_err *err);

/* Drops every token signed by one of the keys kids[0..n). Returns how many. */
size_t sg_jwt_cache_taint(sg_jwt_cache *c, char *const *kids, size_t n);

/*
 * Keeps only the tokens whose entry is still present with the same
 * revision: keep(ctx, entry_id, revision) says so. Returns how many went.
 */
typedef bool (*sg_jwt_cache_keep_fn)(void *ctx, const char *entry_id, int64_t revision);
size_t sg_jwt_cache_prune(sg_jwt_cache *c, sg_jwt_cache_keep_fn keep, void *ctx);

/* Drops expired tokens. Returns how many. */
size_t sg_jwt_cache_expire(sg_jwt_cache *c, int64_t now);

size_t sg_jwt_cache_size(const sg_jwt_cache *c);

#endif
