/*
 * SpiffeWorkloadAPI under the agent's state lock (the CQ thread runs the
 * calls; thread-pool results come back on the loop). Each call: security header
 * (Workload Endpoint 3), readiness, caller from the peer table, workload
 * attestation on the thread pool (then the pinned process is re-checked),
 * entry matching in the cache, and for the X.509 streams a cache
 * subscription that sends the full state again on every change.
 */
#include "agent/workload_api.h"
#include "agent/workload_api_int.h"

#include "common/log.h"
#include "spiffe/workload.pb-c.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef sg__wl_method wl_method;
typedef sg__wl_call wl_call;

static const char *const method_names[] = {
    [M_X509SVID] = "FetchX509SVID",     [M_X509BUNDLES] = "FetchX509Bundles",
    [M_JWTSVID] = "FetchJWTSVID",       [M_JWTBUNDLES] = "FetchJWTBundles",
    [M_VALIDATE] = "ValidateJWTSVID",   [M_WITSVID] = "FetchWITSVID",
    [M_WITBUNDLES] = "FetchWITBundles",
};

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

void sg__wl_finish(sg_rpc_call *call, int code, const char *msg)
{
    sg_err e = {.code = code};
    snprintf(e.msg, sizeof(e.msg), "%s", msg);
    sg_rpc_call_finish_err(call, &e);
}

#define finish sg__wl_finish

void sg__wl_unref(wl_call *w)
{
    if (--w->refs > 0)
        return;
    sg_peer_cleanup(&w->peer);
    sg_selector_set_cleanup(&w->sels);
    for (size_t i = 0; i < w->naud; i++)
        free(w->aud[i]);
    free(w->aud);
    free(w->want_id);
    free(w->token);
    free(w);
}

#define wl_unref sg__wl_unref

/* Workload Endpoint 3: "workload.spiffe.io: true", value compared exactly. */
static bool header_ok(const sg_rpc_call *call)
{
    const char *v;
    size_t len;
    return sg_rpc_call_metadata(call, "workload.spiffe.io", &v, &len) && len == 4 &&
           memcmp(v, "true", 4) == 0;
}

/* ------------------------------------------------------------ X.509 messages */

static void send_x509_svids(wl_call *w)
{
    sg_cache *c = w->api->d.cache;
    sg_cache_identity *ids = NULL;
    size_t n = 0, nentries = 0;
    if (sg_cache_match(c, &w->sels, now_s(), &ids, &n, &nentries) != 0) {
        finish(w->call, SG_ENOMEM, "out of memory");
        return;
    }
    if (nentries == 0) {
        /* Workload API 5.1: an identity that disappears ends the stream. */
        sg_cache_unsubscribe(c, w->sub);
        w->sub = NULL;
        finish(w->call, SG_EPERM, "no identity issued");
        free(ids);
        return;
    }
    if (n == 0) {
        /* Entries match but their SVIDs are still being minted: wait for the cache. */
        free(ids);
        return;
    }
    size_t blen = 0;
    const uint8_t *bundle = sg_cache_bundle_der(c, &blen);
    X509SVID *svids = calloc(n, sizeof(*svids));
    X509SVID **ptrs = calloc(n, sizeof(*ptrs));
    if (svids == NULL || ptrs == NULL) {
        free(svids);
        free(ptrs);
        free(ids);
        finish(w->call, SG_ENOMEM, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        X509SVID init = X509_SVID__INIT;
        svids[i] = init;
        svids[i].spiffe_id = ids[i].svid->spiffe_id;
        svids[i].x509_svid.data = ids[i].svid->chain;
        svids[i].x509_svid.len = ids[i].svid->chain_len;
        svids[i].x509_svid_key.data = ids[i].svid->key;
        svids[i].x509_svid_key.len = ids[i].svid->key_len;
        svids[i].bundle.data = (uint8_t *)bundle;
        svids[i].bundle.len = blen;
        if (ids[i].entry->hint != NULL)
            svids[i].hint = ids[i].entry->hint;
        ptrs[i] = &svids[i];
    }
    X509SVIDResponse resp = X509_SVIDRESPONSE__INIT;
    resp.n_svids = n;
    resp.svids = ptrs;
    /* Federated bundles: those the SVIDs' entries federate with. */
    sg__wl_fed *fed = NULL;
    X509SVIDResponse__FederatedBundlesEntry *fe = NULL, **fp = NULL;
    const char **tds = NULL;
    size_t ntds = 0;
    for (size_t i = 0; i < n; i++)
        ntds += ids[i].entry->nfederates;
    if (ntds > 0 && (tds = calloc(ntds, sizeof(*tds))) != NULL) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t f = 0; f < ids[i].entry->nfederates; f++)
                tds[k++] = ids[i].entry->federates_with[f];
        long nf = sg__wl_federated_x509(c, tds, k, &fed);
        if (nf > 0) {
            fe = calloc((size_t)nf, sizeof(*fe));
            fp = calloc((size_t)nf, sizeof(*fp));
            if (fe != NULL && fp != NULL) {
                for (long i = 0; i < nf; i++) {
                    X509SVIDResponse__FederatedBundlesEntry init =
                        X509_SVIDRESPONSE__FEDERATED_BUNDLES_ENTRY__INIT;
                    fe[i] = init;
                    fe[i].key = (char *)fed[i].key;
                    fe[i].value.data = (uint8_t *)fed[i].der;
                    fe[i].value.len = fed[i].len;
                    fp[i] = &fe[i];
                }
                resp.n_federated_bundles = (size_t)nf;
                resp.federated_bundles = fp;
            }
        }
    }
    int rc = sg_rpc_call_send(w->call, &resp.base);
    free(tds);
    free(fed);
    free(fe);
    free(fp);
    if (rc == 0)
        sg_log_debug("workload api: sent %zu X509-SVID(s) to pid %d (first %s)", n,
                     (int)w->peer.pid, ids[0].svid->spiffe_id);
    free(svids);
    free(ptrs);
    free(ids);
}

static void send_x509_bundles(wl_call *w)
{
    sg_cache *c = w->api->d.cache;
    sg_cache_identity *ids = NULL;
    size_t n = 0, nentries = 0;
    if (sg_cache_match(c, &w->sels, now_s(), &ids, &n, &nentries) != 0) {
        finish(w->call, SG_ENOMEM, "out of memory");
        return;
    }
    free(ids);
    if (nentries == 0) {
        sg_cache_unsubscribe(c, w->sub);
        w->sub = NULL;
        finish(w->call, SG_EPERM, "no identity issued");
        return;
    }
    const char **tds = NULL;
    size_t ntds = 0;
    sg__wl_fed *fed = NULL;
    long nf = 0;
    if (sg_cache_federates_of(c, &w->sels, &tds, &ntds) == 0 && ntds > 0)
        nf = sg__wl_federated_x509(c, tds, ntds, &fed);
    if (nf < 0)
        nf = 0;
    X509BundlesResponse__BundlesEntry *entries = calloc((size_t)nf + 1, sizeof(*entries));
    X509BundlesResponse__BundlesEntry **ptrs = calloc((size_t)nf + 1, sizeof(*ptrs));
    if (entries == NULL || ptrs == NULL) {
        free(entries);
        free(ptrs);
        free(tds);
        free(fed);
        finish(w->call, SG_ENOMEM, "out of memory");
        return;
    }
    size_t blen = 0;
    const uint8_t *bundle = sg_cache_bundle_der(c, &blen);
    for (long i = 0; i <= nf; i++) {
        X509BundlesResponse__BundlesEntry init = X509_BUNDLES_RESPONSE__BUNDLES_ENTRY__INIT;
        entries[i] = init;
        ptrs[i] = &entries[i];
    }
    /* Map keys are the trust domain as a SPIFFE ID, "spiffe://<td>". */
    entries[0].key = (char *)sg_cache_bundle_name(c);
    entries[0].value.data = (uint8_t *)bundle;
    entries[0].value.len = blen;
    for (long i = 0; i < nf; i++) {
        entries[i + 1].key = (char *)fed[i].key;
        entries[i + 1].value.data = (uint8_t *)fed[i].der;
        entries[i + 1].value.len = fed[i].len;
    }
    X509BundlesResponse resp = X509_BUNDLES_RESPONSE__INIT;
    resp.n_bundles = (size_t)nf + 1;
    resp.bundles = ptrs;
    (void)sg_rpc_call_send(w->call, &resp.base);
    free(entries);
    free(ptrs);
    free(tds);
    free(fed);
}

static void on_cache_change(sg_cache *c, sg_cache_sub *sub, void *user)
{
    (void)c;
    (void)sub;
    wl_call *w = user;
    if (w->call == NULL)
        return;
    if (w->method == M_X509SVID)
        send_x509_svids(w);
    else if (w->method == M_JWTBUNDLES)
        sg__wl_send_jwt_bundles(w);
    else
        send_x509_bundles(w);
}

/* ------------------------------------------------------------ attestation */

static sg_workload_peer workload_peer(const sg_peer *p)
{
    return (sg_workload_peer){.pid = p->pid,
                              .uid = p->uid,
                              .gid = p->gid,
                              .has_groups = p->ngroups >= 0,
                              .groups = p->groups,
                              .ngroups = p->ngroups > 0 ? (size_t)p->ngroups : 0};
}

static void attest_work(uv_work_t *req)
{
    wl_call *w = req->data;
    const sg_workload_api_deps *d = &w->api->d;
    sg_workload_peer wp = workload_peer(&w->peer);
    for (size_t i = 0; i < d->nattestors; i++) {
        int rc = d->attestors[i]->attest(d->states[i], &wp, &w->sels, &w->attest_err);
        if (rc != 0) {
            w->attest_rc = rc;
            return;
        }
    }
    /* The selectors describe the caller only if the pinned process is still the same. */
    w->attest_rc = sg_peer_check(&w->peer, &w->attest_err);
}

/*
 * Runs every attestor's non-blocking fast path right away. True
 * when that settled the call (selectors or a failure are in w); false when
 * some attestor would block, and then w is as before and the thread pool
 * must run the full attestation.
 */
static bool attest_inline(wl_call *w, const sg_peer *caller)
{
    const sg_workload_api_deps *d = &w->api->d;
    sg_workload_peer wp = workload_peer(caller);
    for (size_t i = 0; i < d->nattestors; i++) {
        int rc = d->attestors[i]->attest_cached != NULL
                     ? d->attestors[i]->attest_cached(d->states[i], &wp, &w->sels, &w->attest_err)
                     : SG_EUNAVAIL;
        if (rc == SG_EUNAVAIL) {
            sg_selector_set_cleanup(&w->sels);
            memset(&w->sels, 0, sizeof(w->sels));
            sg_err_clear(&w->attest_err);
            return false;
        }
        if (rc != 0) {
            w->attest_rc = rc;
            return true;
        }
    }
    w->attest_rc = sg_peer_check(caller, &w->attest_err);
    return true;
}

static void attest_done(uv_work_t *req, int status)
{
    wl_call *w = req->data;
    sg_workload_api *api = w->api;
    api->pending--;
    if (w->call == NULL || sg_rpc_call_is_over(w->call)) {
        wl_unref(w);
        return;
    }
    if (status != 0 || w->attest_rc != 0) {
        char msg[SG_ERR_MSG_LEN];
        snprintf(msg, sizeof(msg), "workload attestation failed: %.200s",
                 status != 0 ? "cancelled" : w->attest_err.msg);
        sg_log_warn("workload api: %s (pid %d, uid %d)", msg, (int)w->peer.pid, (int)w->peer.uid);
        finish(w->call, SG_EUNAVAIL, msg);
        wl_unref(w);
        return;
    }
    sg_log_debug("workload api: %s from pid %d uid %d: %zu selector(s)", method_names[w->method],
                 (int)w->peer.pid, (int)w->peer.uid, w->sels.n);

    if (w->method == M_VALIDATE) {
        /* Any attested caller may validate a token; it needs no identity. */
        sg__wl_validate(w);
        wl_unref(w);
        return;
    }
    sg_cache *c = api->d.cache;
    sg_cache_identity *ids = NULL;
    size_t n = 0, nentries = 0;
    if (sg_cache_match(c, &w->sels, now_s(), &ids, &n, &nentries) != 0) {
        finish(w->call, SG_ENOMEM, "out of memory");
        wl_unref(w);
        return;
    }
    free(ids);
    if (nentries == 0) {
        sg_log_debug("workload api: no identity for pid %d uid %d", (int)w->peer.pid,
                     (int)w->peer.uid);
        finish(w->call, SG_EPERM, "no identity issued");
        wl_unref(w);
        return;
    }
    switch (w->method) {
    case M_JWTSVID:
        sg__wl_jwt_svid(w);
        break;
    case M_X509SVID:
    case M_X509BUNDLES:
    case M_JWTBUNDLES: {
        sg_err e = {0};
        sg_cache_watch what = w->method == M_X509SVID     ? SG_CACHE_WATCH_SVIDS
                              : w->method == M_JWTBUNDLES ? SG_CACHE_WATCH_JWT_BUNDLES
                                                          : SG_CACHE_WATCH_BUNDLES;
        if (sg_cache_subscribe(c, what, &w->sels, on_cache_change, w, now_s(), &w->sub, &e) != 0) {
            sg_rpc_call_finish_err(w->call, &e);
            break;
        }
        on_cache_change(c, w->sub, w);
        break;
    }
    default:
        finish(w->call, SG_EUNSUPPORTED, "method not supported");
        break;
    }
    wl_unref(w);
}

static void on_call_done(sg_rpc_call *call, bool cancelled, void *user)
{
    (void)call;
    (void)cancelled;
    wl_call *w = user;
    w->call = NULL;
    if (w->sub != NULL) {
        sg_cache_unsubscribe(w->api->d.cache, w->sub);
        w->sub = NULL;
    }
    wl_unref(w);
}

/* ------------------------------------------------------------ handlers */

static void start(sg_workload_api *api, sg_rpc_call *call, const ProtobufCMessage *req, wl_method m)
{
    if (!header_ok(call)) {
        finish(call, SG_EINVAL, "security header missing from request");
        return;
    }
    if (m == M_WITSVID || m == M_WITBUNDLES) {
        finish(call, SG_EUNSUPPORTED, "WIT-SVIDs are not supported");
        return;
    }
    if (m == M_JWTSVID) {
        const JWTSVIDRequest *r = (const JWTSVIDRequest *)req;
        if (r == NULL || r->n_audience == 0) {
            finish(call, SG_EINVAL, "audience must be specified");
            return;
        }
    }
    if (m == M_VALIDATE) {
        const ValidateJWTSVIDRequest *r = (const ValidateJWTSVIDRequest *)req;
        if (r == NULL || r->audience == NULL || r->audience[0] == '\0') {
            finish(call, SG_EINVAL, "audience must be specified");
            return;
        }
        if (r->svid == NULL || r->svid[0] == '\0') {
            finish(call, SG_EINVAL, "svid must be specified");
            return;
        }
    }
    /* Workload Endpoint, Appendix A: not ready yet is Unavailable, so clients retry. */
    if (!sg_cache_has_bundle(api->d.cache)) {
        finish(call, SG_EUNAVAIL, "agent is not ready: not attested and no trust bundle yet");
        return;
    }
    wl_call *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        finish(call, SG_ENOMEM, "out of memory");
        return;
    }
    w->api = api;
    w->call = call;
    w->method = m;
    w->peer.pidfd = -1;
    w->refs = 1;
    sg_err e = {0};
    if ((m == M_JWTSVID || m == M_VALIDATE) && sg__wl_jwt_request(w, req, &e) != 0) {
        sg_rpc_call_finish_err(call, &e);
        wl_unref(w);
        return;
    }
    /* Resolve at arrival: fd numbers are reused once gRPC closes a connection.
     * The table's record is borrowed while the state lock is held; the pool
     * gets a copy of its own. */
    const sg_peer *caller = NULL;
    if (sg_peer_table_find(api->d.peers, sg_rpc_call_peer(call), &caller, &e) != 0) {
        sg_log_warn("workload api: cannot identify caller: %s", e.msg);
        char msg[SG_ERR_MSG_LEN];
        snprintf(msg, sizeof(msg), "workload attestation failed: %.200s", e.msg);
        finish(call, SG_EUNAVAIL, msg);
        wl_unref(w);
        return;
    }
    w->peer.pid = caller->pid; /* for logs */
    w->peer.uid = caller->uid;
    w->peer.gid = caller->gid;
    w->refs = 2;
    sg_rpc_call_on_done(call, on_call_done, w);
    w->work.data = w;
    if (attest_inline(w, caller)) {
        api->pending++; /* attest_done balances it */
        attest_done(&w->work, 0);
        return;
    }
    if (sg_peer_copy(caller, &w->peer, &e) != 0) {
        sg_rpc_call_finish_err(call, &e);
        wl_unref(w);
        return;
    }
    if (uv_queue_work(api->d.loop, &w->work, attest_work, attest_done) != 0) {
        finish(call, SG_EUNAVAIL, "workload attestation failed: cannot schedule");
        wl_unref(w);
        return;
    }
    api->pending++;
}

#define HANDLER(fn, m)                                                                             \
    static void fn(sg_rpc_call *call, const ProtobufCMessage *req, void *user)                     \
    {                                                                                              \
        start(user, call, req, m);                                                                 \
    }
HANDLER(h_x509svid, M_X509SVID)
HANDLER(h_x509bundles, M_X509BUNDLES)
HANDLER(h_jwtsvid, M_JWTSVID)
HANDLER(h_jwtbundles, M_JWTBUNDLES)
HANDLER(h_validate, M_VALIDATE)
HANDLER(h_witsvid, M_WITSVID)
HANDLER(h_witbundles, M_WITBUNDLES)

static const struct {
    wl_method m;
    sg_rpc_kind kind;
    sg_rpc_handler fn;
} methods[] = {
    {M_X509SVID, SG_RPC_SERVER_STREAM, h_x509svid},
    {M_X509BUNDLES, SG_RPC_SERVER_STREAM, h_x509bundles},
    {M_JWTSVID, SG_RPC_UNARY, h_jwtsvid},
    {M_JWTBUNDLES, SG_RPC_SERVER_STREAM, h_jwtbundles},
    {M_VALIDATE, SG_RPC_UNARY, h_validate},
    {M_WITSVID, SG_RPC_SERVER_STREAM, h_witsvid},
    {M_WITBUNDLES, SG_RPC_SERVER_STREAM, h_witbundles},
};

int sg_workload_api_new(sg_workload_api **out, const sg_workload_api_deps *deps, sg_err *err)
{
    if (deps->nattestors == 0)
        return sg_err_set(err, SG_ECONFIG, "at least one WorkloadAttestor must be configured");
    sg_workload_api *api = calloc(1, sizeof(*api));
    if (api == NULL)
        return sg_err_set(err, SG_ENOMEM, "workload api: out of memory");
    api->d = *deps;
    *out = api;
    return 0;
}

int sg_workload_api_register(sg_workload_api *api, sg_rpc_server *srv, sg_err *err)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        int rc = sg_rpc_server_add_method(srv, &spiffe_workload_api__descriptor,
                                          method_names[methods[i].m], methods[i].kind,
                                          methods[i].fn, api, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

size_t sg_workload_api_pending(const sg_workload_api *api)
{
    return api->pending;
}

void sg_workload_api_free(sg_workload_api *api)
{
    free(api);
}
