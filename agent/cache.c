/*
 * Loop-thread-only store of entries, their SVIDs and the trust bundle,
 * plus the subscribers (open Workload API streams). Entries are kept
 * sorted by id with their SVIDs alongside, so a sync keeps the SVIDs of
 * unchanged entries and lookups are binary searches.
 */
#include "agent/cache.h"

#include "common/log.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sg_cache_sub {
    sg_cache_sub *next, *prev; /* unsubscribing is O(1): a thousand streams come and go */
    sg_cache_watch what;
    const sg_selector_set *sels;
    sg_cache_notify_fn fn;
    void *user;
    uint64_t view;
    bool dead;
};

/* A foreign bundle with the encodings the Workload API sends. */
typedef struct fed_bundle {
    sg_cache_federated pub;
    sg_bundle b;
    char name[SG_TRUST_DOMAIN_MAX + 16];
    uint8_t *der;
    char *jwks;
    uint64_t gen; /* changes when its authorities change */
} fed_bundle;

#define EMPTY_JWKS "{\"keys\":[]}"

struct sg_cache {
    char bundle_name[SG_TRUST_DOMAIN_MAX + 16];
    sg_bundle own_jwt; /* the own trust domain's JWT keys (no X.509 part) */
    char *own_jwks;    /* NULL: EMPTY_JWKS */
    bool has_jwt;
    uint64_t jwt_gen;
    fed_bundle **fed; /* sorted by trust domain */
    size_t nfed;
    uint64_t fed_gen;
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
    size_t ndead; /* unsubscribed during a flush, unlinked after it */
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

static void fed_free(fed_bundle *f)
{
    if (f == NULL)
        return;
    sg_bundle_cleanup(&f->b);
    free(f->der);
    free(f->jwks);
    free(f);
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
    c->own_jwt.trust_domain = strdup(trust_domain);
    if (c->own_jwt.trust_domain == NULL) {
        free(c);
        return sg_err_set(err, SG_ENOMEM, "cache: out of memory");
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
    sg_bundle_cleanup(&c->own_jwt);
    free(c->own_jwks);
    for (size_t i = 0; i < c->nfed; i++)
        fed_free(c->fed[i]);
    free(c->fed);
    sg_cache_sub *s = c->subs;
    while (s != NULL) {
        sg_cache_sub *next = s->next;
        free(s);
        s = next;
    }
    free(c);
}

static int entry_str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
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

int sg_cache_match_entries(const sg_cache *c, const sg_selector_set *sels,
                           const sg_agent_entry ***out, size_t *n)
{
    const sg_agent_entry **m = malloc((c->n ? c->n : 1) * sizeof(*m));
    if (m == NULL)
        return SG_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++) {
        const sg_agent_entry *e = &c->entries[i];
        if (sg_selector_set_matches(sels, e->selectors, e->nselectors))
            m[k++] = e;
    }
    *out = m;
    *n = k;
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

/* ------------------------------------------------------------ JWT keys, federation */

static void jwt_keys_free(sg_jwt_key *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(keys[i].kid);
        sg_der_cleanup(&keys[i].spki);
    }
    free(keys);
}

int sg_cache_set_jwt_keys(sg_cache *c, sg_jwt_key *keys, size_t n, sg_err *err)
{
    sg_bundle nb;
    memset(&nb, 0, sizeof(nb));
    nb.trust_domain = c->own_jwt.trust_domain;
    nb.jwt = keys;
    nb.njwt = n;
    if (c->has_jwt && sg_bundle_same_keys(&nb, &c->own_jwt)) {
        jwt_keys_free(keys, n);
        return 0;
    }
    char *jwks = NULL;
    int rc = sg_bundle_jwt_jwks(&nb, &jwks, err);
    if (rc != 0) {
        jwt_keys_free(keys, n);
        return rc;
    }
    jwt_keys_free(c->own_jwt.jwt, c->own_jwt.njwt);
    c->own_jwt.jwt = keys;
    c->own_jwt.njwt = n;
    free(c->own_jwks);
    c->own_jwks = jwks;
    c->has_jwt = true;
    c->jwt_gen++;
    return 0;
}

bool sg_cache_has_jwt_keys(const sg_cache *c)
{
    return c->has_jwt;
}

const char *sg_cache_jwt_jwks(const sg_cache *c, size_t *len)
{
    const char *j = c->own_jwks != NULL ? c->own_jwks : EMPTY_JWKS;
    *len = strlen(j);
    return j;
}

static long find_fed(fed_bundle *const *fed, size_t n, const char *td)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(fed[mid]->b.trust_domain, td);
        if (r == 0)
            return (long)mid;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static int fed_cmp(const void *a, const void *b)
{
    const fed_bundle *x = *(fed_bundle *const *)a, *y = *(fed_bundle *const *)b;
    return strcmp(x->b.trust_domain, y->b.trust_domain);
}

/* Wraps bundle b (taken) with its encodings. */
static int fed_make(sg_bundle *b, fed_bundle **out, sg_err *err)
{
    fed_bundle *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        sg_bundle_cleanup(b);
        return sg_err_set(err, SG_ENOMEM, "cache: out of memory");
    }
    f->b = *b;
    memset(b, 0, sizeof(*b));
    snprintf(f->name, sizeof(f->name), "spiffe://%s", f->b.trust_domain);
    size_t len = 0;
    for (size_t i = 0; i < f->b.nx509; i++)
        len += f->b.x509[i].len;
    f->der = malloc(len ? len : 1);
    if (f->der == NULL) {
        fed_free(f);
        return sg_err_set(err, SG_ENOMEM, "cache: out of memory");
    }
    size_t off = 0;
    for (size_t i = 0; i < f->b.nx509; i++) {
        memcpy(f->der + off, f->b.x509[i].data, f->b.x509[i].len);
        off += f->b.x509[i].len;
    }
    int rc = sg_bundle_jwt_jwks(&f->b, &f->jwks, err);
    if (rc != 0) {
        fed_free(f);
        return rc;
    }
    f->pub.name = f->name;
    f->pub.bundle = &f->b;
    f->pub.der = f->der;
    f->pub.der_len = len;
    f->pub.jwks = f->jwks;
    f->pub.jwks_len = strlen(f->jwks);
    *out = f;
    return 0;
}

int sg_cache_set_federated(sg_cache *c, sg_bundle *b, size_t n, sg_err *err)
{
    fed_bundle **nf = calloc(n ? n : 1, sizeof(*nf));
    size_t k = 0;
    int rc = 0;
    if (nf == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "cache: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (b[i].trust_domain == NULL || b[i].trust_domain[0] == '\0' ||
            strcmp(b[i].trust_domain, c->own_jwt.trust_domain) == 0) {
            sg_log_warn("ignoring a federated bundle for trust domain \"%.100s\"",
                        b[i].trust_domain ? b[i].trust_domain : "");
            sg_bundle_cleanup(&b[i]);
            continue;
        }
        sg_err e;
        sg_err_clear(&e);
        fed_bundle *f = NULL;
        rc = fed_make(&b[i], &f, &e);
        if (rc == SG_ENOMEM) {
            sg_err_set(err, rc, "%s", e.msg);
            goto done;
        }
        if (rc != 0) {
            sg_log_warn("ignoring the federated bundle of %.100s: %s", b[i].trust_domain, e.msg);
            rc = 0;
            continue;
        }
        nf[k++] = f;
    }
    qsort(nf, k, sizeof(*nf), fed_cmp);
    /* Duplicates: keep the first of each trust domain. */
    size_t w = 0;
    for (size_t i = 0; i < k; i++) {
        if (w > 0 && strcmp(nf[w - 1]->b.trust_domain, nf[i]->b.trust_domain) == 0) {
            fed_free(nf[i]);
            continue;
        }
        nf[w++] = nf[i];
    }
    k = w;
    for (size_t i = 0; i < k; i++) {
        long j = find_fed(c->fed, c->nfed, nf[i]->b.trust_domain);
        if (j >= 0 && sg_bundle_same_keys(&c->fed[j]->b, &nf[i]->b))
            nf[i]->gen = c->fed[j]->gen;
        else
            nf[i]->gen = ++c->fed_gen;
    }
    for (size_t i = 0; i < c->nfed; i++)
        fed_free(c->fed[i]);
    free(c->fed);
    c->fed = nf;
    c->nfed = k;
    nf = NULL;
    k = 0;
done:
    for (size_t i = 0; i < k; i++)
        fed_free(nf[i]);
    free(nf);
    for (size_t i = 0; i < n; i++)
        sg_bundle_cleanup(&b[i]);
    free(b);
    return rc;
}

const sg_cache_federated *sg_cache_federated_get(const sg_cache *c, const char *td)
{
    long j = find_fed(c->fed, c->nfed, td);
    return j >= 0 ? &c->fed[j]->pub : NULL;
}

size_t sg_cache_nfederated(const sg_cache *c)
{
    return c->nfed;
}

const sg_bundle *sg_cache_jwt_bundle(const sg_cache *c, const char *td)
{
    if (td == NULL)
        return NULL;
    if (strcmp(td, c->own_jwt.trust_domain) == 0)
        return c->has_jwt ? &c->own_jwt : NULL;
    long j = find_fed(c->fed, c->nfed, td);
    return j >= 0 ? &c->fed[j]->b : NULL;
}

int sg_cache_federates_of(const sg_cache *c, const sg_selector_set *sels, const char ***out,
                          size_t *n)
{
    const char **tds = NULL;
    size_t k = 0, cap = 0;
    for (size_t i = 0; i < c->n; i++) {
        const sg_agent_entry *e = &c->entries[i];
        if (e->nfederates == 0 || !sg_selector_set_matches(sels, e->selectors, e->nselectors))
            continue;
        for (size_t f = 0; f < e->nfederates; f++) {
            bool dup = false;
            for (size_t x = 0; x < k && !dup; x++)
                dup = strcmp(tds[x], e->federates_with[f]) == 0;
            if (dup)
                continue;
            if (k == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                const char **nt = realloc(tds, ncap * sizeof(*nt));
                if (nt == NULL) {
                    free(tds);
                    return SG_ENOMEM;
                }
                tds = nt;
                cap = ncap;
            }
            tds[k++] = e->federates_with[f];
        }
    }
    if (k > 1)
        qsort(tds, k, sizeof(*tds), entry_str_cmp);
    *out = tds;
    *n = k;
    return 0;
}

const char *sg_cache_trust_domain(const sg_cache *c)
{
    return c->own_jwt.trust_domain;
}

const sg_agent_entry *sg_cache_entry(const sg_cache *c, const char *id)
{
    long i = find_entry(c->entries, c->n, id);
    return i >= 0 ? &c->entries[i] : NULL;
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
    if (what == SG_CACHE_WATCH_JWT_BUNDLES)
        h = fnv(h, &c->jwt_gen, sizeof(c->jwt_gen));
    else
        h = fnv(h, &c->bundle_gen, sizeof(c->bundle_gen));
    size_t matched = 0, usable = 0;
    for (size_t i = 0; i < c->n; i++) {
        const sg_agent_entry *e = &c->entries[i];
        if (!sg_selector_set_matches(sels, e->selectors, e->nselectors))
            continue;
        matched++;
        /* Foreign bundles the caller federates with: added, changed or gone. */
        for (size_t f = 0; f < e->nfederates; f++) {
            long j = find_fed(c->fed, c->nfed, e->federates_with[f]);
            uint64_t g = j >= 0 ? c->fed[j]->gen : 0;
            h = fnv(h, e->federates_with[f], strlen(e->federates_with[f]) + 1);
            h = fnv(h, &g, sizeof(g));
        }
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
    if (c->subs != NULL)
        c->subs->prev = s;
    c->subs = s;
    c->nsubs++;
    *out = s;
    return 0;
}

static void unlink_sub(sg_cache *c, sg_cache_sub *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        c->subs = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    free(s);
}

/* Unlinks what was unsubscribed while a flush walked the list. */
static void reap(sg_cache *c)
{
    sg_cache_sub *s = c->subs;
    while (s != NULL && c->ndead > 0) {
        sg_cache_sub *next = s->next;
        if (s->dead) {
            unlink_sub(c, s);
            c->ndead--;
        }
        s = next;
    }
}

void sg_cache_unsubscribe(sg_cache *c, sg_cache_sub *sub)
{
    if (sub == NULL || sub->dead)
        return;
    sub->dead = true;
    c->nsubs--;
    if (c->flushing == 0)
        unlink_sub(c, sub);
    else
        c->ndead++;
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
    if (c->flushing == 0 && c->ndead > 0)
        reap(c);
}
