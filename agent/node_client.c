/*
 * Blocking client of the sigil.node.v1 API: node attestation over the
 * AttestAgent stream, agent SVID renewal, Sync, batched minting and
 * JWT-SVID minting. One caller at a time per client (the agent runs every
 * call on one worker at a time), except JWT-SVID minting: it has its own
 * channel built from credentials published under cred_mu, so a workload
 * waiting for a token never waits behind a Sync; there is no libuv here.
 */
#include "agent/node_client.h"

#include "agent/keystore.h"
#include "attestors/attestor.h"
#include "common/fsutil.h"
#include "common/key.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/spiffeid.h"
#include "common/tls.h"

#include "sigil/node/v1/node.pb-c.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NODE_PATH_ATTEST   "/sigil.node.v1.Node/AttestAgent"
#define NODE_PATH_RENEW    "/sigil.node.v1.Node/RenewAgent"
#define NODE_PATH_SYNC     "/sigil.node.v1.Node/Sync"
#define NODE_PATH_MINT     "/sigil.node.v1.Node/MintX509SVIDs"
#define NODE_PATH_MINT_JWT "/sigil.node.v1.Node/MintJWTSVID"

#define NODE_CALL_TIMEOUT_MS   30000
#define NODE_ATTEST_TIMEOUT_MS 60000
#define NODE_MINT_BATCH        500
#define NODE_MAX_CHALLENGES    16
#define NODE_MAX_RECV          (64 * 1024 * 1024)
#define NODE_MAX_BUNDLE_FILE   (4 * 1024 * 1024)
#define NODE_MAX_JWT_KEYS      64   /* JWT authorities per bundle */
#define NODE_MAX_FEDERATED     1024 /* foreign bundles per Sync message */
#define NODE_MAX_FEDERATES     256  /* federates_with per entry */
#define NODE_MAX_JWT_TOKEN     16384
#define NODE_JWT_TIMEOUT_MS    10000 /* a workload waits on this call */
/* When a server ends each Sync stream after one message (no push), reopen
 * at this pace: the agent then polls as SPIRE agents do. */
#define NODE_SYNC_POLL_MS 5000

#define TOKEN_USED_MSG                                                                             \
    "agent SVID rejected and the join token was already used; generate a new token"

struct sg_node_client {
    char *target;                        /* "host:port" */
    char server_id[SG_SPIFFEID_MAX + 1]; /* spiffe://<td>/spire/server */
    char trust_domain[SG_TRUST_DOMAIN_MAX + 1];
    char *join_token; /* from the config; may be NULL */
    const sg_node_attestor_agent *attestor;
    sg_keystore ks;
    sg_agent_bundle bundle; /* n == 0: none (insecure bootstrap) */
    char *bundle_pem;       /* PEM of bundle, NULL when none */
    sg_keystore_svid svid;
    bool has_svid;
    bool svid_rejected; /* the server refused the current SVID */
    bool renew_now;     /* its signing authority was tainted */
    grpc_channel *ch;   /* mTLS channel with the current SVID */
    /* The open Sync stream; the pointer is guarded by sync_mu because
     * sg_node_client_interrupt cancels it from another thread. */
    sg_rpc_stream *sync_st;
    pthread_mutex_t sync_mu;
    int64_t sync_reopen_ms; /* monotonic ms before which Sync is not reopened */
    atomic_bool interrupted;
    /* The credentials of the last mTLS channel, published for the JWT-SVID
     * channel, which another worker uses while Sync waits (cred_mu). */
    pthread_mutex_t cred_mu;
    char *cred_key_pem;
    char *cred_chain_pem;
    char *cred_bundle_pem; /* NULL: insecure bootstrap */
    uint64_t cred_gen;     /* 0: no mTLS channel made yet */
    /* Owned by the thread running sg_node_client_mint_jwt (one at a time). */
    grpc_channel *jwt_ch;
    uint64_t jwt_gen;
};

/* ------------------------------------------------------------ value cleanup */

void sg_agent_entry_cleanup(sg_agent_entry *e)
{
    if (e == NULL)
        return;
    free(e->id);
    free(e->spiffe_id);
    free(e->parent_id);
    for (size_t i = 0; i < e->nselectors; i++)
        sg_selector_cleanup(&e->selectors[i]);
    free(e->selectors);
    for (size_t i = 0; i < e->ndns; i++)
        free(e->dns_names[i]);
    free(e->dns_names);
    free(e->hint);
    for (size_t i = 0; i < e->nfederates; i++)
        free(e->federates_with[i]);
    free(e->federates_with);
    memset(e, 0, sizeof(*e));
}

static void der_array_free(sg_der *a, size_t n)
{
    for (size_t i = 0; a != NULL && i < n; i++)
        sg_der_cleanup(&a[i]);
    free(a);
}

void sg_agent_bundle_cleanup(sg_agent_bundle *b)
{
    if (b == NULL)
        return;
    der_array_free(b->certs, b->n);
    for (size_t i = 0; i < b->njwt; i++) {
        free(b->jwt[i].kid);
        sg_der_cleanup(&b->jwt[i].spki);
    }
    free(b->jwt);
    memset(b, 0, sizeof(*b));
}

void sg_sync_result_cleanup(sg_sync_result *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nentries; i++)
        sg_agent_entry_cleanup(&r->entries[i]);
    free(r->entries);
    sg_agent_bundle_cleanup(&r->bundle);
    for (size_t i = 0; i < r->ntainted; i++)
        free(r->tainted_ids[i]);
    free(r->tainted_ids);
    for (size_t i = 0; i < r->nfederated; i++)
        sg_bundle_cleanup(&r->federated[i]);
    free(r->federated);
    for (size_t i = 0; i < r->ntainted_jwt; i++)
        free(r->tainted_jwt_kids[i]);
    free(r->tainted_jwt_kids);
    memset(r, 0, sizeof(*r));
}

void sg_mint_result_cleanup(sg_mint_result *r)
{
    if (r == NULL)
        return;
    der_array_free(r->chain, r->nchain);
    memset(r, 0, sizeof(*r));
}

void sg_node_jwt_svid_cleanup(sg_node_jwt_svid *s)
{
    if (s == NULL)
        return;
    free(s->spiffe_id);
    if (s->token != NULL)
        OPENSSL_cleanse(s->token, strlen(s->token));
    free(s->token);
    free(s->kid);
    memset(s, 0, sizeof(*s));
}

/* ------------------------------------------------------------ helpers */

static int der_array_copy(const sg_der *src, size_t n, sg_der **out, sg_err *err)
{
    sg_der *a = calloc(n ? n : 1, sizeof(*a));
    if (a == NULL)
        return sg_err_set(err, SG_ENOMEM, "node client: out of memory");
    for (size_t i = 0; i < n; i++) {
        a[i].data = malloc(src[i].len ? src[i].len : 1);
        if (a[i].data == NULL) {
            der_array_free(a, i);
            return sg_err_set(err, SG_ENOMEM, "node client: out of memory");
        }
        memcpy(a[i].data, src[i].data, src[i].len);
        a[i].len = src[i].len;
    }
    *out = a;
    return 0;
}

/* Copies the certificates of a message, each between 1 byte and SG_X509_MAX_DER. */
static int der_array_from_pb(const ProtobufCBinaryData *src, size_t n, sg_der **out, sg_err *err)
{
    sg_der *view = calloc(n ? n : 1, sizeof(*view));
    int rc = 0;
    if (view == NULL)
        return sg_err_set(err, SG_ENOMEM, "node client: out of memory");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (src[i].len == 0 || src[i].len > SG_X509_MAX_DER)
            rc = sg_err_set(err, SG_EPROTO, "server sent a certificate of %zu bytes", src[i].len);
        view[i].data = src[i].data; /* borrowed for der_array_copy */
        view[i].len = src[i].len;
    }
    if (rc == 0)
        rc = der_array_copy(view, n, out, err);
    free(view);
    return rc;
}

static STACK_OF(X509) * der_array_to_stack(const sg_der *a, size_t n, sg_err *err)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    if (sk == NULL) {
        sg_err_set(err, SG_ENOMEM, "node client: out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        X509 *x = NULL;
        if (sg_x509_from_der(a[i].data, a[i].len, &x, err) < 0 || sk_X509_push(sk, x) <= 0) {
            X509_free(x);
            sk_X509_pop_free(sk, X509_free);
            return NULL;
        }
    }
    return sk;
}

static bool status_is_rejection(grpc_status_code code)
{
    return code == GRPC_STATUS_PERMISSION_DENIED || code == GRPC_STATUS_UNAUTHENTICATED;
}

/* Replaces the client's bundle with certs[0..n) (copied) and re-derives its PEM. */
static int set_bundle(sg_node_client *c, const sg_der *certs, size_t n, uint64_t seq, sg_err *err)
{
    if (n == 0)
        return sg_err_set(err, SG_EPROTO, "trust bundle holds no X.509 authority");
    char *pem = NULL;
    int rc = sg_x509_der_list_to_pem(certs, n, &pem, err);
    if (rc < 0)
        return rc;
    sg_der *copy = NULL;
    rc = der_array_copy(certs, n, &copy, err);
    if (rc < 0) {
        free(pem);
        return rc;
    }
    sg_agent_bundle_cleanup(&c->bundle);
    free(c->bundle_pem);
    c->bundle.certs = copy;
    c->bundle.n = n;
    c->bundle.sequence = seq;
    c->bundle_pem = pem;
    return 0;
}

static bool bundle_equals(const sg_agent_bundle *b, const sg_der *certs, size_t n)
{
    if (b->n != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (b->certs[i].len != certs[i].len ||
            memcmp(b->certs[i].data, certs[i].data, certs[i].len) != 0)
            return false;
    return true;
}

static int read_trust_bundle(const sg_agent_config *cfg, sg_der **out, size_t *n, sg_err *err)
{
    uint8_t *data = NULL;
    size_t len = 0;
    sg_err e;
    sg_err_clear(&e);
    int rc = sg_fs_read_file(cfg->trust_bundle_path, NODE_MAX_BUNDLE_FILE, &data, &len, &e);
    if (rc < 0)
        return sg_err_set(err, SG_ECONFIG, "cannot read trust_bundle_path: %.200s", e.msg);
    if (cfg->trust_bundle_format != NULL && strcmp(cfg->trust_bundle_format, "spiffe") == 0) {
        sg_bundle b;
        rc = sg_bundle_from_jwks(cfg->trust_domain, (const char *)data, len, &b, &e);
        free(data);
        if (rc < 0)
            return sg_err_set(err, rc == SG_ENOMEM ? rc : SG_ECONFIG,
                              "trust_bundle_path %.200s: invalid SPIFFE bundle: %.200s",
                              cfg->trust_bundle_path, e.msg);
        if (b.nx509 == 0) {
            sg_bundle_cleanup(&b);
            return sg_err_set(
                err, SG_ECONFIG,
                "trust_bundle_path %.200s: SPIFFE bundle holds no x509-svid authority",
                cfg->trust_bundle_path);
        }
        *out = b.x509; /* the authorities move to the caller */
        *n = b.nx509;
        b.x509 = NULL;
        b.nx509 = 0;
        sg_bundle_cleanup(&b);
        return 0;
    }
    STACK_OF(X509) *sk = NULL;
    rc = sg_x509_parse_pem_chain((const char *)data, len, &sk, &e);
    free(data);
    if (rc < 0)
        return sg_err_set(err, SG_ECONFIG, "trust_bundle_path %.200s: %.200s",
                          cfg->trust_bundle_path, e.msg);
    int count = sk_X509_num(sk);
    sg_der *a = calloc((size_t)count + 1, sizeof(*a));
    if (a == NULL) {
        sk_X509_pop_free(sk, X509_free);
        return sg_err_set(err, SG_ENOMEM, "node client: out of memory");
    }
    for (int i = 0; i < count; i++) {
        rc = sg_x509_to_der(sk_X509_value(sk, i), &a[i], err);
        if (rc < 0) {
            der_array_free(a, (size_t)i);
            sk_X509_pop_free(sk, X509_free);
            return rc;
        }
    }
    sk_X509_pop_free(sk, X509_free);
    *out = a;
    *n = (size_t)count;
    return 0;
}

/* Replaces the published credentials (copies; the old key PEM is wiped). */
static void publish_creds(sg_node_client *c, const char *key_pem, const char *chain_pem)
{
    char *k = strdup(key_pem), *ch = strdup(chain_pem);
    char *b = c->bundle_pem != NULL ? strdup(c->bundle_pem) : NULL;
    if (k == NULL || ch == NULL || (c->bundle_pem != NULL && b == NULL)) {
        /* The JWT-SVID channel keeps its old credentials until the next channel. */
        sg_key_pem_free(k);
        free(ch);
        free(b);
        return;
    }
    pthread_mutex_lock(&c->cred_mu);
    sg_key_pem_free(c->cred_key_pem);
    free(c->cred_chain_pem);
    free(c->cred_bundle_pem);
    c->cred_key_pem = k;
    c->cred_chain_pem = ch;
    c->cred_bundle_pem = b;
    c->cred_gen++;
    pthread_mutex_unlock(&c->cred_mu);
}

/* A channel to the server with these credentials (key and chain NULL: no client certificate). */
static int channel_from_pems(const sg_node_client *c, const char *bundle_pem, const char *key_pem,
                             const char *chain_pem, grpc_channel **out, sg_err *err)
{
    int rc = 0;
    grpc_channel_credentials *creds =
        sg_tls_channel_credentials(bundle_pem, key_pem, chain_pem, c->server_id, err);
    if (creds == NULL)
        return err != NULL && err->code < 0 ? err->code : SG_ECRYPTO;
    /* Reconnect soon after a server restart: the agent's own backoff paces
     * the calls, gRPC's default (up to 120 s) would outlast short SVIDs. */
    grpc_arg args[3];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = NODE_MAX_RECV;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
    args[1].value.integer = 500;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    args[2].value.integer = 1000;
    grpc_channel_args cargs = {.num_args = 3, .args = args};
    grpc_channel *ch = grpc_channel_create(c->target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    if (ch == NULL)
        return sg_err_set(err, SG_EUNAVAIL, "cannot create a channel to %.200s", c->target);
    *out = ch;
    return rc;
}

/* Builds a channel to the server; with_svid presents the agent SVID (mTLS). */
static int make_channel(sg_node_client *c, bool with_svid, grpc_channel **out, sg_err *err)
{
    char *key_pem = NULL, *chain_pem = NULL;
    int rc = 0;
    if (with_svid) {
        if (!c->has_svid)
            return sg_err_set(err, SG_EUNAUTH, "the agent holds no SVID");
        rc = sg_key_to_pem(c->svid.key, &key_pem, err);
        if (rc == 0)
            rc = sg_x509_der_list_to_pem(c->svid.chain, c->svid.nchain, &chain_pem, err);
        if (rc < 0)
            goto done;
    }
    if (c->bundle_pem == NULL)
        sg_log_warn("insecure bootstrap: the server's certificate chain is not verified "
                    "(its SPIFFE ID %s still is)",
                    c->server_id);
    rc = channel_from_pems(c, c->bundle_pem, key_pem, chain_pem, out, err);
    if (rc == 0 && with_svid)
        publish_creds(c, key_pem, chain_pem);
done:
    sg_key_pem_free(key_pem);
    free(chain_pem);
    return rc;
}

static int ensure_channel(sg_node_client *c, sg_err *err)
{
    if (c->ch != NULL)
        return 0;
    return make_channel(c, true, &c->ch, err);
}

static void close_sync(sg_node_client *c)
{
    pthread_mutex_lock(&c->sync_mu);
    sg_rpc_stream *st = c->sync_st;
    c->sync_st = NULL;
    pthread_mutex_unlock(&c->sync_mu);
    sg_rpc_stream_free(st);
}

static void drop_channel(sg_node_client *c)
{
    /* The Sync stream rides on the channel. */
    close_sync(c);
    if (c->ch != NULL) {
        grpc_channel_destroy(c->ch);
        c->ch = NULL;
    }
}

static void drop_svid(sg_node_client *c)
{
    drop_channel(c);
    sg_keystore_svid_cleanup(&c->svid);
    c->has_svid = false;
}

/*
 * Checks an SVID from the server (key is the one its CSR was made with):
 * key matches, one SPIFFE ID in our trust domain and equal to what the
 * server says, chain verifies to the bundle.
 */
static int accept_svid(sg_node_client *c, EVP_PKEY *key, const Sigil__Node__V1__X509SVID *pb,
                       sg_keystore_svid *out, sg_err *err)
{
    if (pb == NULL || pb->n_cert_chain == 0)
        return sg_err_set(err, SG_EPROTO, "server sent no agent SVID");
    sg_der *chain = NULL;
    int rc = der_array_from_pb(pb->cert_chain, pb->n_cert_chain, &chain, err);
    if (rc < 0)
        return rc;
    sg_keystore_svid s;
    memset(&s, 0, sizeof(s));
    rc = sg_keystore_svid_make(key, chain, pb->n_cert_chain, &s, err);
    der_array_free(chain, pb->n_cert_chain);
    if (rc < 0)
        return rc;
    sg_spiffeid id;
    rc = sg_spiffeid_parse(s.spiffe_id, &id, err);
    if (rc == 0 && !sg_spiffeid_member_of(&id, c->trust_domain))
        rc = sg_err_set(err, SG_EUNTRUSTED, "agent SVID %.200s is not in trust domain %.100s",
                        s.spiffe_id, c->trust_domain);
    if (rc == 0 && pb->spiffe_id != NULL && pb->spiffe_id[0] != '\0' &&
        strcmp(pb->spiffe_id, s.spiffe_id) != 0)
        rc = sg_err_set(err, SG_EPROTO,
                        "server says agent ID %.100s but the certificate holds %.100s",
                        pb->spiffe_id, s.spiffe_id);
    if (rc == 0 && c->bundle.n > 0) {
        STACK_OF(X509) *roots = der_array_to_stack(c->bundle.certs, c->bundle.n, err);
        STACK_OF(X509) *inter = roots ? der_array_to_stack(s.chain + 1, s.nchain - 1, err) : NULL;
        X509 *leaf = NULL;
        if (roots == NULL || inter == NULL)
            rc = err != NULL && err->code < 0 ? err->code : SG_ENOMEM;
        else
            rc = sg_x509_from_der(s.chain[0].data, s.chain[0].len, &leaf, err);
        if (rc == 0)
            rc = sg_x509_verify_svid(leaf, inter, roots, 0, NULL, err);
        X509_free(leaf);
        if (roots)
            sk_X509_pop_free(roots, X509_free);
        if (inter)
            sk_X509_pop_free(inter, X509_free);
    }
    if (rc < 0) {
        sg_keystore_svid_cleanup(&s);
        return rc;
    }
    *out = s;
    return 0;
}

/* Makes s the current SVID (taken), saves it and rebuilds the channel. */
static void adopt_svid(sg_node_client *c, sg_keystore_svid *s)
{
    drop_svid(c);
    c->svid = *s;
    memset(s, 0, sizeof(*s));
    c->has_svid = true;
    c->svid_rejected = false;
    sg_err e;
    sg_err_clear(&e);
    if (sg_keystore_save_svid(&c->ks, &c->svid, &e) < 0)
        sg_log_warn("cannot store the agent SVID: %s", e.msg);
}

static void save_bundle(sg_node_client *c)
{
    sg_err e;
    sg_err_clear(&e);
    if (sg_keystore_save_bundle(&c->ks, c->bundle.certs, c->bundle.n, &e) < 0)
        sg_log_warn("cannot store the trust bundle: %s", e.msg);
}

/* New key and its DER CSR. */
static int new_key_and_csr(EVP_PKEY **key, sg_der *csr, sg_err *err)
{
    EVP_PKEY *k = NULL;
    int rc = sg_key_generate(SG_KEY_EC_P256, &k, err);
    if (rc < 0)
        return rc;
    rc = sg_x509_csr_create(k, NULL, csr, err);
    if (rc < 0) {
        EVP_PKEY_free(k);
        return rc;
    }
    *key = k;
    return 0;
}

/* ------------------------------------------------------------ lifecycle */

int sg_node_client_new(sg_node_client **out, const sg_agent_config *cfg, sg_err *err)
{
    if (cfg == NULL || cfg->server_address == NULL || cfg->server_address[0] == '\0')
        return sg_err_set(err, SG_ECONFIG, "agent config: server_address is required");
    if (cfg->trust_domain[0] == '\0')
        return sg_err_set(err, SG_ECONFIG, "agent config: trust_domain is required");
    if (cfg->server_port <= 0 || cfg->server_port > 65535)
        return sg_err_set(err, SG_ECONFIG, "agent config: server_port %d is out of range",
                          cfg->server_port);
    sg_node_client *c = calloc(1, sizeof(*c));
    if (c != NULL) {
        pthread_mutex_init(&c->sync_mu, NULL);
        pthread_mutex_init(&c->cred_mu, NULL);
    }
    if (c == NULL)
        return sg_err_set(err, SG_ENOMEM, "node client: out of memory");
    int rc;
    size_t tlen = strlen(cfg->server_address) + 16;
    c->target = malloc(tlen);
    if (c->target == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "node client: out of memory");
        goto fail;
    }
    /* A bare IPv6 address needs brackets before the port. */
    if (strchr(cfg->server_address, ':') != NULL && cfg->server_address[0] != '[')
        snprintf(c->target, tlen, "[%s]:%d", cfg->server_address, cfg->server_port);
    else
        snprintf(c->target, tlen, "%s:%d", cfg->server_address, cfg->server_port);
    snprintf(c->trust_domain, sizeof(c->trust_domain), "%s", cfg->trust_domain);
    sg_spiffeid sid;
    rc = sg_spiffeid_from_parts(c->trust_domain, "/spire/server", &sid, err);
    if (rc < 0)
        goto fail;
    snprintf(c->server_id, sizeof(c->server_id), "%s", sid.str);
    if (cfg->join_token != NULL && cfg->join_token[0] != '\0') {
        c->join_token = strdup(cfg->join_token);
        if (c->join_token == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "node client: out of memory");
            goto fail;
        }
    }
    c->attestor = sg_registry_node_agent("join_token");
    if (c->attestor == NULL) {
        rc = sg_err_set(err, SG_ECONFIG, "node attestor \"join_token\" is not built in");
        goto fail;
    }

    const char *dir = NULL;
    if (cfg->keys_on_disk)
        dir = cfg->keys_directory != NULL ? cfg->keys_directory : cfg->data_dir;
    if (cfg->keys_on_disk && dir == NULL) {
        rc = sg_err_set(err, SG_ECONFIG, "KeyManager \"disk\": no directory and no data_dir");
        goto fail;
    }
    rc = sg_keystore_init(&c->ks, dir, err);
    if (rc < 0)
        goto fail;

    /* The bundle the server sent last time wins over the bootstrap bundle. */
    sg_der *certs = NULL;
    size_t n = 0;
    sg_err e;
    sg_err_clear(&e);
    if (sg_keystore_load_bundle(&c->ks, &certs, &n, &e) == 0) {
        rc = set_bundle(c, certs, n, 0, err);
        der_array_free(certs, n);
        if (rc < 0)
            goto fail;
    } else if (cfg->trust_bundle_path != NULL && cfg->trust_bundle_path[0] != '\0') {
        rc = read_trust_bundle(cfg, &certs, &n, err);
        if (rc < 0)
            goto fail;
        rc = set_bundle(c, certs, n, 0, err);
        der_array_free(certs, n);
        if (rc < 0)
            goto fail;
    } else if (!cfg->insecure_bootstrap) {
        rc = sg_err_set(err, SG_ECONFIG,
                        "agent config: trust_bundle_path is required unless insecure_bootstrap "
                        "is set");
        goto fail;
    }

    sg_err_clear(&e);
    if (sg_keystore_load_svid(&c->ks, 0, &c->svid, &e) == 0) {
        c->has_svid = true;
        sg_log_info("loaded the agent SVID %s from %s", c->svid.spiffe_id, c->ks.dir);
    }
    *out = c;
    return 0;
fail:
    sg_node_client_free(c);
    return rc;
}

void sg_node_client_free(sg_node_client *c)
{
    if (c == NULL)
        return;
    drop_svid(c);
    sg_agent_bundle_cleanup(&c->bundle);
    free(c->bundle_pem);
    sg_keystore_cleanup(&c->ks);
    if (c->join_token != NULL) {
        memset(c->join_token, 0, strlen(c->join_token));
        free(c->join_token);
    }
    free(c->target);
    if (c->jwt_ch != NULL)
        grpc_channel_destroy(c->jwt_ch);
    sg_key_pem_free(c->cred_key_pem);
    free(c->cred_chain_pem);
    free(c->cred_bundle_pem);
    pthread_mutex_destroy(&c->sync_mu);
    pthread_mutex_destroy(&c->cred_mu);
    free(c);
}

void sg_node_client_interrupt(sg_node_client *c)
{
    if (c == NULL)
        return;
    atomic_store(&c->interrupted, true);
    pthread_mutex_lock(&c->sync_mu);
    sg_rpc_stream_cancel(c->sync_st);
    pthread_mutex_unlock(&c->sync_mu);
}

bool sg_node_client_has_svid(sg_node_client *c)
{
    return c != NULL && c->has_svid;
}

const char *sg_node_client_agent_id(sg_node_client *c)
{
    return c != NULL && c->has_svid ? c->svid.spiffe_id : "";
}

int64_t sg_node_client_svid_expiry(sg_node_client *c)
{
    return c != NULL && c->has_svid ? c->svid.not_after : 0;
}

/* ------------------------------------------------------------ attestation */

static int attest(sg_node_client *c, const char *token, bool after_rejection, sg_err *err)
{
    sg_agent_config acfg;
    memset(&acfg, 0, sizeof(acfg));
    snprintf(acfg.trust_domain, sizeof(acfg.trust_domain), "%s", c->trust_domain);
    acfg.join_token = (char *)token;
    acfg.join_token_enabled = true;

    void *ast = NULL;
    uint8_t *payload = NULL;
    size_t plen = 0;
    EVP_PKEY *key = NULL;
    sg_der csr = {0};
    grpc_channel *ch = NULL;
    sg_rpc_stream *st = NULL;
    ProtobufCMessage *msg = NULL;
    sg_err e;
    sg_err_clear(&e);
    int rc = c->attestor->configure(&acfg, &ast, err);
    if (rc < 0)
        return rc;
    rc = c->attestor->payload(ast, &payload, &plen, &e);
    if (rc < 0) {
        if (after_rejection)
            rc = sg_err_set(err, rc, "agent SVID rejected by the server and %s", e.msg);
        else
            rc = sg_err_set(err, rc, "%s", e.msg);
        goto done;
    }
    rc = new_key_and_csr(&key, &csr, err);
    if (rc < 0)
        goto done;
    rc = make_channel(c, false, &ch, err);
    if (rc < 0)
        goto done;

    Sigil__Node__V1__AttestationData data = SIGIL__NODE__V1__ATTESTATION_DATA__INIT;
    data.type = (char *)c->attestor->name;
    data.payload.data = payload;
    data.payload.len = plen;
    Sigil__Node__V1__AttestAgentParams params = SIGIL__NODE__V1__ATTEST_AGENT_PARAMS__INIT;
    params.data = &data;
    params.csr.data = csr.data;
    params.csr.len = csr.len;
    Sigil__Node__V1__AttestAgentRequest req = SIGIL__NODE__V1__ATTEST_AGENT_REQUEST__INIT;
    req.step_case = SIGIL__NODE__V1__ATTEST_AGENT_REQUEST__STEP_PARAMS;
    req.params = &params;
    rc = sg_rpc_stream_open(ch, NODE_PATH_ATTEST, &req.base, true, NULL, 0, NODE_ATTEST_TIMEOUT_MS,
                            &st, err);
    if (rc < 0)
        goto done;

    Sigil__Node__V1__AttestAgentResult *result = NULL;
    for (int round = 0; result == NULL; round++) {
        sg_rpc_status status = {0};
        rc = sg_rpc_stream_next(st, &sigil__node__v1__attest_agent_response__descriptor, 0, &msg,
                                &status, &e);
        if (rc == 0) {
            rc = sg_err_set(err, SG_EPROTO, "server ended attestation without a result");
            goto done;
        }
        if (rc < 0) {
            /* A join token is single-use: once our SVID was refused, a refusal
             * of the token almost surely means it was spent by us. */
            if (after_rejection &&
                (status_is_rejection(status.code) || status.code == GRPC_STATUS_INVALID_ARGUMENT))
                rc = sg_err_set(err, SG_EPERM, TOKEN_USED_MSG " (server: %.120s)", status.details);
            else
                rc = sg_err_set(err, rc, "node attestation failed: %.200s", e.msg);
            goto done;
        }
        Sigil__Node__V1__AttestAgentResponse *resp = (Sigil__Node__V1__AttestAgentResponse *)msg;
        if (resp->step_case == SIGIL__NODE__V1__ATTEST_AGENT_RESPONSE__STEP_RESULT) {
            result = resp->result;
            if (result == NULL) {
                rc = sg_err_set(err, SG_EPROTO, "server sent an empty attestation result");
                goto done;
            }
            break;
        }
        if (resp->step_case != SIGIL__NODE__V1__ATTEST_AGENT_RESPONSE__STEP_CHALLENGE) {
            rc = sg_err_set(err, SG_EPROTO, "server sent an attestation response with no step");
            goto done;
        }
        if (c->attestor->challenge == NULL) {
            rc = sg_err_set(err, SG_EPROTO,
                            "server sent a challenge but node attestor \"%s\" takes none",
                            c->attestor->name);
            goto done;
        }
        if (round >= NODE_MAX_CHALLENGES) {
            rc = sg_err_set(err, SG_EPROTO, "server sent more than %d challenges",
                            NODE_MAX_CHALLENGES);
            goto done;
        }
        uint8_t *answer = NULL;
        size_t alen = 0;
        rc = c->attestor->challenge(ast, resp->challenge.data, resp->challenge.len, &answer, &alen,
                                    err);
        if (rc < 0)
            goto done;
        Sigil__Node__V1__AttestAgentRequest creq = SIGIL__NODE__V1__ATTEST_AGENT_REQUEST__INIT;
        creq.step_case = SIGIL__NODE__V1__ATTEST_AGENT_REQUEST__STEP_CHALLENGE_RESPONSE;
        creq.challenge_response.data = answer;
        creq.challenge_response.len = alen;
        rc = sg_rpc_stream_send(st, &creq.base, err);
        free(answer);
        if (rc < 0)
            goto done;
        protobuf_c_message_free_unpacked(msg, NULL);
        msg = NULL;
    }

    /* The bundle comes first: the SVID is verified against it. */
    if (result->bundle == NULL || result->bundle->n_x509_authorities == 0) {
        rc = sg_err_set(err, SG_EPROTO, "attestation result holds no trust bundle");
        goto done;
    }
    sg_der *certs = NULL;
    size_t ncerts = result->bundle->n_x509_authorities;
    rc = der_array_from_pb(result->bundle->x509_authorities, ncerts, &certs, err);
    if (rc < 0)
        goto done;
    sg_agent_bundle old = c->bundle;
    char *old_pem = c->bundle_pem;
    memset(&c->bundle, 0, sizeof(c->bundle));
    c->bundle_pem = NULL;
    rc = set_bundle(c, certs, ncerts, result->bundle->sequence, err);
    der_array_free(certs, ncerts);
    sg_keystore_svid s;
    if (rc == 0)
        rc = accept_svid(c, key, result->svid, &s, err);
    if (rc < 0) {
        sg_agent_bundle_cleanup(&c->bundle);
        free(c->bundle_pem);
        c->bundle = old;
        c->bundle_pem = old_pem;
        goto done;
    }
    sg_agent_bundle_cleanup(&old);
    free(old_pem);
    save_bundle(c);
    adopt_svid(c, &s);
    (void)sg_rpc_stream_close_send(st, NULL);
    sg_log_info("node attestation succeeded: agent ID %s, SVID valid until %lld", c->svid.spiffe_id,
                (long long)c->svid.not_after);
done:
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    sg_rpc_stream_free(st);
    if (ch != NULL)
        grpc_channel_destroy(ch);
    sg_der_cleanup(&csr);
    EVP_PKEY_free(key);
    if (payload != NULL) {
        memset(payload, 0, plen);
        free(payload);
    }
    c->attestor->destroy(ast);
    return rc;
}

static void note_rejection(sg_node_client *c, const sg_rpc_status *status)
{
    if (status_is_rejection(status->code) && c->has_svid) {
        sg_log_warn("the server refused the agent SVID %s: %s", c->svid.spiffe_id, status->details);
        c->svid_rejected = true;
    }
}

static int renew(sg_node_client *c, sg_err *err)
{
    EVP_PKEY *key = NULL;
    sg_der csr = {0};
    ProtobufCMessage *resp = NULL;
    int rc = new_key_and_csr(&key, &csr, err);
    if (rc < 0)
        return rc;
    rc = ensure_channel(c, err);
    if (rc < 0)
        goto done;
    Sigil__Node__V1__RenewAgentRequest req = SIGIL__NODE__V1__RENEW_AGENT_REQUEST__INIT;
    req.csr.data = csr.data;
    req.csr.len = csr.len;
    sg_rpc_status status = {0};
    rc = sg_rpc_unary(c->ch, NODE_PATH_RENEW, &req.base,
                      &sigil__node__v1__renew_agent_response__descriptor, NULL, 0,
                      NODE_CALL_TIMEOUT_MS, &resp, &status, err);
    if (rc < 0) {
        note_rejection(c, &status);
        goto done;
    }
    sg_keystore_svid s;
    rc = accept_svid(c, key, ((Sigil__Node__V1__RenewAgentResponse *)resp)->svid, &s, err);
    if (rc < 0)
        goto done;
    adopt_svid(c, &s);
    sg_log_info("renewed the agent SVID %s, valid until %lld", c->svid.spiffe_id,
                (long long)c->svid.not_after);
done:
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    sg_der_cleanup(&csr);
    EVP_PKEY_free(key);
    return rc;
}

int sg_node_client_ensure_svid(sg_node_client *c, const char *join_token, sg_err *err)
{
    if (c == NULL)
        return sg_err_set(err, SG_EINVAL, "node client: NULL client");
    int64_t now = (int64_t)time(NULL);
    bool rejected = c->svid_rejected;
    if (c->has_svid && c->svid.not_after <= now) {
        sg_log_warn("the agent SVID %s has expired", c->svid.spiffe_id);
        drop_svid(c);
    }
    if (c->has_svid && !c->svid_rejected) {
        int64_t life = c->svid.not_after - c->svid.not_before;
        if (!c->renew_now && now - c->svid.not_before < life / 2)
            return 0;
        int rc = renew(c, err);
        if (rc == 0)
            c->renew_now = false;
        if (rc == 0 || !c->svid_rejected)
            return rc;
        rejected = true;
    }
    if (c->has_svid && c->svid_rejected) {
        /* Evicted (or otherwise refused): forget the identity for good. */
        sg_err e;
        sg_err_clear(&e);
        if (sg_keystore_remove_svid(&c->ks, &e) < 0)
            sg_log_warn("cannot remove the stored agent SVID: %s", e.msg);
        drop_svid(c);
        rejected = true;
    }
    const char *token = join_token != NULL && join_token[0] != '\0' ? join_token : c->join_token;
    int rc = attest(c, token, rejected, err);
    if (rc == 0)
        c->svid_rejected = false;
    else
        c->svid_rejected = rejected;
    return rc;
}

/* ------------------------------------------------------------ sync */

/* Copies the JWT authorities of a Bundle message into keys[0..n). */
static int jwt_keys_from_pb(Sigil__Node__V1__JWTKey *const *src, size_t n, sg_jwt_key **out,
                            size_t *nout, sg_err *err)
{
    if (n > NODE_MAX_JWT_KEYS)
        return sg_err_set(err, SG_EPROTO, "server sent a bundle with %zu JWT authorities", n);
    sg_jwt_key *k = calloc(n ? n : 1, sizeof(*k));
    if (k == NULL)
        return sg_err_set(err, SG_ENOMEM, "node client: out of memory");
    size_t got = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const Sigil__Node__V1__JWTKey *pk = src[i];
        if (pk == NULL || pk->kid == NULL || pk->kid[0] == '\0' || strlen(pk->kid) > 256 ||
            pk->public_key.len == 0 || pk->public_key.len > SG_X509_MAX_DER) {
            rc =
                sg_err_set(err, SG_EPROTO, "server sent JWT authority %zu without a kid or key", i);
            goto fail;
        }
        k[got].kid = strdup(pk->kid);
        k[got].spki.data = malloc(pk->public_key.len);
        if (k[got].kid == NULL || k[got].spki.data == NULL) {
            free(k[got].kid);
            free(k[got].spki.data);
            rc = sg_err_set(err, SG_ENOMEM, "node client: out of memory");
            goto fail;
        }
        memcpy(k[got].spki.data, pk->public_key.data, pk->public_key.len);
        k[got].spki.len = pk->public_key.len;
        k[got].expires_at = pk->expires_at;
        got++;
    }
    *out = k;
    *nout = got;
    return 0;
fail:
    for (size_t i = 0; i < got; i++) {
        free(k[i].kid);
        sg_der_cleanup(&k[i].spki);
    }
    free(k);
    return rc;
}

/* A foreign trust domain's bundle from a Sync message, as an sg_bundle. */
static int federated_from_pb(const Sigil__Node__V1__Bundle *pb, sg_bundle *out, sg_err *err)
{
    sg_bundle b;
    memset(&b, 0, sizeof(b));
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_err te;
    sg_err_clear(&te);
    if (pb == NULL || sg_trust_domain_parse(pb->trust_domain ? pb->trust_domain : "", td, &te) < 0)
        return sg_err_set(err, SG_EPROTO,
                          "server sent a federated bundle with a bad trust domain%s%s",
                          pb != NULL ? ": " : "", pb != NULL ? te.msg : "");
    int rc = 0;
    b.trust_domain = strdup(td);
    if (b.trust_domain == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "node client: out of memory");
        goto fail;
    }
    if (pb->n_x509_authorities > 0) {
        rc = der_array_from_pb(pb->x509_authorities, pb->n_x509_authorities, &b.x509, err);
        if (rc < 0)
            goto fail;
        b.nx509 = pb->n_x509_authorities;
    }
    rc = jwt_keys_from_pb(pb->jwt_authorities, pb->n_jwt_authorities, &b.jwt, &b.njwt, err);
    if (rc < 0)
        goto fail;
    b.sequence = pb->sequence;
    b.refresh_hint = pb->refresh_hint;
    *out = b;
    return 0;
fail:
    sg_bundle_cleanup(&b);
    return rc;
}

/* Copies a list of strings from a message (at most max of them). */
static int strings_from_pb(char *const *src, size_t n, size_t max, char ***out, size_t *nout,
                           sg_err *err)
{
    if (n > max)
        return sg_err_set(err, SG_EPROTO, "server sent %zu ids (at most %zu)", n, max);
    char **a = calloc(n ? n : 1, sizeof(*a));
    if (a == NULL)
        return sg_err_set(err, SG_ENOMEM, "node client: out of memory");
    for (size_t i = 0; i < n; i++) {
        a[i] = strdup(src[i] != NULL ? src[i] : "");
        if (a[i] == NULL) {
            for (size_t k = 0; k < i; k++)
                free(a[k]);
            free(a);
            return sg_err_set(err, SG_ENOMEM, "node client: out of memory");
        }
    }
    *out = a;
    *nout = n;
    return 0;
}

static int convert_entry(const Sigil__Node__V1__Entry *pb, sg_agent_entry *out, sg_err *err)
{
    sg_agent_entry e;
    memset(&e, 0, sizeof(e));
    int rc = 0;
    if (pb->id == NULL || pb->id[0] == '\0' || pb->spiffe_id == NULL || pb->spiffe_id[0] == '\0')
        return sg_err_set(err, SG_EPROTO, "server sent an entry without id or SPIFFE ID");
    if (pb->n_selectors > SG_SELECTOR_SET_MAX)
        return sg_err_set(err, SG_EPROTO, "entry %.100s has %zu selectors", pb->id,
                          pb->n_selectors);
    e.id = strdup(pb->id);
    e.spiffe_id = strdup(pb->spiffe_id);
    e.parent_id = strdup(pb->parent_id != NULL ? pb->parent_id : "");
    e.hint = pb->hint != NULL && pb->hint[0] != '\0' ? strdup(pb->hint) : NULL;
    e.selectors = calloc(pb->n_selectors + 1, sizeof(*e.selectors));
    e.dns_names = calloc(pb->n_dns_names + 1, sizeof(*e.dns_names));
    if (e.id == NULL || e.spiffe_id == NULL || e.parent_id == NULL || e.selectors == NULL ||
        e.dns_names == NULL || (pb->hint != NULL && pb->hint[0] != '\0' && e.hint == NULL)) {
        rc = sg_err_set(err, SG_ENOMEM, "node client: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < pb->n_selectors; i++) {
        const Sigil__Node__V1__Selector *s = pb->selectors[i];
        rc = sg_selector_init(&e.selectors[i], s ? s->type : "", s ? s->value : "", err);
        if (rc < 0)
            goto fail;
        e.nselectors++;
    }
    for (size_t i = 0; i < pb->n_dns_names; i++) {
        e.dns_names[i] = strdup(pb->dns_names[i] != NULL ? pb->dns_names[i] : "");
        if (e.dns_names[i] == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "node client: out of memory");
            goto fail;
        }
        e.ndns++;
    }
    if (pb->n_federates_with > NODE_MAX_FEDERATES) {
        rc = sg_err_set(err, SG_EPROTO, "entry %.100s federates with %zu trust domains", pb->id,
                        pb->n_federates_with);
        goto fail;
    }
    if (pb->n_federates_with > 0) {
        e.federates_with = calloc(pb->n_federates_with, sizeof(*e.federates_with));
        if (e.federates_with == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "node client: out of memory");
            goto fail;
        }
    }
    for (size_t i = 0; i < pb->n_federates_with; i++) {
        char td[SG_TRUST_DOMAIN_MAX + 1];
        sg_err te;
        sg_err_clear(&te);
        const char *raw = pb->federates_with[i] != NULL ? pb->federates_with[i] : "";
        if (sg_trust_domain_parse(raw, td, &te) < 0) {
            rc = sg_err_set(err, SG_EPROTO, "entry %.100s federates with a bad trust domain: %s",
                            pb->id, te.msg);
            goto fail;
        }
        e.federates_with[i] = strdup(td);
        if (e.federates_with[i] == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "node client: out of memory");
            goto fail;
        }
        e.nfederates++;
    }
    e.x509_svid_ttl = pb->x509_svid_ttl;
    e.jwt_svid_ttl = pb->jwt_svid_ttl;
    e.revision = pb->revision;
    *out = e;
    return 0;
fail:
    sg_agent_entry_cleanup(&e);
    return rc;
}

/* Whether the agent SVID's issuer (its AKID, in hex) is one of ids. */
/* Turns item i of a Sync response's list into the element at out. */
typedef int (*sync_item_fn)(const Sigil__Node__V1__SyncResponse *resp, size_t i, void *out,
                            sg_err *err);

static int sync_entry_at(const Sigil__Node__V1__SyncResponse *resp, size_t i, void *out,
                         sg_err *err)
{
    return convert_entry(resp->entries[i], out, err);
}

static int sync_federated_at(const Sigil__Node__V1__SyncResponse *resp, size_t i, void *out,
                             sg_err *err)
{
    return federated_from_pb(resp->federated_bundles[i], out, err);
}

/*
 * Converts n items of resp with conv into a new array of elem-sized
 * elements at *out (*nout of them, freed by the caller also on failure).
 * A malformed item is skipped with a warning naming what, so that it cannot
 * cost the agent every other one; only running out of memory fails.
 */
static int convert_items(const Sigil__Node__V1__SyncResponse *resp, size_t n, size_t elem,
                         sync_item_fn conv, const char *what, void **out, size_t *nout, sg_err *err)
{
    char *a = calloc(n + 1, elem);
    if (a == NULL)
        return sg_err_set(err, SG_ENOMEM, "node client: out of memory");
    *out = a;
    *nout = 0;
    for (size_t i = 0; i < n; i++) {
        sg_err e;
        sg_err_clear(&e);
        int rc = conv(resp, i, a + *nout * elem, &e);
        if (rc == SG_ENOMEM)
            return sg_err_set(err, rc, "%s", e.msg);
        if (rc < 0)
            sg_log_warn("skipping %s from Sync: %s", what, e.msg);
        else
            (*nout)++;
    }
    return 0;
}

static bool svid_signed_by_any(sg_node_client *c, char *const *ids, size_t n)
{
    X509 *leaf = NULL;
    char hex[2 * 64 + 1] = "";
    sg_err e;

    if (!c->has_svid || c->svid.nchain == 0 ||
        sg_x509_from_der(c->svid.chain[0].data, c->svid.chain[0].len, &leaf, &e) < 0)
        return false;
    const ASN1_OCTET_STRING *akid = X509_get0_authority_key_id(leaf);
    if (akid != NULL) {
        const unsigned char *d = ASN1_STRING_get0_data(akid);
        int len = ASN1_STRING_length(akid);
        for (int i = 0; i < len && i < 64; i++)
            snprintf(hex + 2 * i, 3, "%02x", d[i]);
    }
    X509_free(leaf);
    for (size_t i = 0; hex[0] != '\0' && i < n; i++)
        if (strcmp(ids[i], hex) == 0)
            return true;
    return false;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps up to ms, in short steps so sg_node_client_interrupt ends it soon. */
static void sleep_interruptible(sg_node_client *c, int64_t ms)
{
    int64_t end = mono_ms() + ms;
    while (!atomic_load(&c->interrupted)) {
        int64_t left = end - mono_ms();
        if (left <= 0)
            break;
        if (left > 100)
            left = 100;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left * 1000000};
        nanosleep(&ts, NULL);
    }
}

int sg_node_client_sync(sg_node_client *c, int64_t wait_ms, sg_sync_result *out, sg_err *err)
{
    if (c == NULL || out == NULL)
        return sg_err_set(err, SG_EINVAL, "node client: NULL argument");
    if (atomic_load(&c->interrupted))
        return sg_err_set(err, SG_ECANCELLED, "node client: stopping");
    if (!c->has_svid)
        return sg_err_set(err, SG_EUNAUTH, "the agent has not attested yet");
    int rc = ensure_channel(c, err);
    if (rc < 0)
        return rc;
    ProtobufCMessage *msg = NULL;
    sg_rpc_status status = {0};
    sg_sync_result r;
    memset(&r, 0, sizeof(r));
    bool first = false;
    if (c->sync_st == NULL) {
        int64_t now = mono_ms();
        if (now < c->sync_reopen_ms) {
            sleep_interruptible(c, wait_ms < c->sync_reopen_ms - now ? wait_ms
                                                                     : c->sync_reopen_ms - now);
            if (mono_ms() < c->sync_reopen_ms || atomic_load(&c->interrupted))
                return 0;
        }
        Sigil__Node__V1__SyncRequest req = SIGIL__NODE__V1__SYNC_REQUEST__INIT;
        sg_rpc_stream *st = NULL;
        /* No deadline: the server keeps the stream open and pushes changes. */
        rc = sg_rpc_stream_open(c->ch, NODE_PATH_SYNC, &req.base, false, NULL, 0, 0, &st, err);
        if (rc < 0)
            return rc;
        pthread_mutex_lock(&c->sync_mu);
        c->sync_st = st;
        pthread_mutex_unlock(&c->sync_mu);
        if (atomic_load(&c->interrupted))
            sg_rpc_stream_cancel(st);
        first = true;
    }
    /* The first message is the full state and must come promptly; later
     * ones arrive when something changes. */
    rc = sg_rpc_stream_next(c->sync_st, &sigil__node__v1__sync_response__descriptor,
                            first ? NODE_CALL_TIMEOUT_MS : (wait_ms > 0 ? wait_ms : 1), &msg,
                            &status, err);
    if (rc == SG_ETIMEDOUT && !first)
        return 0;
    if (rc < 0) {
        note_rejection(c, &status);
        close_sync(c);
        goto done;
    }
    if (rc == 0) {
        close_sync(c);
        if (first) {
            rc = sg_err_set(err, SG_EPROTO, "Sync ended without a message");
            goto done;
        }
        c->sync_reopen_ms = mono_ms() + NODE_SYNC_POLL_MS;
        return 0;
    }
    const Sigil__Node__V1__SyncResponse *resp = (const Sigil__Node__V1__SyncResponse *)msg;
    void *items = NULL;
    rc = convert_items(resp, resp->n_entries, sizeof(*r.entries), sync_entry_at, "an entry", &items,
                       &r.nentries, err);
    r.entries = items;
    if (rc < 0)
        goto done;
    r.revision = resp->revision;
    if (resp->n_tainted_authority_ids > 0) {
        rc = strings_from_pb(resp->tainted_authority_ids, resp->n_tainted_authority_ids, SIZE_MAX,
                             &r.tainted_ids, &r.ntainted, err);
        if (rc < 0)
            goto done;
        if (svid_signed_by_any(c, r.tainted_ids, r.ntainted)) {
            sg_log_warn("the authority that signed the agent SVID was tainted; renewing it now");
            c->renew_now = true;
        }
    }
    if (resp->bundle != NULL && resp->bundle->n_x509_authorities > 0) {
        rc = der_array_from_pb(resp->bundle->x509_authorities, resp->bundle->n_x509_authorities,
                               &r.bundle.certs, err);
        if (rc < 0)
            goto done;
        r.bundle.n = resp->bundle->n_x509_authorities;
        r.bundle.sequence = resp->bundle->sequence;
        rc = jwt_keys_from_pb(resp->bundle->jwt_authorities, resp->bundle->n_jwt_authorities,
                              &r.bundle.jwt, &r.bundle.njwt, err);
        if (rc < 0)
            goto done;
        r.bundle.has_jwt = true;
        if (!bundle_equals(&c->bundle, r.bundle.certs, r.bundle.n)) {
            /* CA rotation: trust the new authorities for the next handshakes. */
            rc = set_bundle(c, r.bundle.certs, r.bundle.n, r.bundle.sequence, err);
            if (rc < 0)
                goto done;
            save_bundle(c);
            drop_channel(c);
        } else {
            c->bundle.sequence = r.bundle.sequence;
        }
    } else if (c->bundle.n > 0) {
        rc = der_array_copy(c->bundle.certs, c->bundle.n, &r.bundle.certs, err);
        if (rc < 0)
            goto done;
        r.bundle.n = c->bundle.n;
        r.bundle.sequence = c->bundle.sequence;
    }
    if (resp->n_federated_bundles > NODE_MAX_FEDERATED) {
        rc = sg_err_set(err, SG_EPROTO, "server sent %zu federated bundles",
                        resp->n_federated_bundles);
        goto done;
    }
    if (resp->n_federated_bundles > 0) {
        rc = convert_items(resp, resp->n_federated_bundles, sizeof(*r.federated), sync_federated_at,
                           "a federated bundle", &items, &r.nfederated, err);
        r.federated = items;
        if (rc < 0)
            goto done;
    }
    rc = strings_from_pb(resp->tainted_jwt_key_ids, resp->n_tainted_jwt_key_ids, 4096,
                         &r.tainted_jwt_kids, &r.ntainted_jwt, err);
    if (rc < 0)
        goto done;
    *out = r;
    memset(&r, 0, sizeof(r));
    rc = 1;
done:
    sg_sync_result_cleanup(&r);
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}

/* ------------------------------------------------------------ mint */

static void fill_mint_result(const Sigil__Node__V1__MintX509SVIDResult *pb, sg_mint_result *r)
{
    memset(r, 0, sizeof(*r));
    if (pb == NULL) {
        r->code = SG_EPROTO;
        snprintf(r->error, sizeof(r->error), "server sent an empty result");
        return;
    }
    if (pb->error_code != 0) {
        r->code = sg_rpc_err_from_status((grpc_status_code)pb->error_code);
        if (r->code == 0)
            r->code = SG_EPROTO;
        snprintf(r->error, sizeof(r->error), "%s: %s",
                 sg_rpc_status_name((grpc_status_code)pb->error_code),
                 pb->error != NULL ? pb->error : "");
        return;
    }
    sg_err e;
    sg_err_clear(&e);
    if (pb->svid == NULL || pb->svid->n_cert_chain == 0) {
        r->code = SG_EPROTO;
        snprintf(r->error, sizeof(r->error), "server sent no SVID for entry %.100s", pb->entry_id);
        return;
    }
    if (der_array_from_pb(pb->svid->cert_chain, pb->svid->n_cert_chain, &r->chain, &e) < 0) {
        r->code = e.code < 0 ? e.code : SG_EPROTO;
        snprintf(r->error, sizeof(r->error), "%s", e.msg);
        return;
    }
    r->nchain = pb->svid->n_cert_chain;
    /* The server states expiry and serial, so the hot path never decodes the
     * certificate (OpenSSL 3 decoding costs more than the server's signing);
     * an older server without them is handled by parsing the leaf. */
    if (pb->svid->expires_at > 0 && pb->svid->serial != NULL && pb->svid->serial[0] != '\0' &&
        strlen(pb->svid->serial) < sizeof(r->serial)) {
        r->not_after = pb->svid->expires_at;
        snprintf(r->serial, sizeof(r->serial), "%s", pb->svid->serial);
        if (pb->svid->authority_id != NULL)
            snprintf(r->authority_id, sizeof(r->authority_id), "%s", pb->svid->authority_id);
        return;
    }
    X509 *leaf = NULL;
    if (sg_x509_from_der(r->chain[0].data, r->chain[0].len, &leaf, &e) < 0) {
        der_array_free(r->chain, r->nchain);
        r->chain = NULL;
        r->nchain = 0;
        r->code = e.code < 0 ? e.code : SG_EPROTO;
        snprintf(r->error, sizeof(r->error), "%s", e.msg);
        return;
    }
    r->not_after = sg_x509_not_after(leaf);
    sg_x509_serial_hex(leaf, r->serial, sizeof(r->serial));
    X509_free(leaf);
}

static int mint_chunk(sg_node_client *c, const sg_mint_request *reqs, size_t n,
                      sg_mint_result *results, sg_err *err)
{
    Sigil__Node__V1__X509SVIDParams *params = calloc(n, sizeof(*params));
    Sigil__Node__V1__X509SVIDParams **pp = calloc(n, sizeof(*pp));
    ProtobufCMessage *resp = NULL;
    int rc = 0;
    if (params == NULL || pp == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "node client: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        sigil__node__v1__x509_svidparams__init(&params[i]);
        params[i].entry_id = (char *)(reqs[i].entry_id != NULL ? reqs[i].entry_id : "");
        params[i].key_case = SIGIL__NODE__V1__X509_SVIDPARAMS__KEY_PUBLIC_KEY;
        params[i].public_key.data = (uint8_t *)reqs[i].spki;
        params[i].public_key.len = reqs[i].spki_len;
        pp[i] = &params[i];
    }
    Sigil__Node__V1__MintX509SVIDsRequest req = SIGIL__NODE__V1__MINT_X509_SVIDS_REQUEST__INIT;
    req.n_params = n;
    req.params = pp;
    sg_rpc_status status = {0};
    rc = sg_rpc_unary(c->ch, NODE_PATH_MINT, &req.base,
                      &sigil__node__v1__mint_x509_svids_response__descriptor, NULL, 0,
                      NODE_CALL_TIMEOUT_MS, &resp, &status, err);
    if (rc < 0) {
        note_rejection(c, &status);
        goto done;
    }
    const Sigil__Node__V1__MintX509SVIDsResponse *r =
        (const Sigil__Node__V1__MintX509SVIDsResponse *)resp;
    if (r->n_results != n) {
        rc = sg_err_set(err, SG_EPROTO, "MintX509SVIDs answered %zu results for %zu requests",
                        r->n_results, n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        fill_mint_result(r->results[i], &results[i]);
        if (results[i].code == 0 && r->results[i]->entry_id != NULL &&
            r->results[i]->entry_id[0] != '\0' && reqs[i].entry_id != NULL &&
            strcmp(r->results[i]->entry_id, reqs[i].entry_id) != 0) {
            sg_mint_result_cleanup(&results[i]);
            results[i].code = SG_EPROTO;
            snprintf(results[i].error, sizeof(results[i].error),
                     "server answered entry %.100s for entry %.100s", r->results[i]->entry_id,
                     reqs[i].entry_id);
        }
    }
done:
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    free(params);
    free(pp);
    return rc;
}

int sg_node_client_mint(sg_node_client *c, const sg_mint_request *reqs, size_t n,
                        sg_mint_result *results, sg_err *err)
{
    if (c == NULL || (n > 0 && (reqs == NULL || results == NULL)))
        return sg_err_set(err, SG_EINVAL, "node client: NULL argument");
    for (size_t i = 0; i < n; i++)
        memset(&results[i], 0, sizeof(results[i]));
    if (n == 0)
        return 0;
    if (!c->has_svid)
        return sg_err_set(err, SG_EUNAUTH, "the agent has not attested yet");
    int rc = ensure_channel(c, err);
    if (rc < 0)
        return rc;
    for (size_t off = 0; off < n; off += NODE_MINT_BATCH) {
        size_t k = n - off < NODE_MINT_BATCH ? n - off : NODE_MINT_BATCH;
        rc = mint_chunk(c, reqs + off, k, results + off, err);
        if (rc < 0) {
            for (size_t i = 0; i < off; i++)
                sg_mint_result_cleanup(&results[i]);
            return rc;
        }
    }
    return 0;
}

int sg_node_client_bundle(sg_node_client *c, sg_agent_bundle *out, sg_err *err)
{
    if (c == NULL || out == NULL)
        return sg_err_set(err, SG_EINVAL, "node client: NULL argument");
    if (c->bundle.n == 0)
        return sg_err_set(err, SG_ENOENT, "no trust bundle yet (insecure bootstrap)");
    sg_agent_bundle b;
    memset(&b, 0, sizeof(b));
    int rc = der_array_copy(c->bundle.certs, c->bundle.n, &b.certs, err);
    if (rc < 0)
        return rc;
    b.n = c->bundle.n;
    b.sequence = c->bundle.sequence;
    *out = b;
    return 0;
}

/* ------------------------------------------------------------ JWT-SVIDs */

/*
 * Makes sure the JWT-SVID channel carries the credentials the other calls
 * last connected with, rebuilding it when they changed (renewal, new
 * bundle). Its own channel lets a mint run while Sync waits for a push.
 */
static int ensure_jwt_channel(sg_node_client *c, sg_err *err)
{
    pthread_mutex_lock(&c->cred_mu);
    uint64_t gen = c->cred_gen;
    if (gen == 0) {
        pthread_mutex_unlock(&c->cred_mu);
        return sg_err_set(err, SG_EUNAVAIL, "the agent has not connected to the server yet");
    }
    if (c->jwt_ch != NULL && c->jwt_gen == gen) {
        pthread_mutex_unlock(&c->cred_mu);
        return 0;
    }
    char *k = strdup(c->cred_key_pem), *ch = strdup(c->cred_chain_pem);
    char *b = c->cred_bundle_pem != NULL ? strdup(c->cred_bundle_pem) : NULL;
    bool oom = k == NULL || ch == NULL || (c->cred_bundle_pem != NULL && b == NULL);
    pthread_mutex_unlock(&c->cred_mu);
    grpc_channel *nch = NULL;
    int rc = oom ? sg_err_set(err, SG_ENOMEM, "node client: out of memory")
                 : channel_from_pems(c, b, k, ch, &nch, err);
    sg_key_pem_free(k);
    free(ch);
    free(b);
    if (rc < 0)
        return rc;
    if (c->jwt_ch != NULL)
        grpc_channel_destroy(c->jwt_ch);
    c->jwt_ch = nch;
    c->jwt_gen = gen;
    return 0;
}

int sg_node_client_mint_jwt(sg_node_client *c, const char *entry_id, const char *const *aud,
                            size_t naud, sg_node_jwt_svid *out, sg_err *err)
{
    if (c == NULL || entry_id == NULL || out == NULL || (naud > 0 && aud == NULL))
        return sg_err_set(err, SG_EINVAL, "node client: NULL argument");
    if (naud == 0)
        return sg_err_set(err, SG_EINVAL, "a JWT-SVID needs at least one audience");
    if (atomic_load(&c->interrupted))
        return sg_err_set(err, SG_ECANCELLED, "node client: stopping");
    int rc = ensure_jwt_channel(c, err);
    if (rc < 0)
        return rc;
    Sigil__Node__V1__MintJWTSVIDRequest req = SIGIL__NODE__V1__MINT_JWTSVIDREQUEST__INIT;
    req.entry_id = (char *)entry_id;
    req.n_audience = naud;
    req.audience = (char **)aud;
    ProtobufCMessage *msg = NULL;
    sg_rpc_status status = {0};
    /* The agent SVID being refused is for Sync to find: this thread
     * changes nothing the other calls read. */
    rc = sg_rpc_unary(c->jwt_ch, NODE_PATH_MINT_JWT, &req.base,
                      &sigil__node__v1__mint_jwtsvidresponse__descriptor, NULL, 0,
                      NODE_JWT_TIMEOUT_MS, &msg, &status, err);
    if (rc < 0)
        return rc;
    const Sigil__Node__V1__MintJWTSVIDResponse *resp =
        (const Sigil__Node__V1__MintJWTSVIDResponse *)msg;
    const Sigil__Node__V1__JWTSVID *sv = resp->svid;
    sg_node_jwt_svid r;
    memset(&r, 0, sizeof(r));
    if (sv == NULL || sv->token == NULL || sv->token[0] == '\0' || sv->spiffe_id == NULL ||
        sv->spiffe_id[0] == '\0') {
        rc = sg_err_set(err, SG_EPROTO, "MintJWTSVID answered no token for entry %.100s", entry_id);
        goto done;
    }
    if (strlen(sv->token) > NODE_MAX_JWT_TOKEN || sv->expires_at <= 0) {
        rc = sg_err_set(err, SG_EPROTO,
                        "MintJWTSVID answered a token of %zu bytes expiring at %lld for entry "
                        "%.100s",
                        strlen(sv->token), (long long)sv->expires_at, entry_id);
        goto done;
    }
    r.spiffe_id = strdup(sv->spiffe_id);
    r.token = strdup(sv->token);
    r.kid = strdup(sv->kid != NULL ? sv->kid : "");
    if (r.spiffe_id == NULL || r.token == NULL || r.kid == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "node client: out of memory");
        goto done;
    }
    r.expires_at = sv->expires_at;
    r.issued_at = sv->issued_at > 0 ? sv->issued_at : (int64_t)time(NULL);
    *out = r;
    memset(&r, 0, sizeof(r));
done:
    sg_node_jwt_svid_cleanup(&r);
    protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}
