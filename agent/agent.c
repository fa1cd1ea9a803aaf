/*
 * sigil-agent lifecycle on one libuv loop: Workload API socket (accepted
 * here so each connection's SO_PEERCRED is known), the rpc server's events
 * run under the loop's state lock, node attestation and sync with backoff, batch
 * minting of workload SVIDs, rotation at half-life, and a bounded stop.
 */
#include "agent/agent.h"

#include "agent/cache.h"
#include "agent/jwt_cache.h"
#include "agent/node_client.h"
#include "agent/peer.h"
#include "agent/status_api.h"
#include "agent/workload_api.h"
#include "attestors/attestor.h"
#include "common/fsutil.h"
#include "common/key.h"
#include "common/log.h"
#include "common/rpc.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define SYNC_INTERVAL_MS  5000
#define MINT_RETRY_MS     10000 /* after the server refused an entry's SVID */
#define BACKOFF_START_MS  1000
#define BACKOFF_CAP_MS    30000
#define SWEEP_INTERVAL_MS 10000
#define STOP_POLL_MS      20
#define STOP_DEADLINE_MS  4500
#define MINT_BATCH_MAX    4096
#define MAX_ATTESTORS     8
#define JWT_QUEUE_MAX     4096 /* JWT-SVID requests waiting for the server */
#define JWT_JOB_MAX       64   /* JWT-SVID requests per node job */

typedef struct node_job node_job;

/* Another caller waiting for the same (entry, audience set) as a jwt_req. */
typedef struct jwt_waiter {
    struct jwt_waiter *next;
    sg_jwt_mint_cb cb;
    void *user;
} jwt_waiter;

/* A JWT-SVID request waiting for (or in) a node job. */
typedef struct jwt_req {
    struct jwt_req *next;
    char *entry_id;
    char **aud; /* sorted, without duplicates */
    size_t naud;
    sg_jwt_mint_cb cb;
    void *user;
    jwt_waiter *waiters; /* state lock, also while the job runs */
    int rc;
    sg_err err;
    sg_node_jwt_svid svid;
} jwt_req;

struct sg_agent {
    const sg_agent_config *cfg;
    const char *join_token;
    uv_loop_t loop;
    bool loop_ready;
    bool poll_ready;

    sg_node_client *nc;
    sg_cache *cache;
    sg_jwt_cache *jwt_cache;
    jwt_req *jwt_head, *jwt_tail; /* requests for the next JWT job */
    size_t jwt_qn;
    node_job *jwt_job; /* JWT-SVID mints in flight (beside any node job), at most one */
    sg_peer_table *peers;
    sg_workload_api *api;
    sg_rpc_server *rpc;
    const sg_workload_attestor *attestors[MAX_ATTESTORS];
    void *states[MAX_ATTESTORS];
    size_t nattestors;

    int lfd;
    uv_poll_t lpoll;
    uv_timer_t accept_pause;

    /* Agent state has one owner at a time: the loop thread while its
     * callbacks run, or the Workload API's CQ thread while an rpc event runs. */
    pthread_mutex_t state_mu;

    uv_signal_t sigterm, sigint;
    uv_timer_t node_timer, sweep_timer, stop_timer;

    node_job *job; /* node work in flight, at most one */
    int64_t backoff_ms;
    char agent_id[2100];
    size_t last_nentries;
    bool synced_once;
    bool stopping;
    bool forced;
    bool fatal;  /* stopping because the agent cannot get an identity */
    bool served; /* an identity was held at some point in this run */
    sg_err fatal_err;
    bool handles_closed;
    uint64_t stop_started;

    /* served by Health/Check and AgentStatus/Get; updated after each node job */
    sg_agent_status status;
    sg_status_api_deps status_deps;
};

/* ------------------------------------------------------------ helpers */

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

/* Multiplies ms by a random factor in [lo, hi] (jitter keeps a fleet out of lock-step). */
static int64_t jitter(int64_t ms, double lo, double hi)
{
    double u = (double)arc4random_uniform(1000001) / 1000000.0;
    return (int64_t)((double)ms * (lo + (hi - lo) * u));
}

/*
 * Copies the agent SVID's state into the status. Only while no node job
 * runs: the node client is not safe to read during one.
 */
static void status_refresh_svid(sg_agent *a)
{
    a->status.attested = sg_node_client_has_svid(a->nc);
    a->status.agent_svid_expires_at = sg_node_client_svid_expiry(a->nc);
}

/* The join token in use, for masking it out of errors shown on the socket. */
static const char *token_in_use(const sg_agent *a)
{
    if (a->join_token != NULL && a->join_token[0] != '\0')
        return a->join_token;
    return a->cfg->join_token;
}

/* ------------------------------------------------------------ rpc dispatch */

/*
 * Runs an rpc event on the CQ thread that delivered it, under the state
 * lock: a Workload API call is answered without waking the loop thread,
 * a hand-off and a context switch less per call, while agent state still
 * has one owner at a time. Events arrive in order from the one CQ thread.
 */
static void dispatch(sg_rpc_event *ev, void *ctx)
{
    sg_agent *a = ctx;
    pthread_mutex_lock(&a->state_mu);
    sg_rpc_event_run(ev);
    pthread_mutex_unlock(&a->state_mu);
}

/*
 * Runs the libuv loop holding the state lock only while its callbacks run
 * (libuv's backend-fd pattern: poll the fd, then uv_run once without
 * waiting). rpc events only queue thread-pool work, whose completion wakes
 * the poll through libuv's own async handle; they start no timers, so the
 * timeout computed under the lock still holds while polling.
 */
static void run_loop(sg_agent *a)
{
    int fd = uv_backend_fd(&a->loop);
    for (;;) {
        pthread_mutex_lock(&a->state_mu);
        int alive = uv_run(&a->loop, UV_RUN_NOWAIT);
        int timeout = uv_backend_timeout(&a->loop);
        bool forced = a->forced;
        pthread_mutex_unlock(&a->state_mu);
        if (!alive || forced)
            return;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        (void)poll(&p, 1, timeout);
    }
}

/* ------------------------------------------------------------ node work */

enum { JOB_SYNC, JOB_MINT, JOB_JWT };

struct node_job {
    sg_agent *a;
    uv_work_t work;
    int kind;
    int rc;
    sg_err err;
    int64_t wait_ms; /* sync: how long to wait for a pushed change */
    sg_sync_result sync;
    /* mint */
    size_t n;
    char **entry_ids;
    char **spiffe_ids;
    int64_t *revisions;
    uint8_t **keys; /* PKCS#8 DER, OPENSSL_malloc'd */
    size_t *key_lens;
    uint8_t **spkis;
    size_t *spki_lens;
    sg_mint_request *reqs;
    sg_mint_result *results;
    jwt_req *jwt; /* JOB_JWT: the requests, in a list */
};

static void jwt_req_free(jwt_req *r)
{
    while (r->waiters != NULL) {
        jwt_waiter *next = r->waiters->next;
        free(r->waiters);
        r->waiters = next;
    }
    free(r->entry_id);
    for (size_t i = 0; i < r->naud; i++)
        free(r->aud[i]);
    free(r->aud);
    sg_node_jwt_svid_cleanup(&r->svid);
    free(r);
}

/* Answers and frees a list of JWT-SVID requests (state lock held). */
static void jwt_reqs_answer(jwt_req *r)
{
    while (r != NULL) {
        jwt_req *next = r->next;
        const sg_node_jwt_svid *sv = r->rc == 0 ? &r->svid : NULL;
        r->cb(r->user, r->rc, &r->err, sv);
        for (jwt_waiter *wt = r->waiters; wt != NULL; wt = wt->next)
            wt->cb(wt->user, r->rc, &r->err, sv);
        jwt_req_free(r);
        r = next;
    }
}

static void job_free(node_job *j)
{
    if (j == NULL)
        return;
    if (j->kind == JOB_SYNC && j->rc >= 0)
        sg_sync_result_cleanup(&j->sync);
    for (size_t i = 0; i < j->n; i++) {
        free(j->entry_ids ? j->entry_ids[i] : NULL);
        free(j->spiffe_ids ? j->spiffe_ids[i] : NULL);
        if (j->keys != NULL && j->keys[i] != NULL)
            OPENSSL_clear_free(j->keys[i], j->key_lens[i]);
        if (j->spkis != NULL)
            OPENSSL_free(j->spkis[i]);
    }
    /* results start zeroed (calloc), so cleaning them is safe whatever happened. */
    if (j->results != NULL)
        for (size_t i = 0; i < j->n; i++)
            sg_mint_result_cleanup(&j->results[i]);
    free(j->entry_ids);
    free(j->spiffe_ids);
    free(j->revisions);
    free(j->keys);
    free(j->key_lens);
    free(j->spkis);
    free(j->spki_lens);
    free(j->reqs);
    free(j->results);
    /* Requests still here were never answered: only on a failed start. */
    while (j->jwt != NULL) {
        jwt_req *next = j->jwt->next;
        jwt_req_free(j->jwt);
        j->jwt = next;
    }
    free(j);
}

static void schedule_node(sg_agent *a, int64_t delay_ms);
static void node_after(uv_work_t *req, int status);

static void sync_work(uv_work_t *req)
{
    node_job *j = req->data;
    /* ensure_svid renews the agent SVID when due, so it runs before every sync. */
    j->rc = sg_node_client_ensure_svid(j->a->nc, j->a->join_token, &j->err);
    if (j->rc == 0)
        j->rc = sg_node_client_sync(j->a->nc, j->wait_ms, &j->sync, &j->err);
}

static void jwt_work(uv_work_t *req)
{
    node_job *j = req->data;
    for (jwt_req *r = j->jwt; r != NULL; r = r->next) {
        sg_err_clear(&r->err);
        r->rc = sg_node_client_mint_jwt(j->a->nc, r->entry_id, (const char *const *)r->aud, r->naud,
                                        &r->svid, &r->err);
    }
}

static void mint_work(uv_work_t *req)
{
    node_job *j = req->data;
    for (size_t i = 0; i < j->n; i++) {
        EVP_PKEY *key = NULL;
        int rc = sg_key_generate(SG_KEY_EC_P256, &key, &j->err);
        if (rc == 0)
            rc = sg_key_to_pkcs8_der(key, &j->keys[i], &j->key_lens[i], &j->err);
        if (rc == 0)
            rc = sg_key_to_spki_der(key, &j->spkis[i], &j->spki_lens[i], &j->err);
        EVP_PKEY_free(key);
        if (rc != 0) {
            j->rc = rc;
            return;
        }
        j->reqs[i].entry_id = j->entry_ids[i];
        j->reqs[i].spki = j->spkis[i];
        j->reqs[i].spki_len = j->spki_lens[i];
    }
    j->rc = sg_node_client_mint(j->a->nc, j->reqs, j->n, j->results, &j->err);
}

static int start_job(sg_agent *a, node_job *j, uv_work_cb fn)
{
    j->a = a;
    j->work.data = j;
    int rc = uv_queue_work(&a->loop, &j->work, fn, node_after);
    if (rc != 0) {
        sg_log_error("cannot schedule node work: %s", uv_strerror(rc));
        return SG_ESYS;
    }
    a->job = j;
    return 0;
}

static int start_mint(sg_agent *a)
{
    const sg_agent_entry **due = NULL;
    size_t n = 0;
    if (sg_cache_due(a->cache, now_s(), &due, &n) != 0)
        return SG_ENOMEM;
    if (n == 0) {
        free(due);
        return 1;
    }
    if (n > MINT_BATCH_MAX)
        n = MINT_BATCH_MAX;
    node_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        goto oom;
    j->kind = JOB_MINT;
    j->n = n;
    j->entry_ids = calloc(n, sizeof(*j->entry_ids));
    j->spiffe_ids = calloc(n, sizeof(*j->spiffe_ids));
    j->revisions = calloc(n, sizeof(*j->revisions));
    j->keys = calloc(n, sizeof(*j->keys));
    j->key_lens = calloc(n, sizeof(*j->key_lens));
    j->spkis = calloc(n, sizeof(*j->spkis));
    j->spki_lens = calloc(n, sizeof(*j->spki_lens));
    j->reqs = calloc(n, sizeof(*j->reqs));
    j->results = calloc(n, sizeof(*j->results));
    if (!j->entry_ids || !j->spiffe_ids || !j->revisions || !j->keys || !j->key_lens || !j->spkis ||
        !j->spki_lens || !j->reqs || !j->results)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        j->entry_ids[i] = strdup(due[i]->id);
        j->spiffe_ids[i] = strdup(due[i]->spiffe_id ? due[i]->spiffe_id : "");
        if (j->entry_ids[i] == NULL || j->spiffe_ids[i] == NULL)
            goto oom;
        j->revisions[i] = due[i]->revision;
    }
    free(due);
    sg_log_debug("minting %zu workload SVID(s)", n);
    if (start_job(a, j, mint_work) != 0) {
        j->rc = SG_ESYS; /* results were never initialised */
        job_free(j);
        return SG_ESYS;
    }
    return 0;
oom:
    free(due);
    if (j != NULL)
        j->rc = SG_ENOMEM;
    job_free(j);
    return SG_ENOMEM;
}

static void begin_stop(sg_agent *a, const char *why);

static void start_jwt_job(sg_agent *a);
static void jwt_queue_fail_with(sg_agent *a, int code, const char *why);

static void jwt_queue_fail(sg_agent *a)
{
    jwt_queue_fail_with(a, SG_EUNAVAIL, "the agent is stopping");
}

static void jwt_queue_fail_oom(sg_agent *a)
{
    jwt_queue_fail_with(a, SG_ENOMEM, "out of memory");
}

/* JWT-SVID mints are done: answer every waiting call, then start the next batch. */
static void jwt_after(uv_work_t *req, int status)
{
    node_job *j = req->data;
    sg_agent *a = j->a;
    a->jwt_job = NULL;
    /* Answered even when stopping: each request holds a workload call. */
    if (status != 0)
        for (jwt_req *r = j->jwt; r != NULL; r = r->next)
            r->rc = sg_err_set(&r->err, SG_EUNAVAIL, "the call to the server was cancelled");
    jwt_reqs_answer(j->jwt);
    j->jwt = NULL;
    job_free(j);
    if (a->jwt_head != NULL)
        start_jwt_job(a);
}

/*
 * Starts a worker for the queued JWT-SVID requests (at most JWT_JOB_MAX).
 * It runs beside the node job: sg_node_client_mint_jwt has its own channel.
 */
static void start_jwt_job(sg_agent *a)
{
    if (a->stopping) {
        jwt_queue_fail(a);
        return;
    }
    node_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        jwt_queue_fail_oom(a);
        return;
    }
    j->kind = JOB_JWT;
    j->a = a;
    j->work.data = j;
    jwt_req **tail = &j->jwt;
    for (size_t k = 0; k < JWT_JOB_MAX && a->jwt_head != NULL; k++) {
        jwt_req *r = a->jwt_head;
        a->jwt_head = r->next;
        a->jwt_qn--;
        r->next = NULL;
        *tail = r;
        tail = &r->next;
    }
    if (a->jwt_head == NULL)
        a->jwt_tail = NULL;
    int rc = uv_queue_work(&a->loop, &j->work, jwt_work, jwt_after);
    if (rc != 0) {
        sg_log_error("cannot schedule JWT-SVID work: %s", uv_strerror(rc));
        for (jwt_req *r = j->jwt; r != NULL; r = r->next)
            r->rc = sg_err_set(&r->err, SG_EUNAVAIL, "cannot schedule a call to the server");
        jwt_reqs_answer(j->jwt);
        j->jwt = NULL;
        job_free(j);
        return;
    }
    a->jwt_job = j;
}

static int str_ptr_cmp(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

static bool jwt_req_same(const jwt_req *x, const jwt_req *y)
{
    if (x->naud != y->naud || strcmp(x->entry_id, y->entry_id) != 0)
        return false;
    for (size_t i = 0; i < x->naud; i++)
        if (strcmp(x->aud[i], y->aud[i]) != 0)
            return false;
    return true;
}

/* A queued or running request for the same token as r, or NULL. */
static jwt_req *jwt_find_same(sg_agent *a, const jwt_req *r)
{
    for (jwt_req *q = a->jwt_head; q != NULL; q = q->next)
        if (jwt_req_same(q, r))
            return q;
    if (a->jwt_job != NULL)
        for (jwt_req *q = a->jwt_job->jwt; q != NULL; q = q->next)
            if (jwt_req_same(q, r))
                return q;
    return NULL;
}

static int agent_mint_jwt(void *ctx, const char *entry_id, const char *const *aud, size_t naud,
                          sg_jwt_mint_cb cb, void *user, sg_err *err)
{
    sg_agent *a = ctx;
    if (a->stopping)
        return sg_err_set(err, SG_EUNAVAIL, "the agent is stopping");
    if (a->jwt_qn >= JWT_QUEUE_MAX)
        return sg_err_set(err, SG_EUNAVAIL,
                          "too many JWT-SVID requests are waiting for the server");
    jwt_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    r->entry_id = strdup(entry_id);
    r->aud = calloc(naud ? naud : 1, sizeof(*r->aud));
    if (r->entry_id == NULL || r->aud == NULL)
        goto oom;
    for (size_t i = 0; i < naud; i++) {
        r->aud[i] = strdup(aud[i]);
        if (r->aud[i] == NULL)
            goto oom;
        r->naud++;
    }
    /* One server call per token however many callers wait for it. */
    qsort(r->aud, r->naud, sizeof(*r->aud), str_ptr_cmp);
    size_t k = 0;
    for (size_t i = 0; i < r->naud; i++) {
        if (k > 0 && strcmp(r->aud[k - 1], r->aud[i]) == 0) {
            free(r->aud[i]);
            continue;
        }
        r->aud[k++] = r->aud[i];
    }
    r->naud = k;
    jwt_req *same = jwt_find_same(a, r);
    if (same != NULL) {
        jwt_waiter *wt = calloc(1, sizeof(*wt));
        if (wt == NULL)
            goto oom;
        wt->cb = cb;
        wt->user = user;
        wt->next = same->waiters;
        same->waiters = wt;
        jwt_req_free(r);
        return 0;
    }
    r->cb = cb;
    r->user = user;
    if (a->jwt_tail != NULL)
        a->jwt_tail->next = r;
    else
        a->jwt_head = r;
    a->jwt_tail = r;
    a->jwt_qn++;
    if (a->jwt_job == NULL)
        start_jwt_job(a);
    return 0;
oom:
    jwt_req_free(r);
    return sg_err_set(err, SG_ENOMEM, "out of memory");
}

/* Fails every queued JWT-SVID request with code and why. */
static void jwt_queue_fail_with(sg_agent *a, int code, const char *why)
{
    jwt_req *r = a->jwt_head;
    a->jwt_head = a->jwt_tail = NULL;
    a->jwt_qn = 0;
    for (jwt_req *x = r; x != NULL; x = x->next)
        x->rc = sg_err_set(&x->err, code, "%s", why);
    jwt_reqs_answer(r);
}

static bool jwt_keep(void *ctx, const char *entry_id, int64_t revision)
{
    const sg_agent_entry *e = sg_cache_entry(ctx, entry_id);
    return e != NULL && e->revision == revision;
}

static void after_sync(sg_agent *a, node_job *j)
{
    if (sg_node_client_has_svid(a->nc))
        a->served = true;
    if (j->rc < 0 && !sg_node_client_has_svid(a->nc) && j->err.code == SG_EPERM && !a->served) {
        /* The server refused the first attestation (e.g. a used or unknown
         * join token): retrying cannot help, so stop like SPIRE's agent. An
         * agent evicted later keeps running instead, so its workloads keep
         * the SVIDs they hold until those expire. */
        sg_log_error("attestation refused: %s", j->err.msg);
        a->fatal = true;
        a->fatal_err = j->err;
        begin_stop(a, "the server refused attestation");
        return;
    }
    if (j->rc < 0) {
        sg_agent_status_failure(&a->status, now_s(), j->err.msg, token_in_use(a));
        int64_t delay = jitter(a->backoff_ms, 0.8, 1.2);
        /* Never back off past the next renewal of an SVID workloads hold, or
         * a short outage would let it expire before the next try. */
        int64_t due = sg_cache_next_due(a->cache), now = now_s();
        if (sg_node_client_has_svid(a->nc) && due != INT64_MAX && due != INT64_MIN) {
            int64_t until_ms = due > now ? (due - now) * 1000 : 0;
            if (until_ms < BACKOFF_START_MS)
                until_ms = BACKOFF_START_MS;
            if (delay > until_ms)
                delay = until_ms;
        }
        sg_log_warn("%s: %s; retrying in %lld ms (serving cached SVIDs meanwhile)",
                    sg_node_client_has_svid(a->nc) ? "sync" : "attestation", j->err.msg,
                    (long long)delay);
        a->backoff_ms = a->backoff_ms * 2 > BACKOFF_CAP_MS ? BACKOFF_CAP_MS : a->backoff_ms * 2;
        schedule_node(a, delay);
        return;
    }
    a->backoff_ms = BACKOFF_START_MS;
    sg_agent_status_contact(&a->status, now_s());
    if (j->rc == 0) {
        /* Nothing pushed within the wait: SVIDs may have come due. */
        if (start_mint(a) != 0)
            schedule_node(a, 0);
        return;
    }
    const char *id = sg_node_client_agent_id(a->nc);
    if (strcmp(id, a->agent_id) != 0) {
        sg_log_debug("agent id %s, SVID valid until %lld", id,
                     (long long)sg_node_client_svid_expiry(a->nc));
        snprintf(a->agent_id, sizeof(a->agent_id), "%s", id);
    }
    sg_err e = {0};
    size_t nentries = j->sync.nentries;
    uint64_t seq = j->sync.bundle.sequence;
    int rc = sg_cache_set_entries(a->cache, j->sync.entries, j->sync.nentries, &e);
    j->sync.entries = NULL;
    j->sync.nentries = 0;
    if (rc != 0)
        sg_log_error("cannot store entries: %s", e.msg);
    /* JWT-SVIDs of entries that changed or went are never served again. */
    size_t pruned = sg_jwt_cache_prune(a->jwt_cache, jwt_keep, a->cache);
    if (pruned > 0)
        sg_log_debug("dropped %zu cached JWT-SVID(s) of changed entries", pruned);
    if (j->sync.bundle.has_jwt) {
        sg_jwt_key *keys = j->sync.bundle.jwt;
        size_t nkeys = j->sync.bundle.njwt;
        j->sync.bundle.jwt = NULL;
        j->sync.bundle.njwt = 0;
        rc = sg_cache_set_jwt_keys(a->cache, keys, nkeys, &e);
        if (rc != 0)
            sg_log_error("cannot store the JWT authorities: %s", e.msg);
    }
    rc = sg_cache_set_federated(a->cache, j->sync.federated, j->sync.nfederated, &e);
    j->sync.federated = NULL;
    j->sync.nfederated = 0;
    if (rc != 0)
        sg_log_error("cannot store the federated bundles: %s", e.msg);
    if (j->sync.ntainted_jwt > 0) {
        size_t hit =
            sg_jwt_cache_taint(a->jwt_cache, j->sync.tainted_jwt_kids, j->sync.ntainted_jwt);
        if (hit > 0)
            sg_log_warn("dropped %zu JWT-SVID(s) signed by a tainted JWT authority", hit);
    }
    if (j->sync.bundle.n > 0) {
        rc = sg_cache_set_bundle(a->cache, &j->sync.bundle, &e);
        if (rc != 0)
            sg_log_error("cannot store the bundle: %s", e.msg);
        else
            a->status.bundle_sequence = seq;
    } else if (!sg_cache_has_bundle(a->cache)) {
        sg_log_warn("the server sent an empty trust bundle");
    }
    if (!a->synced_once || nentries != a->last_nentries)
        sg_log_info("synced %zu entr%s (bundle sequence %llu)", nentries,
                    nentries == 1 ? "y" : "ies", (unsigned long long)seq);
    a->synced_once = true;
    a->last_nentries = nentries;
    if (j->sync.ntainted > 0) {
        size_t hit = sg_cache_taint(a->cache, j->sync.tainted_ids, j->sync.ntainted);
        if (hit > 0)
            sg_log_warn("%zu workload SVID(s) were signed by a tainted authority; re-minting now",
                        hit);
    }
    sg_cache_flush(a->cache, now_s());
    rc = start_mint(a);
    if (rc == 1) /* nothing due: wait for the next pushed change */
        schedule_node(a, 0);
    else if (rc != 0)
        schedule_node(a, SYNC_INTERVAL_MS);
}

static void after_mint(sg_agent *a, node_job *j)
{
    if (j->rc != 0) {
        sg_agent_status_failure(&a->status, now_s(), j->err.msg, token_in_use(a));
        sg_log_warn("minting %zu SVID(s) failed: %s", j->n, j->err.msg);
        schedule_node(a, jitter(a->backoff_ms, 0.8, 1.2));
        a->backoff_ms = a->backoff_ms * 2 > BACKOFF_CAP_MS ? BACKOFF_CAP_MS : a->backoff_ms * 2;
        return;
    }
    int64_t now = now_s();
    sg_agent_status_contact(&a->status, now);
    size_t ok = 0;
    for (size_t i = 0; i < j->n; i++) {
        sg_mint_result *r = &j->results[i];
        if (r->code != 0) {
            int64_t retry = jitter(MINT_RETRY_MS, 0.8, 1.2) / 1000;
            sg_log_warn("server refused an SVID for %s (entry %s): %s; retrying in %llds",
                        j->spiffe_ids[i], j->entry_ids[i], r->error, (long long)retry);
            sg_cache_mint_refused(a->cache, j->entry_ids[i], now + retry);
            continue;
        }
        int64_t life = r->not_after - now;
        if (life < 0)
            life = 0;
        /* Re-mint at half-life +-5 %, in seconds. */
        int64_t renew_at = now + jitter(life * 1000, 0.45, 0.55) / 1000;
        sg_err e = {0};
        int rc = sg_cache_put_svid(a->cache, j->entry_ids[i], j->revisions[i], r->chain, r->nchain,
                                   j->keys[i], j->key_lens[i], r->not_after, renew_at, r->serial,
                                   r->authority_id, &e);
        if (rc != 0) {
            sg_log_debug("dropping SVID for entry %s: %s", j->entry_ids[i], e.msg);
            continue;
        }
        ok++;
        sg_log_info("minted X509-SVID %s (entry %s) serial %s expires %lld", j->spiffe_ids[i],
                    j->entry_ids[i], r->serial, (long long)r->not_after);
    }
    (void)ok;
    sg_cache_flush(a->cache, now);
    schedule_node(a, 0);
}

static void node_after(uv_work_t *req, int status)
{
    node_job *j = req->data;
    sg_agent *a = j->a;
    a->job = NULL;
    status_refresh_svid(a);
    if (status != 0 && j->rc == 0)
        j->rc = sg_err_set(&j->err, SG_ECANCELLED, "node work cancelled");
    if (!a->stopping) {
        if (j->kind == JOB_SYNC)
            after_sync(a, j);
        else
            after_mint(a, j);
    }
    job_free(j);
}

static void on_node_timer(uv_timer_t *t)
{
    sg_agent *a = t->data;
    if (a->stopping || a->job != NULL)
        return;
    node_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        schedule_node(a, SYNC_INTERVAL_MS);
        return;
    }
    j->kind = JOB_SYNC;
    /* Wait for pushed changes until the next SVID comes due, and at most
     * SYNC_INTERVAL_MS so the agent SVID's renewal is checked often. */
    int64_t due = sg_cache_next_due(a->cache);
    int64_t now = now_s();
    if (due <= now)
        j->wait_ms = 0;
    else if (due - now >= SYNC_INTERVAL_MS / 1000)
        j->wait_ms = SYNC_INTERVAL_MS;
    else
        j->wait_ms = (due - now) * 1000;
    if (start_job(a, j, sync_work) != 0) {
        j->rc = SG_ESYS;
        job_free(j);
        schedule_node(a, SYNC_INTERVAL_MS);
    }
}

static void schedule_node(sg_agent *a, int64_t delay_ms)
{
    if (a->stopping)
        return;
    uv_timer_start(&a->node_timer, on_node_timer, (uint64_t)(delay_ms < 0 ? 0 : delay_ms), 0);
}

/* ------------------------------------------------------------ Workload API socket */

static void on_listen(uv_poll_t *h, int status, int events);

static void on_accept_pause_end(uv_timer_t *t)
{
    sg_agent *a = t->data;
    if (!a->stopping)
        uv_poll_start(&a->lpoll, UV_READABLE, on_listen);
}

static void on_listen(uv_poll_t *h, int status, int events)
{
    sg_agent *a = h->data;
    (void)events;
    if (status < 0 || a->stopping)
        return;
    for (;;) {
        int fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            /* Out of descriptors or memory: back off instead of spinning on a readable listener. */
            sg_log_warn("accept on the Workload API socket: %s", strerror(errno));
            uv_poll_stop(&a->lpoll);
            uv_timer_start(&a->accept_pause, on_accept_pause_end, 100, 0);
            return;
        }
        sg_peer p;
        sg_err e = {0};
        if (sg_peer_capture(fd, &p, &e) != 0) {
            sg_log_debug("dropping Workload API connection: %s", e.msg);
            close(fd);
            continue;
        }
        if (sg_peer_table_put(a->peers, fd, &p, &e) != 0) {
            sg_log_warn("dropping Workload API connection: %s", e.msg);
            sg_peer_cleanup(&p);
            close(fd);
            continue;
        }
        if (sg_rpc_server_add_fd(a->rpc, fd, &e) != 0)
            sg_log_warn("cannot serve Workload API connection: %s", e.msg);
    }
}

static int open_socket(sg_agent *a, sg_err *err)
{
    const char *path = a->cfg->socket_path;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (path == NULL || path[0] == '\0')
        return sg_err_set(err, SG_ECONFIG, "socket_path is empty");
    if (strlen(path) >= sizeof(sa.sun_path))
        return sg_err_set(err, SG_ECONFIG, "socket_path \"%.80s...\" is longer than %zu bytes",
                          path, sizeof(sa.sun_path) - 1);
    memcpy(sa.sun_path, path, strlen(path) + 1);

    char dir[sizeof(sa.sun_path)];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        int rc = sg_fs_mkdir_p(dir, 0755, err);
        if (rc != 0)
            return rc;
    }
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return sg_err_set(err, SG_EEXIST,
                              "socket_path \"%s\" exists and is not a socket; not removing it",
                              path);
        /* Only a socket nobody listens on is stale: never cut off a running agent. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0) {
            int live = connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
            close(probe);
            if (live)
                return sg_err_set(err, SG_EEXIST,
                                  "another process is already serving the Workload API on \"%s\"",
                                  path);
        }
        if (unlink(path) != 0)
            return sg_err_sys(err, "cannot remove stale socket \"%s\"", path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sg_err_sys(err, "socket");
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int rc = sg_err_sys(err, "cannot bind the Workload API socket \"%s\"", path);
        close(fd);
        return rc;
    }
    /* Anyone may connect: callers are identified only by SO_PEERCRED. */
    if (chmod(path, 0777) != 0 || listen(fd, 4096) != 0) {
        int rc = sg_err_sys(err, "cannot listen on \"%s\"", path);
        close(fd);
        unlink(path);
        return rc;
    }
    a->lfd = fd;
    return 0;
}

static void on_sweep(uv_timer_t *t)
{
    sg_agent *a = t->data;
    size_t n = sg_peer_table_sweep(a->peers);
    if (n > 0)
        sg_log_debug("forgot %zu closed Workload API connection(s)", n);
    sg_jwt_cache_expire(a->jwt_cache, now_s());
}

/* ------------------------------------------------------------ stop */

static void close_handles(sg_agent *a)
{
    if (a->handles_closed)
        return;
    a->handles_closed = true;
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->node_timer, NULL);
    uv_close((uv_handle_t *)&a->sweep_timer, NULL);
    uv_close((uv_handle_t *)&a->accept_pause, NULL);
}

static void on_stop_tick(uv_timer_t *t)
{
    sg_agent *a = t->data;
    bool rpc_done = a->rpc == NULL || sg_rpc_server_shutdown_done(a->rpc);
    if (rpc_done && a->rpc != NULL) {
        /* The CQ thread has run its last event and exited. */
        sg_rpc_server_free(a->rpc);
        a->rpc = NULL;
    }
    if (rpc_done)
        close_handles(a);
    bool idle =
        rpc_done && a->job == NULL && a->jwt_job == NULL && sg_workload_api_pending(a->api) == 0;
    if (idle) {
        uv_close((uv_handle_t *)&a->stop_timer, NULL);
        return;
    }
    if (uv_now(&a->loop) - a->stop_started >= STOP_DEADLINE_MS) {
        sg_log_warn("stop deadline reached with work still running; exiting");
        a->forced = true;
        uv_stop(&a->loop);
    }
}

static void begin_stop(sg_agent *a, const char *why)
{
    if (a->stopping)
        return;
    a->stopping = true;
    a->stop_started = uv_now(&a->loop);
    sg_log_info("stopping (%s)", why);
    uv_timer_stop(&a->node_timer);
    uv_timer_stop(&a->sweep_timer);
    /* A node job may be blocked waiting for a pushed change. */
    sg_node_client_interrupt(a->nc);
    jwt_queue_fail(a);
    uv_timer_stop(&a->accept_pause);
    if (a->lfd >= 0) {
        uv_close((uv_handle_t *)&a->lpoll, NULL);
        close(a->lfd);
        a->lfd = -1;
        unlink(a->cfg->socket_path);
    }
    /* Cancels open streams; their done callbacks arrive through the dispatcher. */
    if (a->rpc != NULL)
        sg_rpc_server_shutdown(a->rpc);
    uv_timer_start(&a->stop_timer, on_stop_tick, 0, STOP_POLL_MS);
}

static void on_signal(uv_signal_t *h, int signum)
{
    begin_stop(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ------------------------------------------------------------ lifecycle */

/* WorkloadAttestor plugins named in the config, in order. */
static int configure_attestors(sg_agent *a, sg_err *err)
{
    const char *names[MAX_ATTESTORS];
    size_t n = 0;
    if (a->cfg->unix_attestor_enabled)
        names[n++] = "unix";
    if (n == 0)
        return sg_err_set(err, SG_ECONFIG,
                          "at least one WorkloadAttestor plugin must be configured (e.g. "
                          "WorkloadAttestor \"unix\")");
    for (size_t i = 0; i < n; i++) {
        const sg_workload_attestor *wa = sg_registry_workload(names[i]);
        if (wa == NULL)
            return sg_err_set(err, SG_ECONFIG, "WorkloadAttestor \"%s\" is not supported",
                              names[i]);
        void *state = NULL;
        int rc = wa->configure(a->cfg, &state, err);
        if (rc != 0)
            return rc;
        a->attestors[a->nattestors] = wa;
        a->states[a->nattestors] = state;
        a->nattestors++;
    }
    return 0;
}

int sg_agent_new(sg_agent **out, const sg_agent_config *cfg, const char *join_token, sg_err *err)
{
    sg_agent *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return sg_err_set(err, SG_ENOMEM, "agent: out of memory");
    a->cfg = cfg;
    a->join_token = join_token;
    a->lfd = -1;
    a->backoff_ms = BACKOFF_START_MS;
    pthread_mutex_init(&a->state_mu, NULL);
    int rc = configure_attestors(a, err);
    if (rc == 0)
        rc = sg_cache_new(&a->cache, cfg->trust_domain, err);
    if (rc == 0)
        rc = sg_jwt_cache_new(&a->jwt_cache, 0, err);
    if (rc == 0 && sg_peer_table_new(&a->peers) != 0)
        rc = sg_err_set(err, SG_ENOMEM, "agent: out of memory");
    if (rc == 0)
        rc = sg_node_client_new(&a->nc, cfg, err);
    if (rc != 0) {
        sg_agent_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

static int setup(sg_agent *a, sg_err *err)
{
    int rc = uv_loop_init(&a->loop);
    if (rc != 0)
        return sg_err_set(err, SG_ESYS, "uv_loop_init: %s", uv_strerror(rc));
    a->loop_ready = true;
    uv_signal_init(&a->loop, &a->sigterm);
    uv_signal_init(&a->loop, &a->sigint);
    uv_timer_init(&a->loop, &a->node_timer);
    uv_timer_init(&a->loop, &a->sweep_timer);
    uv_timer_init(&a->loop, &a->stop_timer);
    uv_timer_init(&a->loop, &a->accept_pause);
    a->sigterm.data = a->sigint.data = a;
    a->node_timer.data = a->sweep_timer.data = a->stop_timer.data = a->accept_pause.data = a;

    sg_workload_api_deps deps = {
        .loop = &a->loop,
        .cache = a->cache,
        .peers = a->peers,
        .attestors = a->attestors,
        .states = a->states,
        .nattestors = a->nattestors,
        .jwt_cache = a->jwt_cache,
        .mint_jwt = agent_mint_jwt,
        .mint_ctx = a,
    };
    rc = sg_workload_api_new(&a->api, &deps, err);
    if (rc != 0)
        return rc;
    sg_rpc_server_options opts = {
        .cq_threads = 1,
        .dispatch = dispatch,
        .dispatch_ctx = a,
        /* The node client's threads must not take the poller role from the
         * Workload API's CQ thread on every call. */
        .drive_client_io = true,
    };
    rc = sg_rpc_server_new(&a->rpc, &opts, err);
    if (rc == 0)
        rc = sg_workload_api_register(a->api, a->rpc, err);
    status_refresh_svid(a); /* an SVID kept on disk counts before the first sync */
    a->status_deps.status = &a->status;
    a->status_deps.cache = a->cache;
    if (rc == 0)
        rc = sg_status_api_register(a->rpc, &a->status_deps, err);
    if (rc == 0)
        rc = open_socket(a, err);
    if (rc == 0)
        rc = sg_rpc_server_start(a->rpc, err);
    if (rc != 0)
        return rc;
    uv_poll_init(&a->loop, &a->lpoll, a->lfd);
    a->poll_ready = true;
    a->lpoll.data = a;
    uv_poll_start(&a->lpoll, UV_READABLE, on_listen);
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);
    uv_signal_start(&a->sigint, on_signal, SIGINT);
    uv_timer_start(&a->sweep_timer, on_sweep, SWEEP_INTERVAL_MS, SWEEP_INTERVAL_MS);
    sg_log_info("Workload API listening on %s (trust domain %s)", a->cfg->socket_path,
                a->cfg->trust_domain);
    schedule_node(a, 0);
    return 0;
}

int sg_agent_run(sg_agent *a, sg_err *err)
{
    /* Calls may arrive as soon as the rpc server starts, before setup ends. */
    pthread_mutex_lock(&a->state_mu);
    int rc = setup(a, err);
    pthread_mutex_unlock(&a->state_mu);
    if (rc != 0) {
        if (a->loop_ready) {
            if (a->lfd >= 0) {
                if (a->poll_ready)
                    uv_close((uv_handle_t *)&a->lpoll, NULL);
                close(a->lfd);
                a->lfd = -1;
                unlink(a->cfg->socket_path);
            }
            if (a->rpc != NULL) {
                sg_rpc_server_shutdown(a->rpc);
                while (!sg_rpc_server_shutdown_done(a->rpc))
                    usleep(1000);
                sg_rpc_server_free(a->rpc);
                a->rpc = NULL;
            }
            close_handles(a);
            uv_close((uv_handle_t *)&a->stop_timer, NULL);
            uv_run(&a->loop, UV_RUN_DEFAULT);
        }
        return rc;
    }
    run_loop(a);
    if (a->fatal) {
        if (err != NULL)
            *err = a->fatal_err;
        return a->fatal_err.code < 0 ? a->fatal_err.code : SG_EPERM;
    }
    if (a->forced)
        return 1;
    sg_log_info("stopped");
    return 0;
}

void sg_agent_free(sg_agent *a)
{
    if (a == NULL)
        return;
    if (a->loop_ready && !a->forced) {
        uv_run(&a->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&a->loop) != 0)
            sg_log_debug("loop still had handles at exit");
    }
    sg_rpc_server_free(a->rpc);
    sg_workload_api_free(a->api);
    for (size_t i = 0; i < a->nattestors; i++)
        a->attestors[i]->destroy(a->states[i]);
    sg_node_client_free(a->nc);
    sg_cache_free(a->cache);
    sg_jwt_cache_free(a->jwt_cache);
    sg_peer_table_free(a->peers);
    pthread_mutex_destroy(&a->state_mu);
    free(a);
}
