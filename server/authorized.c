/*
 * The authorisation index: an immutable entry snapshot (swapped under a
 * mutex, reference-counted) with per-agent authorised sets cached inside
 * it, and a cache of agent records guarded by its own mutex. See
 * authorized.h for the rules.
 */
#include "server/authorized.h"

#include "common/log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ hash map */

/* A small string-keyed chained hash map; values are owned by the caller. */
typedef struct hnode {
    struct hnode *next;
    char *key;
    void *val;
} hnode;

typedef struct hmap {
    hnode **b;
    size_t nb;
    size_t n;
} hmap;

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static void *hmap_get(const hmap *m, const char *key)
{
    if (m->nb == 0)
        return NULL;
    for (hnode *n = m->b[hash_str(key) % m->nb]; n; n = n->next)
        if (strcmp(n->key, key) == 0)
            return n->val;
    return NULL;
}

static int hmap_grow(hmap *m)
{
    size_t nb = m->nb ? m->nb * 2 : 64;
    hnode **b = calloc(nb, sizeof(*b));
    if (!b)
        return SG_ENOMEM;
    for (size_t i = 0; i < m->nb; i++) {
        hnode *n = m->b[i];
        while (n) {
            hnode *next = n->next;
            size_t k = hash_str(n->key) % nb;
            n->next = b[k];
            b[k] = n;
            n = next;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
    return 0;
}

/* Inserts key -> val; the key must not be present. */
static int hmap_put(hmap *m, const char *key, void *val)
{
    if (m->n + 1 > m->nb * 2 && hmap_grow(m) < 0)
        return SG_ENOMEM;
    hnode *n = malloc(sizeof(*n));
    if (!n)
        return SG_ENOMEM;
    n->key = strdup(key);
    if (!n->key) {
        free(n);
        return SG_ENOMEM;
    }
    n->val = val;
    size_t k = hash_str(key) % m->nb;
    n->next = m->b[k];
    m->b[k] = n;
    m->n++;
    return 0;
}

/* Removes key and returns its value (NULL when absent). */
static void *hmap_del(hmap *m, const char *key)
{
    if (m->nb == 0)
        return NULL;
    for (hnode **p = &m->b[hash_str(key) % m->nb]; *p; p = &(*p)->next) {
        if (strcmp((*p)->key, key) == 0) {
            hnode *n = *p;
            void *val = n->val;
            *p = n->next;
            free(n->key);
            free(n);
            m->n--;
            return val;
        }
    }
    return NULL;
}

/* Frees every node, calling fn on each value. */
static void hmap_clear(hmap *m, void (*fn)(void *))
{
    for (size_t i = 0; i < m->nb; i++) {
        hnode *n = m->b[i];
        while (n) {
            hnode *next = n->next;
            if (fn)
                fn(n->val);
            free(n->key);
            free(n);
            n = next;
        }
    }
    free(m->b);
    m->b = NULL;
    m->nb = 0;
    m->n = 0;
}

/* ------------------------------------------------------------ snapshot */

/* Per-agent cache bound: beyond it the cache is emptied and refilled on demand. */
#define VIEW_CACHE_MAX 100000

typedef struct snapshot {
    atomic_long refs;
    sg_entry *entries; /* sorted by id */
    size_t n;
    size_t *by_parent; /* entry indexes sorted by parent_id */
    size_t *aliases;   /* indexes of entries parented to the server ID */
    size_t naliases;
    int64_t revision;
    pthread_mutex_t mu; /* guards views */
    hmap views;         /* agent id -> sg_authz_view* (holding no snapshot ref) */
} snapshot;

struct sg_authz_view {
    atomic_long refs; /* one for the cache, one per caller holding it */
    snapshot *snap;
    const sg_entry **entries; /* sorted by id */
    size_t n;
};

struct sg_authz {
    char *td;
    char *server_id;
    pthread_mutex_t mu; /* guards cur */
    snapshot *cur;
    pthread_mutex_t amu; /* guards agents and agents_gen */
    hmap agents;         /* agent id -> sg_agent_rec* */
    uint64_t agents_gen;
};

static void view_free_raw(void *p)
{
    sg_authz_view *v = p;
    if (v) {
        free(v->entries);
        free(v);
    }
}

/* Drops one reference of a view (not of its snapshot). */
static void view_unref(void *p)
{
    sg_authz_view *v = p;
    if (v && atomic_fetch_sub(&v->refs, 1) == 1)
        view_free_raw(v);
}

static void snap_unref(snapshot *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    hmap_clear(&s->views, view_unref);
    pthread_mutex_destroy(&s->mu);
    sg_entry_list_free(s->entries, s->n);
    free(s->by_parent);
    free(s->aliases);
    free(s);
}

/* qsort has no context argument; the parent index is sorted through this thread-local. */
static _Thread_local const sg_entry *sort_entries;

static int cmp_by_parent(const void *a, const void *b)
{
    const sg_entry *x = &sort_entries[*(const size_t *)a];
    const sg_entry *y = &sort_entries[*(const size_t *)b];
    return strcmp(x->parent_id, y->parent_id);
}

static int cmp_entry_id(const void *a, const void *b)
{
    return strcmp(((const sg_entry *)a)->id, ((const sg_entry *)b)->id);
}

static int cmp_entry_ptr_id(const void *a, const void *b)
{
    const sg_entry *x = *(const sg_entry *const *)a;
    const sg_entry *y = *(const sg_entry *const *)b;
    return strcmp(x->id, y->id);
}

static snapshot *snap_build(const char *server_id, const sg_entry *entries, size_t n,
                            int64_t revision, sg_err *err)
{
    snapshot *s = calloc(1, sizeof(*s));
    if (!s) {
        sg_err_set(err, SG_ENOMEM, "out of memory building the entry index");
        return NULL;
    }
    atomic_init(&s->refs, 1);
    pthread_mutex_init(&s->mu, NULL);
    s->revision = revision;
    if (n > 0) {
        s->entries = calloc(n, sizeof(*s->entries));
        s->by_parent = calloc(n, sizeof(*s->by_parent));
        s->aliases = calloc(n, sizeof(*s->aliases));
        if (!s->entries || !s->by_parent || !s->aliases)
            goto oom;
    }
    for (size_t i = 0; i < n; i++) {
        if (!entries[i].spiffe_id || !entries[i].parent_id) {
            sg_err_set(err, SG_EINVAL, "entry \"%s\" has no SPIFFE ID or parent ID", entries[i].id);
            s->n = i;
            snap_unref(s);
            return NULL;
        }
        if (sg_entry_copy(&s->entries[i], &entries[i]) < 0) {
            s->n = i;
            goto oom;
        }
        s->n = i + 1;
    }
    if (n > 0)
        qsort(s->entries, n, sizeof(*s->entries), cmp_entry_id);
    for (size_t i = 0; i < n; i++) {
        s->by_parent[i] = i;
        if (strcmp(s->entries[i].parent_id, server_id) == 0)
            s->aliases[s->naliases++] = i;
    }
    sort_entries = s->entries;
    if (n > 0)
        qsort(s->by_parent, n, sizeof(*s->by_parent), cmp_by_parent);
    sort_entries = NULL;
    return s;
oom:
    sg_err_set(err, SG_ENOMEM, "out of memory building the entry index");
    snap_unref(s);
    return NULL;
}

/* First position in by_parent whose parent_id is >= id. */
static size_t lower_bound_parent(const snapshot *s, const char *id)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(s->entries[s->by_parent[mid]].parent_id, id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool alias_matches(const sg_entry *e, const char *agent_id, const sg_selector *sel,
                          size_t nsel)
{
    if (e->nselectors == 0)
        return false;
    for (size_t i = 0; i < e->nselectors; i++) {
        const sg_selector *w = &e->selectors[i];
        bool found = strcmp(w->type, "spiffe_id") == 0 && strcmp(w->value, agent_id) == 0;
        for (size_t j = 0; !found && j < nsel; j++)
            found = strcmp(w->type, sel[j].type) == 0 && strcmp(w->value, sel[j].value) == 0;
        if (!found)
            return false;
    }
    return true;
}

/* Computes the authorised set of agent_id in s (breadth-first over parent links). */
static sg_authz_view *view_compute(const snapshot *s, const char *agent_id, const sg_selector *sel,
                                   size_t nsel, sg_err *err)
{
    sg_authz_view *v = calloc(1, sizeof(*v));
    bool *in = s->n ? calloc(s->n, sizeof(*in)) : NULL;
    /* Queue of entry indexes whose SPIFFE IDs still need their children
     * collected; each entry enters at most once, which makes cycles safe. */
    size_t *queue = s->n ? calloc(s->n, sizeof(*queue)) : NULL;
    if (!v || (s->n && (!in || !queue))) {
        free(v);
        free(in);
        free(queue);
        sg_err_set(err, SG_ENOMEM, "out of memory computing authorised entries");
        return NULL;
    }
    size_t qn = 0, qi = 0;
    const char *cur = agent_id;
    for (;;) {
        for (size_t k = lower_bound_parent(s, cur); k < s->n; k++) {
            size_t idx = s->by_parent[k];
            if (strcmp(s->entries[idx].parent_id, cur) != 0)
                break;
            if (!in[idx]) {
                in[idx] = true;
                queue[qn++] = idx;
            }
        }
        if (cur == agent_id) {
            for (size_t k = 0; k < s->naliases; k++) {
                size_t idx = s->aliases[k];
                if (!in[idx] && alias_matches(&s->entries[idx], agent_id, sel, nsel)) {
                    in[idx] = true;
                    queue[qn++] = idx;
                }
            }
        }
        if (qi == qn)
            break;
        cur = s->entries[queue[qi++]].spiffe_id;
    }
    free(queue);
    v->entries = qn ? calloc(qn, sizeof(*v->entries)) : NULL;
    if (qn && !v->entries) {
        free(in);
        free(v);
        sg_err_set(err, SG_ENOMEM, "out of memory computing authorised entries");
        return NULL;
    }
    /* Walking the id-sorted entries in order yields a sorted view. */
    for (size_t i = 0; i < s->n; i++)
        if (in[i])
            v->entries[v->n++] = &s->entries[i];
    free(in);
    return v;
}

/* ------------------------------------------------------------ index */

int sg_authz_new(sg_authz **out, const char *td, sg_err *err)
{
    *out = NULL;
    sg_authz *a = calloc(1, sizeof(*a));
    if (!a)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    size_t idlen = strlen(td) + sizeof("spiffe:///spire/server");
    a->td = strdup(td);
    a->server_id = malloc(idlen);
    if (!a->td || !a->server_id) {
        free(a->td);
        free(a->server_id);
        free(a);
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    snprintf(a->server_id, idlen, "spiffe://%s/spire/server", td);
    pthread_mutex_init(&a->mu, NULL);
    pthread_mutex_init(&a->amu, NULL);
    a->cur = snap_build(a->server_id, NULL, 0, 0, err);
    if (!a->cur) {
        sg_authz_free(a);
        return SG_ENOMEM;
    }
    *out = a;
    return 0;
}

static void agent_rec_free(void *p)
{
    sg_agent_rec *r = p;
    if (r) {
        sg_agent_rec_cleanup(r);
        free(r);
    }
}

void sg_authz_free(sg_authz *a)
{
    if (!a)
        return;
    snap_unref(a->cur);
    hmap_clear(&a->agents, agent_rec_free);
    pthread_mutex_destroy(&a->mu);
    pthread_mutex_destroy(&a->amu);
    free(a->td);
    free(a->server_id);
    free(a);
}

int sg_authz_set_entries(sg_authz *a, const sg_entry *entries, size_t n, int64_t revision,
                         sg_err *err)
{
    snapshot *s = snap_build(a->server_id, entries, n, revision, err);
    if (!s)
        return err && err->code ? err->code : SG_ENOMEM;
    pthread_mutex_lock(&a->mu);
    snapshot *old = a->cur;
    a->cur = s;
    pthread_mutex_unlock(&a->mu);
    snap_unref(old);
    return 0;
}

int sg_authz_reload(sg_authz *a, sg_datastore *ds, sg_err *err)
{
    sg_entry *list = NULL;
    size_t n = 0;
    int64_t rev = 0;
    int rc = sg_ds_entry_revision(ds, &rev, err);
    if (rc < 0)
        return rc;
    rc = sg_ds_entry_list(ds, NULL, &list, &n, err);
    if (rc < 0)
        return rc;
    rc = sg_authz_set_entries(a, list, n, rev, err);
    sg_entry_list_free(list, n);
    if (rc == 0)
        sg_log_debug("entry index reloaded entries=%zu revision=%lld", n, (long long)rev);
    return rc;
}

static snapshot *snap_get(sg_authz *a)
{
    pthread_mutex_lock(&a->mu);
    snapshot *s = a->cur;
    atomic_fetch_add(&s->refs, 1);
    pthread_mutex_unlock(&a->mu);
    return s;
}

int64_t sg_authz_revision(sg_authz *a)
{
    pthread_mutex_lock(&a->mu);
    int64_t rev = a->cur->revision;
    pthread_mutex_unlock(&a->mu);
    return rev;
}

int sg_authz_view_get(sg_authz *a, const char *agent_id, const sg_selector *sel, size_t nsel,
                      sg_authz_view **out, sg_err *err)
{
    *out = NULL;
    /* Every view handed out holds one reference to itself and one to its
     * snapshot, so neither is freed while a caller uses it. */
    snapshot *s = snap_get(a);
    pthread_mutex_lock(&s->mu);
    sg_authz_view *v = hmap_get(&s->views, agent_id);
    if (v)
        atomic_fetch_add(&v->refs, 1);
    pthread_mutex_unlock(&s->mu);
    if (v) {
        *out = v;
        return 0;
    }
    /* Computed outside the lock; when another thread wins the race, its view is kept. */
    sg_authz_view *nv = view_compute(s, agent_id, sel, nsel, err);
    if (!nv) {
        snap_unref(s);
        return SG_ENOMEM;
    }
    nv->snap = s;
    atomic_init(&nv->refs, 2);
    pthread_mutex_lock(&s->mu);
    v = hmap_get(&s->views, agent_id);
    if (v) {
        atomic_fetch_add(&v->refs, 1);
        view_free_raw(nv);
    } else {
        if (s->views.n >= VIEW_CACHE_MAX)
            hmap_clear(&s->views, view_unref);
        if (hmap_put(&s->views, agent_id, nv) < 0) {
            pthread_mutex_unlock(&s->mu);
            view_free_raw(nv);
            snap_unref(s);
            return sg_err_set(err, SG_ENOMEM, "out of memory caching authorised entries");
        }
        v = nv;
    }
    pthread_mutex_unlock(&s->mu);
    *out = v;
    return 0;
}

size_t sg_authz_view_count(const sg_authz_view *v)
{
    return v->n;
}

const sg_entry *sg_authz_view_entry(const sg_authz_view *v, size_t i)
{
    return i < v->n ? v->entries[i] : NULL;
}

int64_t sg_authz_view_revision(const sg_authz_view *v)
{
    return v->snap->revision;
}

const sg_entry *sg_authz_view_find(const sg_authz_view *v, const char *entry_id)
{
    sg_entry key;
    memset(&key, 0, sizeof(key));
    size_t len = strlen(entry_id);
    if (len > SG_ENTRY_ID_LEN || v->n == 0)
        return NULL;
    memcpy(key.id, entry_id, len + 1);
    const sg_entry *kp = &key;
    const sg_entry **hit = bsearch(&kp, v->entries, v->n, sizeof(*v->entries), cmp_entry_ptr_id);
    return hit ? *hit : NULL;
}

void sg_authz_view_release(sg_authz_view *v)
{
    if (!v)
        return;
    snapshot *s = v->snap;
    view_unref(v);
    snap_unref(s);
}

/* Drops the cached view of agent_id (or every view) from the current snapshot. */
static void forget_view(sg_authz *a, const char *agent_id)
{
    snapshot *s = snap_get(a);
    pthread_mutex_lock(&s->mu);
    if (agent_id)
        view_unref(hmap_del(&s->views, agent_id));
    else
        hmap_clear(&s->views, view_unref);
    pthread_mutex_unlock(&s->mu);
    snap_unref(s);
}

void sg_authz_forget_agent(sg_authz *a, const char *agent_id)
{
    pthread_mutex_lock(&a->amu);
    a->agents_gen++;
    if (agent_id)
        agent_rec_free(hmap_del(&a->agents, agent_id));
    else
        hmap_clear(&a->agents, agent_rec_free);
    pthread_mutex_unlock(&a->amu);
    forget_view(a, agent_id);
}

/* ------------------------------------------------------------ agents */

static int sel_copy(sg_selector **dst, size_t *ndst, const sg_selector *src, size_t n)
{
    *dst = NULL;
    *ndst = 0;
    if (n == 0)
        return 0;
    sg_selector *d = calloc(n, sizeof(*d));
    if (!d)
        return SG_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        d[i].type = strdup(src[i].type);
        d[i].value = strdup(src[i].value);
        if (!d[i].type || !d[i].value) {
            for (size_t j = 0; j <= i; j++)
                sg_selector_cleanup(&d[j]);
            free(d);
            return SG_ENOMEM;
        }
    }
    *dst = d;
    *ndst = n;
    return 0;
}

static sg_agent_rec *agent_rec_dup(const sg_agent_rec *src)
{
    sg_agent_rec *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    *r = *src;
    r->spiffe_id = strdup(src->spiffe_id ? src->spiffe_id : "");
    r->attestation_type = strdup(src->attestation_type ? src->attestation_type : "");
    r->selectors = NULL;
    r->nselectors = 0;
    if (!r->spiffe_id || !r->attestation_type ||
        sel_copy(&r->selectors, &r->nselectors, src->selectors, src->nselectors) < 0) {
        sg_agent_rec_cleanup(r);
        free(r);
        return NULL;
    }
    return r;
}

/* Caches a copy of rec unless the cache was invalidated since gen was read. */
static void agent_cache_fill(sg_authz *a, const sg_agent_rec *rec, uint64_t gen)
{
    sg_agent_rec *copy = agent_rec_dup(rec);
    if (!copy)
        return;
    pthread_mutex_lock(&a->amu);
    if (a->agents_gen == gen && !hmap_get(&a->agents, rec->spiffe_id) &&
        hmap_put(&a->agents, rec->spiffe_id, copy) == 0)
        copy = NULL;
    pthread_mutex_unlock(&a->amu);
    agent_rec_free(copy);
}

int sg_authz_agent_auth(sg_authz *a, sg_datastore *ds, const char *agent_id, const char *serial,
                        sg_authz_view **view, sg_err *err)
{
    if (view)
        *view = NULL;
    pthread_mutex_lock(&a->amu);
    sg_agent_rec *r = hmap_get(&a->agents, agent_id);
    uint64_t gen = a->agents_gen;
    pthread_mutex_unlock(&a->amu);
    if (!r) {
        if (!ds)
            return sg_err_set(err, SG_EPERM, "agent is not attested or was evicted");
        sg_agent_rec rec;
        memset(&rec, 0, sizeof(rec));
        sg_err e;
        sg_err_clear(&e);
        int rc = sg_ds_agent_get(ds, agent_id, &rec, &e);
        if (rc == SG_ENOENT)
            return sg_err_set(err, SG_EPERM, "agent is not attested or was evicted");
        if (rc < 0)
            return sg_err_set(err, rc, "agent lookup failed: %s", e.msg);
        agent_cache_fill(a, &rec, gen);
        sg_agent_rec_cleanup(&rec);
    }

    /* Decide under the lock on the cached record (it may have just been filled). */
    sg_selector *sel = NULL;
    size_t nsel = 0;
    bool clear_prev = false;
    int rc = 0;
    pthread_mutex_lock(&a->amu);
    r = hmap_get(&a->agents, agent_id);
    if (!r) {
        rc = sg_err_set(err, SG_EPERM, "agent is not attested or was evicted");
    } else if (r->banned) {
        rc = sg_err_set(err, SG_EPERM, "agent is banned");
    } else if (r->serial[0] && strcmp(serial, r->serial) == 0) {
        clear_prev = r->prev_serial[0] != 0;
    } else if (r->prev_serial[0] && strcmp(serial, r->prev_serial) == 0) {
        /* A renewal reply may have been lost: the old certificate stays
         * good until the agent first presents the new one. */
    } else {
        rc = sg_err_set(err, SG_EPERM, "agent certificate serial %s is not current", serial);
    }
    if (rc == 0 && view && sel_copy(&sel, &nsel, r->selectors, r->nselectors) < 0)
        rc = sg_err_set(err, SG_ENOMEM, "out of memory");
    sg_agent_rec *upd = NULL;
    if (rc == 0 && clear_prev) {
        r->prev_serial[0] = 0;
        upd = agent_rec_dup(r);
    }
    pthread_mutex_unlock(&a->amu);

    if (upd && ds) {
        sg_err e;
        if (sg_ds_agent_put(ds, upd, &e) < 0)
            sg_log_warn("could not clear previous serial of agent %s: %s", agent_id, e.msg);
    }
    agent_rec_free(upd);
    if (rc == 0 && view)
        rc = sg_authz_view_get(a, agent_id, sel, nsel, view, err);
    for (size_t i = 0; i < nsel; i++)
        sg_selector_cleanup(&sel[i]);
    free(sel);
    return rc;
}

int sg_authz_agent_view(sg_authz *a, sg_datastore *ds, const char *agent_id, sg_authz_view **view,
                        sg_err *err)
{
    *view = NULL;
    sg_selector *sel = NULL;
    size_t nsel = 0;
    int rc = 0;
    bool banned = false;
    pthread_mutex_lock(&a->amu);
    sg_agent_rec *r = hmap_get(&a->agents, agent_id);
    uint64_t gen = a->agents_gen;
    if (r) {
        banned = r->banned;
        if (!banned && sel_copy(&sel, &nsel, r->selectors, r->nselectors) < 0)
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    pthread_mutex_unlock(&a->amu);
    if (!r) {
        if (!ds)
            return sg_err_set(err, SG_ENOENT, "agent %s has no record", agent_id);
        sg_agent_rec rec;
        memset(&rec, 0, sizeof(rec));
        sg_err e;
        sg_err_clear(&e);
        rc = sg_ds_agent_get(ds, agent_id, &rec, &e);
        if (rc == SG_ENOENT)
            return sg_err_set(err, SG_ENOENT, "agent %s has no record", agent_id);
        if (rc < 0)
            return sg_err_set(err, rc, "agent lookup failed: %s", e.msg);
        agent_cache_fill(a, &rec, gen);
        banned = rec.banned;
        if (!banned && sel_copy(&sel, &nsel, rec.selectors, rec.nselectors) < 0)
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
        sg_agent_rec_cleanup(&rec);
    }
    if (rc == 0 && banned)
        rc = sg_err_set(err, SG_EPERM, "agent %s is banned", agent_id);
    if (rc == 0)
        rc = sg_authz_view_get(a, agent_id, sel, nsel, view, err);
    for (size_t i = 0; i < nsel; i++)
        sg_selector_cleanup(&sel[i]);
    free(sel);
    return rc;
}

int sg_authz_agent_put(sg_authz *a, sg_datastore *ds, const sg_agent_rec *rec, sg_err *err)
{
    if (ds) {
        int rc = sg_ds_agent_put(ds, rec, err);
        if (rc < 0)
            return rc;
    }
    sg_authz_forget_agent(a, rec->spiffe_id);
    pthread_mutex_lock(&a->amu);
    uint64_t gen = a->agents_gen;
    pthread_mutex_unlock(&a->amu);
    agent_cache_fill(a, rec, gen);
    return 0;
}

int sg_authz_agent_renew(sg_authz *a, sg_datastore *ds, const char *agent_id,
                         const char *new_serial, int64_t expires_at, sg_err *err)
{
    sg_agent_rec rec;
    memset(&rec, 0, sizeof(rec));
    int rc;
    pthread_mutex_lock(&a->amu);
    sg_agent_rec *r = hmap_get(&a->agents, agent_id);
    sg_agent_rec *cur = r ? agent_rec_dup(r) : NULL;
    pthread_mutex_unlock(&a->amu);
    if (cur) {
        rec = *cur;
        free(cur);
    } else if (ds) {
        rc = sg_ds_agent_get(ds, agent_id, &rec, err);
        if (rc < 0)
            return rc == SG_ENOENT
                       ? sg_err_set(err, SG_EPERM, "agent is not attested or was evicted")
                       : rc;
    } else {
        return sg_err_set(err, SG_EPERM, "agent is not attested or was evicted");
    }
    memcpy(rec.prev_serial, rec.serial, sizeof(rec.prev_serial));
    snprintf(rec.serial, sizeof(rec.serial), "%s", new_serial);
    rec.expires_at = expires_at;
    rc = sg_authz_agent_put(a, ds, &rec, err);
    sg_agent_rec_cleanup(&rec);
    return rc;
}
