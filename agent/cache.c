/*
 * Loop-thread-only store of entries, their SVIDs and the trust bundle,
 * plus the subscribers (open Workload API streams). Entries are kept
 * sorted by id with their SVIDs alongside, so a sync keeps the SVIDs of
 * unchanged entries and lookups are binary searches.
 */
#include "agent/cache.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sg_cache_sub {
    sg_cache_sub *next;
    sg_cache_watch what;
    const sg_selector_set *sels;
    sg_cache_notify_fn fn;
    void *user;
    uint64_t view;
    bool dead;
};

struct sg_cache {
    char bundle_name[SG_TRUST_DOMAIN_MAX + 16];
    sg_agent_entry *entries; /* sorted by id */
    sg_cache_svid **svids;   /* svids[i] belongs to entries[i]; NULL when none */
    int64_t *retry_at;       /* retry_at[i]: the server refused entries[i]; not due before */
    size_t n;
    uint8_t *bundle;
    size_t bundle_len;
    bool has_bundle;
    uint64_t bundle_gen;
    sg_cache_sub *subs;
    size_t nsubs;
    int flushing;
};

static void svid_free(sg_cache_svid *s)
{
    if (s == NULL)
        return;
    free(s->spiffe_id);
    free(s->chain);
    if (s->key != NULL)
        OPENSSL_cleanse(s->key, s->key_len);
    free(s->key);
    free(s);
}

int sg_cache_new(sg_cache **out, const char *trust_domain, sg_err *err)
{
    sg_cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return sg_err_set(err, SG_ENOMEM, "cache: out of memory");
    if (snprintf(c->bundle_name, sizeof(c->bundle_name), "spiffe://%s", trust_domain) >=
        (int)sizeof(c->bundle_name)) {
        free(c);
        return sg_err_set(err, SG_EINVAL, "trust domain \"%.64s...\" is too long", trust_domain);
    }
    *out = c;
    return 0;
}

void sg_cache_free(sg_cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++) {
        sg_agent_entry_cleanup(&c->entries[i]);
        svid_free(c->svids[i]);
    }
    free(c->entries);
    free(c->svids);
    free(c->retry_at);
    free(c->bundle);
    sg_cache_sub *s = c->subs;
    while (s != NULL) {
        sg_cache_sub *next = s->next;
        free(s);
        s = next;
    }
    free(c);
}

static int entry_cmp(const void *a, const void *b)
{
    const sg_agent_entry *x = a, *y = b;
    return strcmp(x->id ? x->id : "", y->id ? y->id : "");
}

static long find_entry(const sg_agent_entry *entries, size_t n, const char *id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(entries[mid].id ? entries[mid].id : "", id);
        if (r == 0)
            return (long)mid;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

int sg_cache_set_entries(sg_cache *c, sg_agent_entry *entries, size_t n, sg_err *err)
{
    sg_cache_svid **svids = NULL;
    int64_t *retry_at = NULL;
    if (n > 0) {
        svids = calloc(n, sizeof(*svids));
        retry_at = calloc(n, sizeof(*retry_at));
        if (svids == NULL || retry_at == NULL) {
            free(svids);
            free(retry_at);
            for (size_t i = 0; i < n; i++)
                sg_agent_entry_cleanup(&entries[i]);
            free(entries);
            return sg_err_set(err, SG_ENOMEM, "cache: out of memory");
        }
        qsort(entries, n, sizeof(*entries), entry_cmp);
    }
    /* Carry over SVIDs of entries that survive with the same SPIFFE ID. */
    for (size_t i = 0; i < n; i++) {
        if (entries[i].id == NULL)
            continue;
        long j = find_entry(c->entries, c->n, entries[i].id);
        if (j >= 0 && c->entries[j].revision == entries[i].revision)
            retry_at[i] = c->retry_at[j];
        if (j < 0 || c->svids[j] == NULL)
            continue;
        const char *old = c->svids[j]->spiffe_id;
        if (entries[i].spiffe_id != NULL && strcmp(old, entries[i].spiffe_id) == 0) {
            svids[i] = c->svids[j];
            c->svids[j] = NULL;
        }
    }
    for (size_t i = 0; i < c->n; i++) {
        sg_agent_entry_cleanup(&c->entries[i]);
        svid_free(c->svids[i]);
    }
    free(c->entries);
    free(c->svids);
    free(c->retry_at);
    c->entries = entries;
    c->svids = svids;
    c->retry_at = retry_at;
    c->n = n;
    return 0;
}

int sg_cache_set_bundle(sg_cache *c, sg_agent_bundle *b, sg_err *err)
{
    size_t len = 0;
    for (size_t i = 0; i < b->n; i++)
        len += b->certs[i].len;
    uint8_t *der = malloc(len ? len : 1);
    if (der == NULL)
        return sg_err_set(err, SG_ENOMEM, "cache: out of memory");
    size_t off = 0;
    for (size_t i = 0; i < b->n; i++) {
        memcpy(der + off, b->certs[i].data, b->certs[i].len);
        off += b->certs[i].len;
    }
    sg_agent_bundle_cleanup(b);
    if (c->has_bundle && len == c->bundle_len && memcmp(der, c->bundle, len) == 0) {
        free(der);
        return 0;
    }
    free(c->bundle);
    c->bundle = der;
    c->bundle_len = len;
    c->has_bundle = true;
    c->bundle_gen++;
    return 0;
}

int sg_cache_put_svid(sg_cache *c, const char *entry_id, int64_t revision, const sg_der *chain,
                      size_t nchain, const uint8_t *key, size_t key_len, int64_t not_after,
                      int64_t renew_at, const char *serial, const char *authority_id, sg_err *err)
{
    long i = find_entry(c->entries, c->n, entry_id);
    if (i < 0)
        return sg_err_set(err, SG_ENOENT, "entry \"%.64s\" is no longer in the cache", entry_id);
    if (nchain == 0)
        return sg_err_set(err, SG_EINVAL, "SVID for entry \"%.64s\" has no certificate", entry_id);
    sg_cache_svid *s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto oom;
    size_t len = 0;
    for (size_t k = 0; k < nchain; k++)
        len += chain[k].len;
    s->spiffe_id = strdup(c->entries[i].spiffe_id ? c->entries[i].spiffe_id : "");
    s->chain = malloc(len ? len : 1);
    s->key = malloc(key_len ? key_len : 1);
    if (s->spiffe_id == NULL || s->chain == NULL || s->key == NULL)
        goto oom;
    size_t off = 0;
    for (size_t k = 0; k < nchain; k++) {
        memcpy(s->chain + off, chain[k].data, chain[k].len);
        off += chain[k].len;
    }
    s->chain_len = len;
    memcpy(s->key, key, key_len);
    s->key_len = key_len;
    s->not_after = not_after;
    s->renew_at = renew_at;
    s->revision = revision;
    snprintf(s->serial, sizeof(s->serial), "%s", serial ? serial : "");
    snprintf(s->authority_id, sizeof(s->authority_id), "%s", authority_id ? authority_id : "");
    svid_free(c->svids[i]);
    c->svids[i] = s;
    c->retry_at[i] = 0;
    return 0;
oom:
    svid_free(s);
    return sg_err_set(err, SG_ENOMEM, "cache: out of memory");
}

int sg_cache_due(const sg_cache *c, int64_t now, const sg_agent_entry ***out, size_t *n)
{
    const sg_agent_entry **due = malloc((c->n ? c->n : 1) * sizeof(*due));
    if (due == NULL)
        return SG_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++) {
        const sg_cache_svid *s = c->svids[i];
        if (c->entries[i].id == NULL || c->retry_at[i] > now)
            continue;
        if (s == NULL || s->revision != c->entries[i].revision || now >= s->renew_at ||
            now >= s->not_after)
            due[k++] = &c->entries[i];
    }
    *out = due;
    *n = k;
    return 0;
}

size_t sg_cache_taint(sg_cache *c, char *const *ids, size_t n)
{
    size_t hit = 0;

    for (size_t i = 0; i < c->n; i++) {
        sg_cache_svid *s = c->svids[i];
        if (s == NULL || s->authority_id[0] == '\0' || s->renew_at == 0)
            continue;
        for (size_t k = 0; k < n; k++) {
            if (strcmp(s->authority_id, ids[k]) == 0) {
                s->renew_at = 0;
                hit++;
                break;
            }
        }
    }
    return hit;
}

void sg_cache_mint_refused(sg_cache *c, const char *entry_id, int64_t retry_at)
{
    long i = find_entry(c->entries, c->n, entry_id);
    if (i >= 0)
        c->retry_at[i] = retry_at;
}

int64_t sg_cache_next_due(const sg_cache *c)
{
    int64_t next = INT64_MAX;

    for (size_t i = 0; i < c->n; i++) {
        const sg_cache_svid *s = c->svids[i];
        int64_t t;
        if (c->entries[i].id == NULL)
            continue;
        if (s == NULL || s->revision != c->entries[i].revision)
            t = INT64_MIN;
        else
            t = s->renew_at;
        if (c->retry_at[i] > t)
            t = c->retry_at[i];
        if (t < next)
            next = t;
    }
    return next;
}

static bool svid_usable(const sg_cache_svid *s, int64_t now)
{
    return s != NULL && now < s->not_after;
}

int sg_cache_match(const sg_cache *c, const sg_selector_set *sels, int64_t now,
                   sg_cache_identity **out, size_t *n, size_t *nentries)
{
    sg_cache_identity *ids = NULL;
    size_t k = 0, cap = 0, matched = 0;
    for (size_t i = 0; i < c->n; i++) {
        const sg_agent_entry *e = &c->entries[i];
        if (!sg_selector_set_matches(sels, e->selectors, e->nselectors))
            continue;
        matched++;
        if (!svid_usable(c->svids[i], now))
            continue;
        if (k == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            sg_cache_identity *ni = realloc(ids, ncap * sizeof(*ni));
            if (ni == NULL) {
                free(ids);
                return SG_ENOMEM;
            }
            ids = ni;
            cap = ncap;
        }
        ids[k].entry = e;
        ids[k].svid = c->svids[i];
        k++;
    }
    *out = ids;
    *n = k;
    if (nentries != NULL)
        *nentries = matched;
    return 0;
}

bool sg_cache_has_bundle(const sg_cache *c)
{
    return c->has_bundle;
}

const uint8_t *sg_cache_bundle_der(const sg_cache *c, size_t *len)
{
    *len = c->has_bundle ? c->bundle_len : 0;
    return c->has_bundle ? c->bundle : NULL;
}

const char *sg_cache_bundle_name(const sg_cache *c)
{
    return c->bundle_name;
}

size_t sg_cache_nentries(const sg_cache *c)
{
    return c->n;
}

size_t sg_cache_nsvids(const sg_cache *c)
{
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++)
        if (c->svids[i] != NULL)
            k++;
    return k;
}

size_t sg_cache_nsubscribers(const sg_cache *c)
{
    return c->nsubs;
}

/* ------------------------------------------------------------ subscribers */

static uint64_t fnv(uint64_t h, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* A digest of what a subscriber would be sent; a change means a new message. */
static uint64_t view_of(const sg_cache *c, sg_cache_watch what, const sg_selector_set *sels,
                        int64_t now)
{
    uint64_t h = 14695981039346656037ULL;
    h = fnv(h, &c->bundle_gen, sizeof(c->bundle_gen));
    size_t matched = 0, usable = 0;
    for (size_t i = 0; i < c->n; i++) {
        const sg_agent_entry *e = &c->entries[i];
        if (!sg_selector_set_matches(sels, e->selectors, e->nselectors))
            continue;
        matched++;
        const sg_cache_svid *s = c->svids[i];
        if (what != SG_CACHE_WATCH_SVIDS || !svid_usable(s, now))
            continue;
        usable++;
        h = fnv(h, e->id, strlen(e->id) + 1);
        h = fnv(h, s->serial, strlen(s->serial) + 1);
        if (e->hint != NULL)
            h = fnv(h, e->hint, strlen(e->hint) + 1);
    }
    bool any = matched > 0;
    h = fnv(h, &any, sizeof(any));
    h = fnv(h, &usable, sizeof(usable));
    return h;
}

int sg_cache_subscribe(sg_cache *c, sg_cache_watch what, const sg_selector_set *sels,
                       sg_cache_notify_fn fn, void *user, int64_t now, sg_cache_sub **out,
                       sg_err *err)
{
    sg_cache_sub *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return sg_err_set(err, SG_ENOMEM, "cache: out of memory");
    s->what = what;
    s->sels = sels;
    s->fn = fn;
    s->user = user;
    s->view = view_of(c, what, sels, now);
    s->next = c->subs;
    c->subs = s;
    c->nsubs++;
    *out = s;
    return 0;
}

static void reap(sg_cache *c)
{
    sg_cache_sub **pp = &c->subs;
    while (*pp != NULL) {
        sg_cache_sub *s = *pp;
        if (s->dead) {
            *pp = s->next;
            free(s);
        } else {
            pp = &s->next;
        }
    }
}

void sg_cache_unsubscribe(sg_cache *c, sg_cache_sub *sub)
{
    if (sub == NULL || sub->dead)
        return;
    sub->dead = true;
    c->nsubs--;
    if (c->flushing == 0)
        reap(c);
}

void sg_cache_flush(sg_cache *c, int64_t now)
{
    c->flushing++;
    for (sg_cache_sub *s = c->subs; s != NULL; s = s->next) {
        if (s->dead)
            continue;
        uint64_t v = view_of(c, s->what, s->sels, now);
        if (v == s->view)
            continue;
        s->view = v;
        s->fn(c, s, s->user);
    }
    c->flushing--;
    if (c->flushing == 0)
        reap(c);
}
