/*
 * JWT-SVID cache. Each token is stored under a canonical key built from
 * the entry id and the sorted, de-duplicated audience set, with a hash to
 * make the linear scan cheap; recency is a counter, and eviction takes
 * the smallest. The cache is small (a few thousand tokens at most).
 */
#include "agent/jwt_cache.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct jwt_item {
    uint8_t *key; /* canonical (entry, audience set) */
    size_t key_len;
    uint64_t hash;
    uint64_t used; /* recency tick */
    char *entry_id;
    char *spiffe_id;
    char *token;
    char *kid;
    sg_jwt_cache_token pub;
} jwt_item;

struct sg_jwt_cache {
    jwt_item **items;
    size_t n, max;
    uint64_t tick;
};

static void item_free(jwt_item *it)
{
    if (it == NULL)
        return;
    free(it->key);
    free(it->entry_id);
    free(it->spiffe_id);
    if (it->token != NULL)
        OPENSSL_cleanse(it->token, strlen(it->token));
    free(it->token);
    free(it->kid);
    free(it);
}

int sg_jwt_cache_new(sg_jwt_cache **out, size_t max, sg_err *err)
{
    sg_jwt_cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return sg_err_set(err, SG_ENOMEM, "jwt cache: out of memory");
    c->max = max > 0 ? max : SG_JWT_CACHE_DEFAULT_MAX;
    *out = c;
    return 0;
}

void sg_jwt_cache_free(sg_jwt_cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++)
        item_free(c->items[i]);
    free(c->items);
    free(c);
}

int sg_jwt_cache_check_audience(const char *const *aud, size_t naud, sg_err *err)
{
    if (naud == 0)
        return sg_err_set(err, SG_EINVAL, "audience must be specified");
    if (naud > SG_JWT_CACHE_MAX_AUD)
        return sg_err_set(err, SG_EINVAL, "too many audiences: %zu (at most %d)", naud,
                          SG_JWT_CACHE_MAX_AUD);
    for (size_t i = 0; i < naud; i++) {
        if (aud[i] == NULL || aud[i][0] == '\0')
            return sg_err_set(err, SG_EINVAL, "audience %zu is empty", i);
        size_t len = strlen(aud[i]);
        if (len > SG_JWT_CACHE_MAX_AUD_LEN)
            return sg_err_set(err, SG_EINVAL, "audience \"%.40s...\" is longer than %d bytes",
                              aud[i], SG_JWT_CACHE_MAX_AUD_LEN);
    }
    return 0;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static uint64_t fnv(const uint8_t *p, size_t len)
{
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/*
 * The canonical key: entry id, NUL, then each distinct audience in sorted
 * order with its length in front (so no audience text can fake a
 * boundary). *key malloc'd.
 */
static int make_key(const char *entry_id, const char *const *aud, size_t naud, uint8_t **key,
                    size_t *len)
{
    if (naud > SG_JWT_CACHE_MAX_AUD)
        return SG_EINVAL;
    const char *sorted[SG_JWT_CACHE_MAX_AUD];
    size_t total = strlen(entry_id) + 1;
    for (size_t i = 0; i < naud; i++) {
        sorted[i] = aud[i] != NULL ? aud[i] : "";
        total += 4 + strlen(sorted[i]);
    }
    qsort(sorted, naud, sizeof(sorted[0]), str_cmp);
    uint8_t *k = malloc(total);
    if (k == NULL)
        return SG_ENOMEM;
    size_t off = strlen(entry_id) + 1;
    memcpy(k, entry_id, off);
    for (size_t i = 0; i < naud; i++) {
        if (i > 0 && strcmp(sorted[i], sorted[i - 1]) == 0)
            continue;
        uint32_t l = (uint32_t)strlen(sorted[i]);
        memcpy(k + off, &l, 4);
        memcpy(k + off + 4, sorted[i], l);
        off += 4 + l;
    }
    *key = k;
    *len = off;
    return 0;
}

static long find(const sg_jwt_cache *c, const uint8_t *key, size_t len, uint64_t h)
{
    for (size_t i = 0; i < c->n; i++) {
        const jwt_item *it = c->items[i];
        if (it->hash == h && it->key_len == len && memcmp(it->key, key, len) == 0)
            return (long)i;
    }
    return -1;
}

static void remove_at(sg_jwt_cache *c, size_t i)
{
    item_free(c->items[i]);
    c->items[i] = c->items[c->n - 1];
    c->n--;
}

const sg_jwt_cache_token *sg_jwt_cache_get(sg_jwt_cache *c, const char *entry_id, int64_t revision,
                                           const char *const *aud, size_t naud, int64_t now,
                                           bool fresh)
{
    uint8_t *key = NULL;
    size_t len = 0;
    if (c == NULL || entry_id == NULL || make_key(entry_id, aud, naud, &key, &len) != 0)
        return NULL;
    long i = find(c, key, len, fnv(key, len));
    free(key);
    if (i < 0)
        return NULL;
    jwt_item *it = c->items[i];
    /* Expired tokens are never served. */
    if (it->pub.revision != revision || now >= it->pub.expires_at)
        return NULL;
    int64_t half = it->pub.issued_at + (it->pub.expires_at - it->pub.issued_at) / 2;
    if (fresh && now >= half)
        return NULL;
    it->used = ++c->tick;
    return &it->pub;
}

int sg_jwt_cache_put(sg_jwt_cache *c, const char *entry_id, int64_t revision,
                     const char *const *aud, size_t naud, const char *spiffe_id, const char *token,
                     const char *kid, int64_t issued_at, int64_t expires_at, sg_err *err)
{
    if (entry_id == NULL || spiffe_id == NULL || token == NULL)
        return sg_err_set(err, SG_EINVAL, "jwt cache: NULL argument");
    int rc = sg_jwt_cache_check_audience(aud, naud, err);
    if (rc != 0)
        return rc;
    jwt_item *it = calloc(1, sizeof(*it));
    if (it == NULL)
        return sg_err_set(err, SG_ENOMEM, "jwt cache: out of memory");
    if (make_key(entry_id, aud, naud, &it->key, &it->key_len) != 0)
        goto oom;
    it->hash = fnv(it->key, it->key_len);
    it->entry_id = strdup(entry_id);
    it->spiffe_id = strdup(spiffe_id);
    it->token = strdup(token);
    it->kid = strdup(kid != NULL ? kid : "");
    if (it->entry_id == NULL || it->spiffe_id == NULL || it->token == NULL || it->kid == NULL)
        goto oom;
    it->pub.entry_id = it->entry_id;
    it->pub.spiffe_id = it->spiffe_id;
    it->pub.token = it->token;
    it->pub.kid = it->kid;
    it->pub.issued_at = issued_at;
    it->pub.expires_at = expires_at;
    it->pub.revision = revision;
    it->used = ++c->tick;

    long old = find(c, it->key, it->key_len, it->hash);
    if (old >= 0) {
        item_free(c->items[old]);
        c->items[old] = it;
        return 0;
    }
    if (c->n == c->max) {
        size_t lru = 0;
        for (size_t i = 1; i < c->n; i++)
            if (c->items[i]->used < c->items[lru]->used)
                lru = i;
        remove_at(c, lru);
    }
    if (c->items == NULL) {
        c->items = calloc(c->max, sizeof(*c->items));
        if (c->items == NULL)
            goto oom;
    }
    c->items[c->n++] = it;
    return 0;
oom:
    item_free(it);
    return sg_err_set(err, SG_ENOMEM, "jwt cache: out of memory");
}

size_t sg_jwt_cache_taint(sg_jwt_cache *c, char *const *kids, size_t n)
{
    size_t hit = 0;
    for (size_t i = 0; i < c->n;) {
        bool drop = false;
        for (size_t k = 0; k < n && !drop; k++)
            drop = kids[k] != NULL && strcmp(c->items[i]->kid, kids[k]) == 0;
        if (drop) {
            remove_at(c, i);
            hit++;
        } else {
            i++;
        }
    }
    return hit;
}

size_t sg_jwt_cache_prune(sg_jwt_cache *c, sg_jwt_cache_keep_fn keep, void *ctx)
{
    size_t gone = 0;
    for (size_t i = 0; i < c->n;) {
        if (!keep(ctx, c->items[i]->entry_id, c->items[i]->pub.revision)) {
            remove_at(c, i);
            gone++;
        } else {
            i++;
        }
    }
    return gone;
}

size_t sg_jwt_cache_expire(sg_jwt_cache *c, int64_t now)
{
    size_t gone = 0;
    for (size_t i = 0; i < c->n;) {
        if (now >= c->items[i]->pub.expires_at) {
            remove_at(c, i);
            gone++;
        } else {
            i++;
        }
    }
    return gone;
}

size_t sg_jwt_cache_size(const sg_jwt_cache *c)
{
    return c->n;
}
