/*
 * sigil.node.v1.Node: agent attestation, agent SVID renewal, the entry
 * sync and batch X509-SVID minting. Every call but AttestAgent is
 * authenticated per call from the peer's TLS certificate; authorisation
 * comes from the in-memory index (server/authorized.h), so minting never
 * queries the datastore per SVID. Tokens and keys are never logged.
 */
#include "server/node_api.h"

#include "server/federation.h"

#include "common/log.h"
#include "common/spiffeid.h"
#include "common/x509.h"
#include "sigil/node/v1/node.pb-c.h"

#include <openssl/pem.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define AGENT_PATH_PREFIX "/spire/agent/"

/* How long agents should wait before re-fetching the bundle (seconds). */
#define BUNDLE_REFRESH_HINT_S 300

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

static int64_t agent_ttl(sg_server *s)
{
    const sg_server_config *cfg = sg_server_config_get(s);
    return cfg->agent_ttl_s > 0 ? cfg->agent_ttl_s : cfg->default_x509_svid_ttl_s;
}

/* ------------------------------------------------------------ bundle */

/* A node.v1.Bundle with borrowed data from certs and keys; free with bundle_cleanup. */
typedef struct bundle_msg {
    Sigil__Node__V1__Bundle msg;
    sg_der *certs;
    size_t n;
    sg_jwt_key *keys;
    size_t nkeys;
    Sigil__Node__V1__JWTKey *jwt;
    Sigil__Node__V1__JWTKey **jwtp;
} bundle_msg;

static int bundle_build(sg_server *s, bundle_msg *b, sg_err *err)
{
    memset(b, 0, sizeof(*b));
    sigil__node__v1__bundle__init(&b->msg);
    sg_ca *ca = sg_server_ca(s);
    int rc = sg_ca_bundle_der(ca, &b->certs, &b->n, err);
    if (rc < 0)
        return rc;
    b->msg.x509_authorities = calloc(b->n ? b->n : 1, sizeof(*b->msg.x509_authorities));
    if (!b->msg.x509_authorities)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    for (size_t i = 0; i < b->n; i++) {
        b->msg.x509_authorities[i].data = b->certs[i].data;
        b->msg.x509_authorities[i].len = b->certs[i].len;
    }
    b->msg.n_x509_authorities = b->n;
    b->msg.trust_domain = (char *)sg_server_config_get(s)->trust_domain;
    b->msg.sequence = sg_server_bundle_sequence(s);
    b->msg.refresh_hint = BUNDLE_REFRESH_HINT_S;
    /* Every published JWT key, so agents validate tokens of old keys too. */
    rc = sg_jwt_authority_keys(sg_server_jwt(s), &b->keys, &b->nkeys, err);
    if (rc < 0)
        return rc;
    b->jwt = calloc(b->nkeys ? b->nkeys : 1, sizeof(*b->jwt));
    b->jwtp = calloc(b->nkeys ? b->nkeys : 1, sizeof(*b->jwtp));
    if (!b->jwt || !b->jwtp)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    for (size_t i = 0; i < b->nkeys; i++) {
        sigil__node__v1__jwtkey__init(&b->jwt[i]);
        b->jwt[i].kid = b->keys[i].kid;
        b->jwt[i].public_key.data = b->keys[i].spki.data;
        b->jwt[i].public_key.len = b->keys[i].spki.len;
        b->jwt[i].expires_at = b->keys[i].expires_at;
        b->jwtp[i] = &b->jwt[i];
    }
    b->msg.jwt_authorities = b->jwtp;
    b->msg.n_jwt_authorities = b->nkeys;
    return 0;
}

static void bundle_cleanup(bundle_msg *b)
{
    for (size_t i = 0; i < b->n; i++)
        sg_der_cleanup(&b->certs[i]);
    free(b->certs);
    free(b->msg.x509_authorities);
    sg_jwt_authority_keys_free(b->keys, b->nkeys);
    free(b->jwt);
    free(b->jwtp);
    memset(b, 0, sizeof(*b));
}

/* Whether a workload entry's ID lies under the reserved /spire path. */
static bool reserved_id(const char *id)
{
    sg_spiffeid sid;

    return sg_spiffeid_parse(id, &sid, NULL) < 0 || sg_spiffeid_is_reserved(&sid);
}

/* Points an X509SVID message at chain (borrowed); bins holds at least chain->n items. */
static void svid_msg(Sigil__Node__V1__X509SVID *m, ProtobufCBinaryData *bins, const char *id,
                     const sg_ca_chain *chain)
{
    sigil__node__v1__x509_svid__init(m);
    m->spiffe_id = (char *)id;
    for (size_t i = 0; i < chain->n; i++) {
        bins[i].data = chain->certs[i].data;
        bins[i].len = chain->certs[i].len;
    }
    m->cert_chain = bins;
    m->n_cert_chain = chain->n;
    m->expires_at = chain->not_after;
    m->serial = (char *)chain->serial;
    m->authority_id = (char *)chain->authority_id;
}

/* ------------------------------------------------------------ authentication */

/*
 * Agent certificates already read: decoding a certificate (its public key
 * above all) costs far more than the rest of a call, and an agent presents
 * the same one on every call until it renews. A slot maps the exact PEM
 * text to the agent ID and serial read from it; only certificates that
 * passed every check below are kept. Whether the agent may still call
 * (evicted, banned, serial superseded) is decided on every call by
 * sg_authz_agent_auth, never from here.
 */
#define PEER_CACHE_SLOTS 256

typedef struct peer_slot {
    uint64_t hash;
    char *pem; /* NULL when empty */
    size_t pem_len;
    char id[SG_SPIFFEID_MAX + 1];
    char serial[64];
} peer_slot;

typedef struct peer_cache {
    pthread_mutex_t mu;
    peer_slot slots[PEER_CACHE_SLOTS];
} peer_cache;

static uint64_t pem_hash(const char *pem, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)pem[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void peer_cache_init(peer_cache *pc)
{
    pthread_mutex_init(&pc->mu, NULL);
}

static void peer_cache_cleanup(peer_cache *pc)
{
    for (size_t i = 0; i < PEER_CACHE_SLOTS; i++)
        free(pc->slots[i].pem);
    pthread_mutex_destroy(&pc->mu);
}

/* True when pem was read before; then id and serial are filled in. */
static bool peer_cache_get(peer_cache *pc, uint64_t h, const char *pem, size_t len, char *id,
                           size_t idlen, char *serial, size_t seriallen)
{
    bool hit = false;
    pthread_mutex_lock(&pc->mu);
    const peer_slot *sl = &pc->slots[h % PEER_CACHE_SLOTS];
    if (sl->pem != NULL && sl->hash == h && sl->pem_len == len && memcmp(sl->pem, pem, len) == 0) {
        snprintf(id, idlen, "%s", sl->id);
        snprintf(serial, seriallen, "%s", sl->serial);
        hit = true;
    }
    pthread_mutex_unlock(&pc->mu);
    return hit;
}

static void peer_cache_put(peer_cache *pc, uint64_t h, const char *pem, size_t len, const char *id,
                           const char *serial)
{
    char *copy = malloc(len);
    if (!copy)
        return; /* the next call reads the certificate again */
    memcpy(copy, pem, len);
    pthread_mutex_lock(&pc->mu);
    peer_slot *sl = &pc->slots[h % PEER_CACHE_SLOTS];
    char *old = sl->pem;
    sl->hash = h;
    sl->pem = copy;
    sl->pem_len = len;
    snprintf(sl->id, sizeof(sl->id), "%s", id);
    snprintf(sl->serial, sizeof(sl->serial), "%s", serial);
    pthread_mutex_unlock(&pc->mu);
    free(old);
}

/* The server's cache of agent certificates (kept with its Sync hub), or NULL. */
static peer_cache *peer_cache_of(sg_server *s);

/*
 * Reads the agent ID and serial from the peer's leaf certificate and
 * checks that it names an agent of this trust domain.
 */
static int read_peer_cert(sg_server *s, const char *pem, size_t pem_len, char *agent_id,
                          size_t idlen, char *serial, size_t seriallen, sg_err *err)
{
    STACK_OF(X509) *certs = NULL;
    sg_err e;
    sg_err_clear(&e);
    if (sg_x509_parse_pem_chain(pem, pem_len, &certs, &e) < 0)
        return sg_err_set(err, SG_EUNAUTH, "client certificate unreadable: %s", e.msg);
    X509 *leaf = sk_X509_value(certs, 0);
    sg_spiffeid id;
    int rc = sg_x509_spiffeid(leaf, &id, &e);
    if (rc == 0) {
        sg_x509_serial_hex(leaf, serial, seriallen);
    }
    sk_X509_pop_free(certs, X509_free);
    if (rc < 0)
        return sg_err_set(err, SG_EUNAUTH, "client certificate is not an SVID: %s", e.msg);
    const char *td = sg_server_config_get(s)->trust_domain;
    if (!sg_spiffeid_member_of(&id, td) ||
        strncmp(id.path, AGENT_PATH_PREFIX, strlen(AGENT_PATH_PREFIX)) != 0)
        return sg_err_set(err, SG_EPERM, "caller %s is not an agent of trust domain %s", id.str,
                          td);
    snprintf(agent_id, idlen, "%s", id.str);
    return 0;
}

/*
 * Identifies the calling agent from its TLS certificate (the chain was
 * verified by the handshake) and checks it against the agent records.
 * On success agent_id holds the ID and *view (may be NULL) its entries.
 */
static int authenticate(sg_rpc_call *call, sg_server *s, char *agent_id, size_t idlen, char *serial,
                        size_t seriallen, sg_authz_view **view, sg_err *err)
{
    const char *pem = sg_rpc_call_peer_cert_pem(call);
    if (!pem)
        return sg_err_set(err, SG_EUNAUTH, "an agent client certificate is required");
    size_t pem_len = strlen(pem);
    peer_cache *pc = peer_cache_of(s);
    uint64_t h = pem_hash(pem, pem_len);
    if (!pc || !peer_cache_get(pc, h, pem, pem_len, agent_id, idlen, serial, seriallen)) {
        int rc = read_peer_cert(s, pem, pem_len, agent_id, idlen, serial, seriallen, err);
        if (rc < 0)
            return rc;
        if (pc)
            peer_cache_put(pc, h, pem, pem_len, agent_id, serial);
    }
    return sg_authz_agent_auth(sg_server_authz(s), sg_server_datastore(s), agent_id, serial, view,
                               err);
}

/* Finishes call with err, logging the refusal at debug level. */
static void refuse(sg_rpc_call *call, const char *method, const sg_err *err)
{
    sg_log_debug("node API %s refused peer=%s: %s", method, sg_rpc_call_peer(call), err->msg);
    sg_rpc_call_finish_err(call, err);
}

/* ------------------------------------------------------------ AttestAgent */

static int no_challenge(void *ctx, const uint8_t *chal, size_t chal_len, uint8_t **resp,
                        size_t *resp_len, sg_err *err)
{
    (void)ctx;
    (void)chal;
    (void)chal_len;
    *resp = NULL;
    *resp_len = 0;
    return sg_err_set(err, SG_EUNSUPPORTED, "attestation challenges are not supported yet");
}

/* Signs an agent SVID for agent_id from a DER CSR. */
static int sign_agent(sg_server *s, const char *agent_id, const uint8_t *csr, size_t csr_len,
                      sg_ca_chain *chain, sg_err *err)
{
    if (csr_len == 0)
        return sg_err_set(err, SG_EINVAL, "a CSR for the agent key is required");
    sg_der spki = {0};
    sg_err e;
    sg_err_clear(&e);
    int rc = sg_x509_csr_public_key(csr, csr_len, &spki, &e);
    if (rc < 0)
        return sg_err_set(err, SG_EINVAL, "invalid CSR: %s", e.msg);
    sg_ca_svid_params p = {.spiffe_id = agent_id, .ttl_s = agent_ttl(s)};
    rc = sg_ca_sign_svid(sg_server_ca(s), &p, spki.data, spki.len, chain, err);
    sg_der_cleanup(&spki);
    return rc;
}

static int do_attest(sg_rpc_call *call, sg_server *s,
                     const Sigil__Node__V1__AttestAgentRequest *req, sg_err *err)
{
    if (req->step_case != SIGIL__NODE__V1__ATTEST_AGENT_REQUEST__STEP_PARAMS || !req->params)
        return sg_err_set(err, SG_EINVAL, "the first AttestAgent message must carry params");
    const Sigil__Node__V1__AttestAgentParams *params = req->params;
    if (!params->data || !params->data->type || !params->data->type[0])
        return sg_err_set(err, SG_EINVAL, "attestation data type is missing");
    const char *type = params->data->type;
    void *state = NULL;
    const sg_node_attestor_server *att = sg_server_node_attestor(s, type, &state);
    if (!att)
        return sg_err_set(err, SG_EINVAL, "node attestor \"%.64s\" is not configured", type);

    /* Check the CSR before the attestor runs: a join token is single-use,
     * so a malformed request must not burn it. */
    if (params->csr.len == 0)
        return sg_err_set(err, SG_EINVAL, "a CSR for the agent key is required");
    sg_der spki = {0};
    sg_err e;
    sg_err_clear(&e);
    if (sg_x509_csr_public_key(params->csr.data, params->csr.len, &spki, &e) < 0)
        return sg_err_set(err, SG_EINVAL, "invalid CSR: %s", e.msg);

    const sg_server_config *cfg = sg_server_config_get(s);
    sg_node_attest_host host = {
        .ds = sg_server_datastore(s), .trust_domain = cfg->trust_domain, .now = now_s()};
    sg_node_attest_result res;
    memset(&res, 0, sizeof(res));
    int rc = att->attest(state, &host, params->data->payload.data, params->data->payload.len,
                         no_challenge, call, &res, err);
    if (rc < 0) {
        sg_der_cleanup(&spki);
        sg_selector_set_cleanup(&res.selectors);
        if (rc != SG_EPERM && rc != SG_EINVAL && rc != SG_EEXPIRED)
            return rc;
        char why[SG_ERR_MSG_LEN];
        snprintf(why, sizeof(why), "%s", err->msg);
        return sg_err_set(err, SG_EPERM, "attestation failed: %s", why);
    }

    sg_spiffeid id;
    if (sg_spiffeid_parse(res.agent_id, &id, &e) < 0 ||
        !sg_spiffeid_member_of(&id, cfg->trust_domain) ||
        strncmp(id.path, AGENT_PATH_PREFIX, strlen(AGENT_PATH_PREFIX)) != 0) {
        sg_der_cleanup(&spki);
        sg_selector_set_cleanup(&res.selectors);
        return sg_err_set(err, SG_EINVAL, "attestor %s produced an invalid agent ID", type);
    }

    /* A banned agent stays banned across attestations. */
    sg_agent_rec old;
    memset(&old, 0, sizeof(old));
    rc = sg_ds_agent_get(host.ds, id.str, &old, &e);
    bool banned = rc == 0 && old.banned;
    if (rc == 0)
        sg_agent_rec_cleanup(&old);
    if (banned) {
        sg_der_cleanup(&spki);
        sg_selector_set_cleanup(&res.selectors);
        return sg_err_set(err, SG_EPERM, "agent %s is banned", id.str);
    }

    sg_ca_chain chain;
    memset(&chain, 0, sizeof(chain));
    sg_ca_svid_params p = {.spiffe_id = id.str, .ttl_s = agent_ttl(s)};
    rc = sg_ca_sign_svid(sg_server_ca(s), &p, spki.data, spki.len, &chain, err);
    sg_der_cleanup(&spki);
    if (rc < 0) {
        sg_selector_set_cleanup(&res.selectors);
        return rc;
    }

    sg_agent_rec rec;
    memset(&rec, 0, sizeof(rec));
    rec.spiffe_id = id.str;
    rec.attestation_type = (char *)type;
    snprintf(rec.serial, sizeof(rec.serial), "%s", chain.serial);
    rec.expires_at = chain.not_after;
    rec.attested_at = host.now;
    rec.selectors = res.selectors.items;
    rec.nselectors = res.selectors.n;
    rc = sg_authz_agent_put(sg_server_authz(s), host.ds, &rec, err);
    sg_selector_set_cleanup(&res.selectors);
    if (rc < 0) {
        sg_ca_chain_cleanup(&chain);
        return rc;
    }
    /* Re-attestation may bring new node selectors: open streams re-check. */
    sg_sync_hub *hub = sg_server_sync_hub(s);
    if (hub)
        sg_sync_hub_changed(hub, id.str, false);

    bundle_msg b;
    rc = bundle_build(s, &b, err);
    if (rc < 0) {
        bundle_cleanup(&b);
        sg_ca_chain_cleanup(&chain);
        return rc;
    }
    ProtobufCBinaryData bins[4];
    Sigil__Node__V1__X509SVID svid;
    svid_msg(&svid, bins, id.str, &chain);
    Sigil__Node__V1__AttestAgentResult result = SIGIL__NODE__V1__ATTEST_AGENT_RESULT__INIT;
    result.svid = &svid;
    result.bundle = &b.msg;
    Sigil__Node__V1__AttestAgentResponse resp = SIGIL__NODE__V1__ATTEST_AGENT_RESPONSE__INIT;
    resp.step_case = SIGIL__NODE__V1__ATTEST_AGENT_RESPONSE__STEP_RESULT;
    resp.result = &result;
    rc = sg_rpc_call_send(call, &resp.base);
    sg_log_info("agent attested agent_id=%s type=%s serial=%s expires_at=%lld", id.str, type,
                chain.serial, (long long)chain.not_after);
    bundle_cleanup(&b);
    sg_ca_chain_cleanup(&chain);
    if (rc < 0)
        return sg_err_set(err, rc, "attestation reply not sent: call is over");
    return 0;
}

static void attest_recv(sg_rpc_call *call, const ProtobufCMessage *msg, void *user)
{
    sg_server *s = user;
    sg_err err;
    sg_err_clear(&err);
    if (!msg) {
        sg_rpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT,
                           "stream closed before attestation params were sent");
        return;
    }
    int rc = do_attest(call, s, (const Sigil__Node__V1__AttestAgentRequest *)msg, &err);
    if (rc < 0) {
        sg_log_warn("agent attestation refused peer=%s: %s", sg_rpc_call_peer(call), err.msg);
        sg_rpc_call_finish_err(call, &err);
        return;
    }
    sg_rpc_call_finish(call, GRPC_STATUS_OK, "");
}

static void h_attest(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    (void)req;
    sg_err err;
    sg_err_clear(&err);
    if (sg_rpc_call_recv(call, &sigil__node__v1__attest_agent_request__descriptor, attest_recv,
                         user) < 0)
        sg_rpc_call_finish(call, GRPC_STATUS_INTERNAL, "could not read the attestation request");
}

/* ------------------------------------------------------------ RenewAgent */

static void h_renew(sg_rpc_call *call, const ProtobufCMessage *reqm, void *user)
{
    sg_server *s = user;
    const Sigil__Node__V1__RenewAgentRequest *req =
        (const Sigil__Node__V1__RenewAgentRequest *)reqm;
    char agent_id[SG_SPIFFEID_MAX + 1], serial[64];
    sg_err err;
    sg_err_clear(&err);
    if (authenticate(call, s, agent_id, sizeof(agent_id), serial, sizeof(serial), NULL, &err) < 0) {
        refuse(call, "RenewAgent", &err);
        return;
    }
    sg_ca_chain chain;
    memset(&chain, 0, sizeof(chain));
    if (sign_agent(s, agent_id, req->csr.data, req->csr.len, &chain, &err) < 0) {
        refuse(call, "RenewAgent", &err);
        return;
    }
    if (sg_authz_agent_renew(sg_server_authz(s), sg_server_datastore(s), agent_id, chain.serial,
                             chain.not_after, &err) < 0) {
        sg_ca_chain_cleanup(&chain);
        refuse(call, "RenewAgent", &err);
        return;
    }
    ProtobufCBinaryData bins[4];
    Sigil__Node__V1__X509SVID svid;
    svid_msg(&svid, bins, agent_id, &chain);
    Sigil__Node__V1__RenewAgentResponse resp = SIGIL__NODE__V1__RENEW_AGENT_RESPONSE__INIT;
    resp.svid = &svid;
    sg_rpc_call_send(call, &resp.base);
    sg_log_info("agent renewed agent_id=%s serial=%s prev_serial=%s expires_at=%lld", agent_id,
                chain.serial, serial, (long long)chain.not_after);
    sg_ca_chain_cleanup(&chain);
    sg_rpc_call_finish(call, GRPC_STATUS_OK, "");
}

/* ------------------------------------------------------------ Sync push hub */

#define HUB_MAX_PER_AGENT 4
#define HUB_MAX_TOTAL     4096
#define HUB_COALESCE_MS   30
#define HUB_RESYNC_MS     30000
#define HUB_POLL_MS       1000

typedef struct hub_stream {
    void *stream;
    char *agent_id;
    uint64_t order;       /* opening order: smaller is older */
    bool dirty;           /* something it may see changed */
    bool busy;            /* the notifier is pushing on it */
    bool ended;           /* end was called; waiting for remove */
    int64_t due_ms;       /* earliest time for the pending push */
    int64_t last_push_ms; /* last push attempt */
    int64_t resync_ms;    /* next forced full resync */
} hub_stream;

struct sg_sync_hub {
    sg_sync_hub_ops ops;
    void *ctx;
    sg_sync_hub_options o;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* the notifier has work or must stop */
    pthread_cond_t idle; /* a stream stopped being busy */
    hub_stream **v;
    size_t n, cap;
    uint64_t next_order;
    uint64_t gen;
    int64_t next_poll_ms;
    bool stopping;
    bool started;
    pthread_t th;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int sg_sync_hub_new(sg_sync_hub **out, const sg_sync_hub_ops *ops, void *ctx,
                    const sg_sync_hub_options *opts, sg_err *err)
{
    *out = NULL;
    if (!ops || !ops->push || !ops->end)
        return sg_err_set(err, SG_EINVAL, "sync hub: push and end operations are required");
    sg_sync_hub *h = calloc(1, sizeof(*h));
    if (!h)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    h->ops = *ops;
    h->ctx = ctx;
    if (opts)
        h->o = *opts;
    if (h->o.max_per_agent <= 0)
        h->o.max_per_agent = HUB_MAX_PER_AGENT;
    if (h->o.max_total <= 0)
        h->o.max_total = HUB_MAX_TOTAL;
    if (h->o.coalesce_ms == 0)
        h->o.coalesce_ms = HUB_COALESCE_MS;
    else if (h->o.coalesce_ms < 0)
        h->o.coalesce_ms = 0; /* no coalescing */
    if (h->o.resync_ms <= 0)
        h->o.resync_ms = HUB_RESYNC_MS;
    if (h->o.poll_ms <= 0)
        h->o.poll_ms = HUB_POLL_MS;
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&h->idle, NULL);
    *out = h;
    return 0;
}

/* Index of stream in h->v, or h->n. h->mu held. */
static size_t hub_find(const sg_sync_hub *h, const void *stream)
{
    size_t i = 0;
    while (i < h->n && h->v[i]->stream != stream)
        i++;
    return i;
}

/* Marks one stream for a push at or after now. h->mu held. */
static void hub_mark(sg_sync_hub *h, hub_stream *hs, int64_t now, bool urgent)
{
    int64_t due = urgent ? now : hs->last_push_ms + h->o.coalesce_ms;
    if (due < now)
        due = now;
    if (!hs->dirty || due < hs->due_ms)
        hs->due_ms = due;
    hs->dirty = true;
}

/* Ends hs with err unless it already ended. h->mu held: end never blocks. */
static void hub_end(sg_sync_hub *h, hub_stream *hs, const sg_err *err)
{
    if (hs->ended)
        return;
    hs->ended = true;
    hs->dirty = false;
    h->ops.end(h->ctx, hs->stream, err);
}

static void *hub_main(void *arg)
{
    sg_sync_hub *h = arg;
    pthread_mutex_lock(&h->mu);
    while (!h->stopping) {
        int64_t now = mono_ms();
        if (h->ops.poll && now >= h->next_poll_ms) {
            h->next_poll_ms = now + h->o.poll_ms;
            pthread_mutex_unlock(&h->mu);
            bool changed = h->ops.poll(h->ctx);
            pthread_mutex_lock(&h->mu);
            if (changed) {
                h->gen++;
                for (size_t i = 0; i < h->n; i++)
                    hub_mark(h, h->v[i], now, false);
            }
            continue;
        }
        /* One pass over every stream; a stream skipped because the vector
         * changed while unlocked stays marked for the next pass. */
        bool did = false;
        int64_t next = h->ops.poll ? h->next_poll_ms : now + h->o.resync_ms;
        for (size_t i = 0; i < h->n && !h->stopping; i++) {
            hub_stream *hs = h->v[i];
            if (hs->ended || hs->busy)
                continue;
            now = mono_ms();
            bool resync = now >= hs->resync_ms;
            bool due = hs->dirty && now >= hs->due_ms;
            if (!resync && !due) {
                if (hs->dirty && hs->due_ms < next)
                    next = hs->due_ms;
                if (hs->resync_ms < next)
                    next = hs->resync_ms;
                continue;
            }
            hs->busy = true;
            hs->dirty = false;
            hs->last_push_ms = now;
            hs->resync_ms = now + h->o.resync_ms;
            void *stream = hs->stream;
            pthread_mutex_unlock(&h->mu);
            sg_err err;
            sg_err_clear(&err);
            int rc = h->ops.push(h->ctx, stream, resync, &err);
            pthread_mutex_lock(&h->mu);
            /* remove waits while busy, so hs is still registered. */
            hs->busy = false;
            if (rc < 0)
                hub_end(h, hs, &err);
            pthread_cond_broadcast(&h->idle);
            did = true;
        }
        if (did || h->stopping)
            continue;
        now = mono_ms();
        if (next <= now)
            continue;
        struct timespec ts = {.tv_sec = next / 1000, .tv_nsec = (next % 1000) * 1000000};
        pthread_cond_timedwait(&h->wake, &h->mu, &ts);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

int sg_sync_hub_start(sg_sync_hub *h, sg_err *err)
{
    pthread_mutex_lock(&h->mu);
    if (h->started) {
        pthread_mutex_unlock(&h->mu);
        return 0;
    }
    h->stopping = false;
    h->next_poll_ms = mono_ms() + h->o.poll_ms;
    int prc = pthread_create(&h->th, NULL, hub_main, h);
    if (prc == 0)
        h->started = true;
    pthread_mutex_unlock(&h->mu);
    if (prc != 0)
        return sg_err_set(err, SG_ESYS, "cannot start the Sync notifier thread");
    return 0;
}

void sg_sync_hub_stop(sg_sync_hub *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    bool started = h->started;
    h->stopping = true;
    h->started = false;
    pthread_cond_broadcast(&h->wake);
    pthread_mutex_unlock(&h->mu);
    if (started)
        pthread_join(h->th, NULL);
}

void sg_sync_hub_free(sg_sync_hub *h)
{
    if (!h)
        return;
    sg_sync_hub_stop(h);
    if (h->n)
        sg_log_warn("sync hub freed with %zu streams still registered", h->n);
    for (size_t i = 0; i < h->n; i++) {
        free(h->v[i]->agent_id);
        free(h->v[i]);
    }
    free(h->v);
    if (h->ops.ctx_free)
        h->ops.ctx_free(h->ctx);
    pthread_cond_destroy(&h->wake);
    pthread_cond_destroy(&h->idle);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

uint64_t sg_sync_hub_gen(sg_sync_hub *h)
{
    pthread_mutex_lock(&h->mu);
    uint64_t g = h->gen;
    pthread_mutex_unlock(&h->mu);
    return g;
}

int sg_sync_hub_add(sg_sync_hub *h, const char *agent_id, void *stream, uint64_t gen, sg_err *err)
{
    hub_stream *hs = calloc(1, sizeof(*hs));
    char *id = strdup(agent_id);
    if (!hs || !id) {
        free(hs);
        free(id);
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    int rc = 0;
    pthread_mutex_lock(&h->mu);
    size_t live = 0, mine = 0;
    hub_stream *oldest = NULL;
    for (size_t i = 0; i < h->n; i++) {
        hub_stream *o = h->v[i];
        if (o->ended)
            continue;
        live++;
        if (strcmp(o->agent_id, agent_id) == 0) {
            mine++;
            if (!oldest || o->order < oldest->order)
                oldest = o;
        }
    }
    if (live >= (size_t)h->o.max_total && !(oldest && mine >= (size_t)h->o.max_per_agent)) {
        rc = sg_err_set(err, SG_ETOOBIG, "too many open Sync streams on this server (%d)",
                        h->o.max_total);
    } else if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        hub_stream **v = realloc(h->v, cap * sizeof(*v));
        if (!v)
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
        else {
            h->v = v;
            h->cap = cap;
        }
    }
    if (rc == 0) {
        if (oldest && mine >= (size_t)h->o.max_per_agent) {
            sg_err e;
            sg_err_clear(&e);
            sg_err_set(&e, SG_ETOOBIG,
                       "agent %s opened more than %d Sync streams; the oldest is closed", agent_id,
                       h->o.max_per_agent);
            hub_end(h, oldest, &e);
        }
        int64_t now = mono_ms();
        hs->stream = stream;
        hs->agent_id = id;
        hs->order = h->next_order++;
        hs->last_push_ms = now;
        hs->resync_ms = now + h->o.resync_ms;
        if (gen != h->gen)
            hub_mark(h, hs, now, true);
        h->v[h->n++] = hs;
        hs = NULL;
        id = NULL;
        pthread_cond_broadcast(&h->wake);
    }
    pthread_mutex_unlock(&h->mu);
    free(hs);
    free(id);
    return rc;
}

void sg_sync_hub_remove(sg_sync_hub *h, void *stream)
{
    pthread_mutex_lock(&h->mu);
    size_t i = hub_find(h, stream);
    while (i < h->n && h->v[i]->busy) {
        pthread_cond_wait(&h->idle, &h->mu);
        i = hub_find(h, stream);
    }
    if (i < h->n) {
        hub_stream *hs = h->v[i];
        h->v[i] = h->v[--h->n];
        free(hs->agent_id);
        free(hs);
    }
    pthread_mutex_unlock(&h->mu);
}

void sg_sync_hub_changed(sg_sync_hub *h, const char *agent_id, bool urgent)
{
    pthread_mutex_lock(&h->mu);
    h->gen++;
    int64_t now = mono_ms();
    for (size_t i = 0; i < h->n; i++)
        if (!agent_id || strcmp(h->v[i]->agent_id, agent_id) == 0)
            hub_mark(h, h->v[i], now, urgent);
    pthread_cond_broadcast(&h->wake);
    pthread_mutex_unlock(&h->mu);
}

size_t sg_sync_hub_count(sg_sync_hub *h, const char *agent_id)
{
    size_t c = 0;
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < h->n; i++)
        if (!h->v[i]->ended && (!agent_id || strcmp(h->v[i]->agent_id, agent_id) == 0))
            c++;
    pthread_mutex_unlock(&h->mu);
    return c;
}

/* ------------------------------------------------------------ Sync */

/* The hub's context for the node API: the server and the last bundle sequence polled. */
typedef struct sync_ctx {
    sg_server *s;
    uint64_t seq;     /* notifier thread only */
    uint64_t tainted; /* notifier thread only */
    peer_cache peers; /* any thread */
} sync_ctx;

/* One open Sync stream; owned by its call, freed in its done callback. */
typedef struct sync_stream {
    sg_rpc_call *call;
    sg_server *s;
    char agent_id[SG_SPIFFEID_MAX + 1];
    uint64_t fp;      /* fingerprint of the state last sent */
    int64_t revision; /* revision last sent: never goes back on one stream */
} sync_stream;

/* Federated bundle changes, folded into the bundle sequence a state depends on. */
static uint64_t fed_gen(sg_server *s)
{
    return sg_ds_fed_bundle_gen(sg_server_datastore(s)) << 40;
}

/* A hash of the tainted authority IDs (0 when there are none or they cannot be read). */
static uint64_t tainted_fp(sg_ca *ca)
{
    char **ids = NULL;
    size_t n = 0;
    sg_err e;
    sg_err_clear(&e);
    if (sg_ca_tainted_ids(ca, &ids, &n, &e) < 0)
        return 0;
    uint64_t h = n ? 1469598103934665603ULL : 0;
    for (size_t i = 0; i < n; i++) {
        for (const char *p = ids[i]; *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ULL;
        h = (h ^ 0xff) * 1099511628211ULL;
    }
    sg_ca_ids_free(ids, n);
    return h;
}

/*
 * What an agent's state message depends on: entry IDs and revisions, the
 * bundle sequence and the tainted authorities.
 */
static uint64_t state_fp(const sg_authz_view *view, uint64_t bundle_seq, uint64_t tainted)
{
    uint64_t h = 1469598103934665603ULL;
    size_t n = sg_authz_view_count(view);
    for (size_t i = 0; i < n; i++) {
        const sg_entry *e = sg_authz_view_entry(view, i);
        for (const char *p = e->id; p && *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ULL;
        h = (h ^ (uint64_t)e->revision) * 1099511628211ULL;
        h = (h ^ 0xff) * 1099511628211ULL;
    }
    h = (h ^ bundle_seq) * 1099511628211ULL;
    h = (h ^ tainted) * 1099511628211ULL;
    return h ^ n;
}

/*
 * Sends the full state for the agent behind view with revision (at least
 * the view's). Used for the first message and for every push.
 */
static int sync_send(sg_rpc_call *call, sg_server *s, const sg_authz_view *view, int64_t revision,
                     sg_err *err)
{
    size_t n = sg_authz_view_count(view);
    size_t nsel = 0;
    for (size_t i = 0; i < n; i++)
        nsel += sg_authz_view_entry(view, i)->nselectors;
    Sigil__Node__V1__Entry *ents = calloc(n ? n : 1, sizeof(*ents));
    Sigil__Node__V1__Entry **eptrs = calloc(n ? n : 1, sizeof(*eptrs));
    Sigil__Node__V1__Selector *sels = calloc(nsel ? nsel : 1, sizeof(*sels));
    Sigil__Node__V1__Selector **sptrs = calloc(nsel ? nsel : 1, sizeof(*sptrs));
    bundle_msg b;
    memset(&b, 0, sizeof(b));
    char **tainted = NULL, **tainted_jwt = NULL;
    size_t ntainted = 0, ntainted_jwt = 0;
    sg_fed_node_bundles fed = {0};
    int rc = 0;
    if (!ents || !eptrs || !sels || !sptrs) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory building the sync response");
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const sg_entry *e = sg_authz_view_entry(view, i);
        Sigil__Node__V1__Entry *m = &ents[i];
        sigil__node__v1__entry__init(m);
        m->id = (char *)e->id;
        m->spiffe_id = e->spiffe_id;
        m->parent_id = e->parent_id;
        m->selectors = &sptrs[k];
        for (size_t j = 0; j < e->nselectors; j++, k++) {
            sigil__node__v1__selector__init(&sels[k]);
            sels[k].type = e->selectors[j].type;
            sels[k].value = e->selectors[j].value;
            sptrs[k] = &sels[k];
        }
        m->n_selectors = e->nselectors;
        m->x509_svid_ttl = e->x509_svid_ttl;
        m->jwt_svid_ttl = e->jwt_svid_ttl;
        m->dns_names = e->dns_names;
        m->n_dns_names = e->ndns;
        m->revision = e->revision;
        if (e->hint)
            m->hint = e->hint;
        m->created_at = e->created_at;
        m->downstream = e->downstream;
        m->admin = e->admin;
        m->federates_with = e->federates_with;
        m->n_federates_with = e->nfederates_with;
        eptrs[i] = m;
    }
    rc = bundle_build(s, &b, err);
    if (rc < 0)
        goto out;
    rc = sg_ca_tainted_ids(sg_server_ca(s), &tainted, &ntainted, err);
    if (rc == 0)
        rc = sg_jwt_authority_tainted(sg_server_jwt(s), &tainted_jwt, &ntainted_jwt, err);
    if (rc < 0)
        goto out;
    Sigil__Node__V1__SyncResponse resp = SIGIL__NODE__V1__SYNC_RESPONSE__INIT;
    resp.tainted_authority_ids = tainted;
    resp.n_tainted_authority_ids = ntainted;
    resp.tainted_jwt_key_ids = tainted_jwt;
    resp.n_tainted_jwt_key_ids = ntainted_jwt;
    rc = sg_fed_node_bundles_build(sg_server_datastore(s), view, &fed, err);
    if (rc < 0)
        goto out;
    resp.federated_bundles = fed.ptrs;
    resp.n_federated_bundles = fed.n;
    resp.entries = eptrs;
    resp.n_entries = n;
    resp.bundle = &b.msg;
    resp.revision = revision;
    rc = sg_rpc_call_send(call, &resp.base);
    if (rc < 0)
        sg_err_set(err, rc, "sync response not sent: call is over");
out:
    sg_ca_ids_free(tainted, ntainted);
    sg_jwt_authority_kids_free(tainted_jwt, ntainted_jwt);
    sg_fed_node_bundles_cleanup(&fed);
    bundle_cleanup(&b);
    free(ents);
    free(eptrs);
    free(sels);
    free(sptrs);
    return rc;
}

/* hub push: the agent's current state, unless the stream already has it. */
static int sync_push(void *ctx, void *stream, bool force, sg_err *err)
{
    sg_server *s = ((sync_ctx *)ctx)->s;
    sync_stream *st = stream;
    sg_authz_view *view = NULL;
    sg_err e;
    sg_err_clear(&e);
    uint64_t seq = sg_server_bundle_sequence(s) ^ fed_gen(s);
    uint64_t tfp = tainted_fp(sg_server_ca(s));
    int rc =
        sg_authz_agent_view(sg_server_authz(s), sg_server_datastore(s), st->agent_id, &view, &e);
    if (rc == SG_ENOENT)
        return sg_err_set(err, SG_EPERM, "agent was evicted");
    if (rc == SG_EPERM)
        return sg_err_set(err, SG_EPERM, "agent is banned");
    if (rc < 0) {
        /* A datastore hiccup must not cut the agent off: retry at the next resync. */
        sg_log_warn("sync push skipped agent_id=%s: %s", st->agent_id, e.msg);
        return 0;
    }
    uint64_t fp = state_fp(view, seq, tfp);
    int64_t rev = sg_authz_view_revision(view);
    if (rev < st->revision)
        rev = st->revision;
    if (force || fp != st->fp) {
        rc = sync_send(st->call, s, view, rev, err);
        if (rc == 0) {
            st->fp = fp;
            st->revision = rev;
            sg_log_debug("sync push agent_id=%s entries=%zu revision=%lld%s", st->agent_id,
                         sg_authz_view_count(view), (long long)rev, force ? " (resync)" : "");
        }
    }
    sg_authz_view_release(view);
    return rc;
}

/* hub end: finishes the call; its done callback removes the stream. */
static void sync_end(void *ctx, void *stream, const sg_err *err)
{
    (void)ctx;
    sync_stream *st = stream;
    sg_log_info("sync stream ended agent_id=%s: %s", st->agent_id, err->msg);
    sg_rpc_call_finish_err(st->call, err);
}

/* hub poll: a new bundle sequence (CA rotation) or taint marks every stream. */
static bool sync_poll(void *ctx)
{
    sync_ctx *c = ctx;
    uint64_t seq = sg_server_bundle_sequence(c->s) ^ fed_gen(c->s);
    uint64_t tfp = tainted_fp(sg_server_ca(c->s));
    if (seq == c->seq && tfp == c->tainted)
        return false;
    c->seq = seq;
    c->tainted = tfp;
    return true;
}

static void sync_done(sg_rpc_call *call, bool cancelled, void *user)
{
    (void)call;
    (void)cancelled;
    sync_stream *st = user;
    sg_sync_hub *hub = sg_server_sync_hub(st->s);
    if (hub)
        sg_sync_hub_remove(hub, st);
    free(st);
}

static void sync_ctx_free(void *ctx)
{
    sync_ctx *c = ctx;
    peer_cache_cleanup(&c->peers);
    free(c);
}

int sg_node_sync_hub_new(sg_sync_hub **out, sg_server *s, sg_err *err)
{
    sync_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    c->s = s;
    c->seq = sg_server_bundle_sequence(s);
    c->tainted = tainted_fp(sg_server_ca(s));
    peer_cache_init(&c->peers);
    sg_sync_hub_ops ops = {
        .push = sync_push, .end = sync_end, .poll = sync_poll, .ctx_free = sync_ctx_free};
    int rc = sg_sync_hub_new(out, &ops, c, NULL, err);
    if (rc < 0)
        sync_ctx_free(c);
    return rc;
}

static peer_cache *peer_cache_of(sg_server *s)
{
    sg_sync_hub *hub = sg_server_sync_hub(s);
    if (!hub || hub->ops.push != sync_push)
        return NULL;
    return &((sync_ctx *)hub->ctx)->peers;
}

static void h_sync(sg_rpc_call *call, const ProtobufCMessage *reqm, void *user)
{
    sg_server *s = user;
    (void)reqm;
    char agent_id[SG_SPIFFEID_MAX + 1], serial[64];
    sg_authz_view *view = NULL;
    sg_err err;
    sg_err_clear(&err);
    sg_sync_hub *hub = sg_server_sync_hub(s);
    /* Read before the snapshot: a change after this point is pushed. */
    uint64_t gen = hub ? sg_sync_hub_gen(hub) : 0;
    uint64_t seq = sg_server_bundle_sequence(s) ^ fed_gen(s);
    uint64_t tfp = tainted_fp(sg_server_ca(s));
    if (authenticate(call, s, agent_id, sizeof(agent_id), serial, sizeof(serial), &view, &err) <
        0) {
        refuse(call, "Sync", &err);
        return;
    }
    sync_stream *st = hub ? calloc(1, sizeof(*st)) : NULL;
    int64_t rev = sg_authz_view_revision(view);
    int rc = sync_send(call, s, view, rev, &err);
    sg_log_debug("sync agent_id=%s entries=%zu revision=%lld", agent_id, sg_authz_view_count(view),
                 (long long)rev);
    if (st) {
        st->call = call;
        st->s = s;
        snprintf(st->agent_id, sizeof(st->agent_id), "%s", agent_id);
        st->fp = state_fp(view, seq, tfp);
        st->revision = rev;
    }
    sg_authz_view_release(view);
    if (rc < 0) {
        free(st);
        sg_rpc_call_finish_err(call, &err);
        return;
    }
    if (!st) {
        /* No push hub (or no memory for the stream): one message, as before. */
        sg_rpc_call_finish(call, GRPC_STATUS_OK, "");
        return;
    }
    sg_rpc_call_on_done(call, sync_done, st);
    if (sg_sync_hub_add(hub, agent_id, st, gen, &err) < 0) {
        sg_log_warn("sync stream refused agent_id=%s: %s", agent_id, err.msg);
        sg_rpc_call_finish_err(call, &err);
    }
}

/* ------------------------------------------------------------ MintX509SVIDs */

static void h_mint(sg_rpc_call *call, const ProtobufCMessage *reqm, void *user)
{
    sg_server *s = user;
    const Sigil__Node__V1__MintX509SVIDsRequest *req =
        (const Sigil__Node__V1__MintX509SVIDsRequest *)reqm;
    char agent_id[SG_SPIFFEID_MAX + 1], serial[64];
    sg_authz_view *view = NULL;
    sg_err err;
    sg_err_clear(&err);
    if (req->n_params > SG_NODE_MINT_MAX) {
        char msg[128];
        snprintf(msg, sizeof(msg), "too many SVIDs in one request: %zu (at most %d)", req->n_params,
                 SG_NODE_MINT_MAX);
        sg_rpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, msg);
        return;
    }
    if (authenticate(call, s, agent_id, sizeof(agent_id), serial, sizeof(serial), &view, &err) <
        0) {
        refuse(call, "MintX509SVIDs", &err);
        return;
    }
    const sg_server_config *cfg = sg_server_config_get(s);
    sg_ca *ca = sg_server_ca(s);
    size_t n = req->n_params;
    size_t na = n ? n : 1;
    Sigil__Node__V1__MintX509SVIDResult *res = calloc(na, sizeof(*res));
    Sigil__Node__V1__MintX509SVIDResult **rptrs = calloc(na, sizeof(*rptrs));
    Sigil__Node__V1__X509SVID *svids = calloc(na, sizeof(*svids));
    sg_ca_chain *chains = calloc(na, sizeof(*chains));
    ProtobufCBinaryData *bins = calloc(na * 4, sizeof(*bins));
    char **errs = calloc(na, sizeof(*errs));
    if (!res || !rptrs || !svids || !chains || !bins || !errs) {
        sg_rpc_call_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        const Sigil__Node__V1__X509SVIDParams *p = req->params[i];
        Sigil__Node__V1__MintX509SVIDResult *r = &res[i];
        sigil__node__v1__mint_x509_svidresult__init(r);
        rptrs[i] = r;
        r->entry_id = p->entry_id;
        const sg_entry *e = sg_authz_view_find(view, p->entry_id);
        sg_err e2;
        sg_err_clear(&e2);
        int code = GRPC_STATUS_OK;
        if (!e) {
            code = GRPC_STATUS_PERMISSION_DENIED;
            sg_err_set(&e2, SG_EPERM, "entry %.64s is not authorised for %s", p->entry_id,
                       agent_id);
        } else if (reserved_id(e->spiffe_id)) {
            /* The admin API refuses such entries; this guards older databases. */
            code = GRPC_STATUS_PERMISSION_DENIED;
            sg_err_set(&e2, SG_EPERM, "entry %.64s has the reserved SPIFFE ID %.128s", p->entry_id,
                       e->spiffe_id);
        } else if (p->key_case == SIGIL__NODE__V1__X509_SVIDPARAMS__KEY_PUBLIC_KEY) {
            sg_ca_svid_params sp = {.spiffe_id = e->spiffe_id,
                                    .dns = (const char *const *)e->dns_names,
                                    .ndns = e->ndns,
                                    .ttl_s = e->x509_svid_ttl > 0 ? e->x509_svid_ttl
                                                                  : cfg->default_x509_svid_ttl_s};
            if (sg_ca_sign_svid(ca, &sp, p->public_key.data, p->public_key.len, &chains[i], &e2) <
                0)
                code = sg_rpc_status_from_err(e2.code);
        } else if (p->key_case == SIGIL__NODE__V1__X509_SVIDPARAMS__KEY_CSR) {
            sg_der spki = {0};
            if (sg_x509_csr_public_key(p->csr.data, p->csr.len, &spki, &e2) < 0) {
                code = GRPC_STATUS_INVALID_ARGUMENT;
            } else {
                sg_ca_svid_params sp = {.spiffe_id = e->spiffe_id,
                                        .dns = (const char *const *)e->dns_names,
                                        .ndns = e->ndns,
                                        .ttl_s = e->x509_svid_ttl > 0
                                                     ? e->x509_svid_ttl
                                                     : cfg->default_x509_svid_ttl_s};
                if (sg_ca_sign_svid(ca, &sp, spki.data, spki.len, &chains[i], &e2) < 0)
                    code = sg_rpc_status_from_err(e2.code);
            }
            sg_der_cleanup(&spki);
        } else {
            code = GRPC_STATUS_INVALID_ARGUMENT;
            sg_err_set(&e2, SG_EINVAL, "entry %.64s: neither public_key nor csr was sent",
                       p->entry_id);
        }
        if (code == GRPC_STATUS_OK) {
            svid_msg(&svids[i], &bins[i * 4], e->spiffe_id, &chains[i]);
            r->svid = &svids[i];
            ok++;
        } else {
            r->error_code = code;
            errs[i] = strdup(e2.msg);
            r->error = errs[i] ? errs[i] : (char *)"error";
        }
    }
    Sigil__Node__V1__MintX509SVIDsResponse resp = SIGIL__NODE__V1__MINT_X509_SVIDS_RESPONSE__INIT;
    resp.results = rptrs;
    resp.n_results = n;
    sg_rpc_call_send(call, &resp.base);
    sg_rpc_call_finish(call, GRPC_STATUS_OK, "");
    sg_log_debug("minted agent_id=%s requested=%zu signed=%zu", agent_id, n, ok);
out:
    if (chains)
        for (size_t i = 0; i < n; i++)
            sg_ca_chain_cleanup(&chains[i]);
    if (errs)
        for (size_t i = 0; i < n; i++)
            free(errs[i]);
    free(res);
    free(rptrs);
    free(svids);
    free(chains);
    free(bins);
    free(errs);
    sg_authz_view_release(view);
}

/* ------------------------------------------------------------ MintJWTSVID */

/* Identity and TTL come from the entry; the request names the entry and the audience. */
static void h_mint_jwt(sg_rpc_call *call, const ProtobufCMessage *reqm, void *user)
{
    sg_server *s = user;
    const Sigil__Node__V1__MintJWTSVIDRequest *req =
        (const Sigil__Node__V1__MintJWTSVIDRequest *)reqm;
    char agent_id[SG_SPIFFEID_MAX + 1], serial[64];
    sg_authz_view *view = NULL;
    sg_jwt_svid svid = {0};
    sg_err err;
    sg_err_clear(&err);
    int rc = sg_jwt_audience_check((const char *const *)req->audience, req->n_audience, &err);
    if (rc < 0) {
        sg_rpc_call_finish_err(call, &err);
        return;
    }
    if (authenticate(call, s, agent_id, sizeof(agent_id), serial, sizeof(serial), &view, &err) <
        0) {
        refuse(call, "MintJWTSVID", &err);
        return;
    }
    const sg_entry *e = sg_authz_view_find(view, req->entry_id);
    if (!e)
        rc = sg_err_set(&err, SG_EPERM, "entry %.64s is not authorised for %s", req->entry_id,
                        agent_id);
    else if (reserved_id(e->spiffe_id))
        rc = sg_err_set(&err, SG_EPERM, "entry %.64s has the reserved SPIFFE ID %.128s",
                        req->entry_id, e->spiffe_id);
    else
        rc = sg_jwt_authority_sign(sg_server_jwt(s), e->spiffe_id,
                                   (const char *const *)req->audience, req->n_audience,
                                   e->jwt_svid_ttl, now_s(), &svid, &err);
    if (rc < 0) {
        sg_rpc_call_finish_err(call, &err);
    } else {
        Sigil__Node__V1__JWTSVID m = SIGIL__NODE__V1__JWTSVID__INIT;
        Sigil__Node__V1__MintJWTSVIDResponse resp = SIGIL__NODE__V1__MINT_JWTSVIDRESPONSE__INIT;
        m.spiffe_id = e->spiffe_id;
        m.token = svid.token;
        m.expires_at = svid.expires_at;
        m.issued_at = svid.issued_at;
        m.kid = svid.kid;
        resp.svid = &m;
        sg_rpc_call_send(call, &resp.base);
        sg_rpc_call_finish(call, GRPC_STATUS_OK, "");
        sg_log_debug("minted JWT-SVID agent_id=%s entry_id=%s kid=%s", agent_id, req->entry_id,
                     svid.kid);
    }
    sg_jwt_svid_cleanup(&svid);
    sg_authz_view_release(view);
}

/* ------------------------------------------------------------ registration */

int sg_node_api_register(sg_rpc_server *srv, sg_server *s, sg_err *err)
{
    static const struct {
        const char *name;
        sg_rpc_kind kind;
        sg_rpc_handler fn;
    } methods[] = {
        {"AttestAgent", SG_RPC_BIDI_STREAM, h_attest}, {"RenewAgent", SG_RPC_UNARY, h_renew},
        {"Sync", SG_RPC_SERVER_STREAM, h_sync},        {"MintX509SVIDs", SG_RPC_UNARY, h_mint},
        {"MintJWTSVID", SG_RPC_UNARY, h_mint_jwt},
    };
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        int rc = sg_rpc_server_add_method(srv, &sigil__node__v1__node__descriptor, methods[i].name,
                                          methods[i].kind, methods[i].fn, s, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}
