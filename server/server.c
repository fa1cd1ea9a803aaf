/*
 * The sg_server context and its lifecycle: datastore, CA, the server's own
 * SVID (renewed at half-life by a timer thread), the authorisation index,
 * the node API on TCP+TLS and the admin API on an owner-only Unix socket
 * that appears only once the CA is ready. Stops on SIGTERM/SIGINT.
 */
#include "server/server.h"

#include "attestors/attestor.h"
#include "common/fsutil.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/tls.h"
#include "common/x509.h"
#include "server/admin_api.h"
#include "server/authorized.h"
#include "server/federation.h"
#include "server/node_api.h"

#include <errno.h>
#include <libgen.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Node API completion-queue threads; the mint path signs on them. */
#ifndef NODE_CQ_THREADS
#define NODE_CQ_THREADS 2
#endif
#define PRUNE_INTERVAL_S    60
#define BUNDLE_CHECK_S      5
#define MAX_CONN_AGE_MAX_MS (10 * 60 * 1000)
#define MAX_CONN_AGE_MIN_MS (30 * 1000)

struct sg_server {
    const sg_server_config *cfg;
    sg_datastore *ds;
    sg_ca *ca;
    sg_jwt_authority *jwt;
    sg_authz *authz;
    /* Set by entry writes; the index is reloaded on its next use, so a burst
     * of admin writes costs one reload, not one each. */
    atomic_bool entries_stale;
    pthread_mutex_t reload_mu;
    sg_tls_server *tls;
    sg_rpc_server *node;
    sg_rpc_server *admin;
    bool admin_socket_created;
    /* Open Sync streams and their notifier thread (node_api.h). */
    sg_sync_hub *sync_hub;
    /* Federation: bundle refresher and bundle endpoint (federation.h). */
    sg_federation *fed;
    sg_bundle_endpoint *bundle_ep;

    /* Configured node attestors (only join_token exists so far). */
    const sg_node_attestor_server *jt;
    void *jt_state;

    /* Timer thread: server SVID renewal, bundle changes, token pruning. */
    pthread_t timer;
    bool timer_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping;
    int64_t svid_issued_at;
    int64_t svid_not_after;
    uint64_t bundle_seq;
};

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

/* ------------------------------------------------------------ accessors */

sg_datastore *sg_server_datastore(sg_server *s)
{
    return s->ds;
}

sg_ca *sg_server_ca(sg_server *s)
{
    return s->ca;
}

const sg_server_config *sg_server_config_get(sg_server *s)
{
    return s->cfg;
}

sg_jwt_authority *sg_server_jwt(sg_server *s)
{
    return s->jwt;
}

uint64_t sg_server_bundle_sequence(sg_server *s)
{
    /* Both parts only ever grow (and persist with KeyManager "disk"). */
    return sg_ca_bundle_sequence(s->ca) + (s->jwt ? sg_jwt_authority_generation(s->jwt) : 0);
}

sg_authz *sg_server_authz(sg_server *s)
{
    if (atomic_load(&s->entries_stale)) {
        pthread_mutex_lock(&s->reload_mu);
        if (atomic_exchange(&s->entries_stale, false)) {
            sg_err err;
            sg_err_clear(&err);
            if (sg_authz_reload(s->authz, s->ds, &err) < 0) {
                sg_log_error("could not reload registration entries: %s", err.msg);
                atomic_store(&s->entries_stale, true);
            }
        }
        pthread_mutex_unlock(&s->reload_mu);
    }
    return s->authz;
}

const sg_node_attestor_server *sg_server_node_attestor(sg_server *s, const char *type, void **state)
{
    if (s->jt && strcmp(type, s->jt->name) == 0) {
        *state = s->jt_state;
        return s->jt;
    }
    *state = NULL;
    return NULL;
}

sg_sync_hub *sg_server_sync_hub(sg_server *s)
{
    return s->sync_hub;
}

sg_federation *sg_server_federation(sg_server *s)
{
    return s->fed;
}

void sg_server_entries_changed(sg_server *s)
{
    /* Stale first: a push that sees the new generation must see new entries. */
    atomic_store(&s->entries_stale, true);
    if (s->sync_hub)
        sg_sync_hub_changed(s->sync_hub, NULL, false);
}

void sg_server_agents_changed(sg_server *s, const char *agent_id)
{
    sg_authz_forget_agent(s->authz, agent_id);
    /* Evicted or banned agents lose their open Sync streams at once. */
    if (s->sync_hub)
        sg_sync_hub_changed(s->sync_hub, agent_id, true);
}

/* ------------------------------------------------------------ identity */

/* Issues a fresh server SVID and installs it (with the current bundle) in the TLS state. */
static int server_identity_refresh(sg_server *s, sg_err *err)
{
    char *key = NULL, *chain = NULL, *bundle = NULL;
    uint64_t seq = sg_ca_bundle_sequence(s->ca);
    int rc = sg_ca_server_identity(s->ca, s->cfg->default_x509_svid_ttl_s, &key, &chain, err);
    if (rc == 0)
        rc = sg_ca_bundle_pem(s->ca, &bundle, err);
    int64_t not_after = 0;
    if (rc == 0) {
        STACK_OF(X509) *certs = NULL;
        rc = sg_x509_parse_pem_chain(chain, strlen(chain), &certs, err);
        if (rc == 0) {
            not_after = sg_x509_not_after(sk_X509_value(certs, 0));
            sk_X509_pop_free(certs, X509_free);
        }
    }
    if (rc == 0) {
        if (s->tls)
            rc = sg_tls_server_update(s->tls, key, chain, bundle, err);
        else
            rc = sg_tls_server_new(&s->tls, key, chain, bundle, err);
    }
    if (rc == 0) {
        pthread_mutex_lock(&s->mu);
        s->svid_issued_at = now_s();
        s->svid_not_after = not_after;
        s->bundle_seq = seq;
        pthread_mutex_unlock(&s->mu);
        sg_log_info("server SVID issued expires_at=%lld", (long long)not_after);
    }
    sg_key_pem_free(key);
    free(chain);
    free(bundle);
    return rc;
}

static void *timer_main(void *arg)
{
    sg_server *s = arg;
    int64_t next_prune = now_s() + PRUNE_INTERVAL_S;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += BUNDLE_CHECK_S;
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        if (s->stopping)
            break;
        int64_t now = now_s();
        pthread_mutex_unlock(&s->mu);
        /* CA rotation tick: prepare, activate, drop expired authorities. A bundle
         * change bumps its sequence, which renews the server SVID below. */
        bool bundle_changed = false;
        sg_err rerr;
        sg_err_clear(&rerr);
        if (sg_ca_rotate(s->ca, now, &bundle_changed, &rerr) < 0)
            sg_log_error("CA rotation failed: %s", rerr.msg);
        else if (bundle_changed)
            sg_log_info("trust bundle changed sequence=%llu",
                        (unsigned long long)sg_ca_bundle_sequence(s->ca));
        bool jwt_changed = false;
        if (sg_jwt_authority_rotate(s->jwt, now, &jwt_changed, &rerr) < 0)
            sg_log_error("JWT authority rotation failed: %s", rerr.msg);
        else if (jwt_changed)
            sg_log_info("JWT keys changed sequence=%llu",
                        (unsigned long long)sg_server_bundle_sequence(s));
        pthread_mutex_lock(&s->mu);
        int64_t renew_at = s->svid_issued_at + (s->svid_not_after - s->svid_issued_at) / 2;
        bool renew = now >= renew_at || sg_ca_bundle_sequence(s->ca) != s->bundle_seq;
        pthread_mutex_unlock(&s->mu);

        sg_err err;
        sg_err_clear(&err);
        if (renew && server_identity_refresh(s, &err) < 0)
            sg_log_error("could not renew the server SVID: %s", err.msg);
        if (now >= next_prune) {
            next_prune = now + PRUNE_INTERVAL_S;
            if (sg_ds_token_prune(s->ds, now, &err) < 0)
                sg_log_warn("could not prune expired join tokens: %s", err.msg);
        }
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ------------------------------------------------------------ lifecycle */

int sg_server_new(sg_server **out, const sg_server_config *cfg, sg_err *err)
{
    *out = NULL;
    sg_server *s = calloc(1, sizeof(*s));
    if (!s)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    s->cfg = cfg;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->reload_mu, NULL);
    atomic_init(&s->entries_stale, false);
    pthread_cond_init(&s->cv, NULL);
    int rc;
    char *dbpath = NULL, *keys_dir = NULL;

    if (!cfg->data_dir || !cfg->data_dir[0]) {
        rc = sg_err_set(err, SG_ECONFIG, "server.data_dir is required");
        goto fail;
    }
    rc = sg_fs_mkdir_p(cfg->data_dir, 0700, err);
    if (rc < 0)
        goto fail;

    const char *dbtype = cfg->db_type ? cfg->db_type : "sqlite3";
    const char *conn = cfg->db_connection_string;
    if (!conn || !conn[0]) {
        dbpath = sg_fs_join(cfg->data_dir, "datastore.sqlite3");
        if (!dbpath) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        conn = dbpath;
    }
    rc = sg_datastore_open(&s->ds, dbtype, conn, err);
    if (rc < 0)
        goto fail;

    if (cfg->keys_on_disk) {
        char *tmp = strdup(cfg->keys_path && cfg->keys_path[0] ? cfg->keys_path : "");
        if (!tmp) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        /* SPIRE's keys_path names a file; sigil keeps its key files beside it. */
        keys_dir = strdup(tmp[0] ? dirname(tmp) : cfg->data_dir);
        free(tmp);
        if (!keys_dir) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        rc = sg_fs_mkdir_p(keys_dir, 0700, err);
        if (rc < 0)
            goto fail;
    }
    sg_ca_options co = {
        .trust_domain = cfg->trust_domain,
        .key_type = cfg->ca_key_type,
        .ca_ttl_s = cfg->ca_ttl_s,
        .subject_country = cfg->ca_subject_country,
        .subject_org = cfg->ca_subject_organization,
        .subject_cn = cfg->ca_subject_common_name,
        .keys_dir = keys_dir,
        .upstream_key_file = cfg->has_upstream ? cfg->upstream_key_file : NULL,
        .upstream_cert_file = cfg->has_upstream ? cfg->upstream_cert_file : NULL,
        .upstream_bundle_file = cfg->has_upstream ? cfg->upstream_bundle_file : NULL,
        .max_svid_ttl_s = cfg->agent_ttl_s > cfg->default_x509_svid_ttl_s
                              ? cfg->agent_ttl_s
                              : cfg->default_x509_svid_ttl_s,
    };
    rc = sg_ca_new(&s->ca, &co, err);
    if (rc < 0)
        goto fail;
    sg_jwt_authority_options jo = {
        .trust_domain = cfg->trust_domain,
        .key_type = cfg->jwt_key_type,
        .alg = cfg->jwt_alg,
        .key_ttl_s = cfg->ca_ttl_s,
        .default_svid_ttl_s = cfg->default_jwt_svid_ttl_s,
        .max_svid_ttl_s = cfg->default_jwt_svid_ttl_s,
        .keys_dir = keys_dir,
        .issuer = cfg->jwt_issuer,
    };
    rc = sg_jwt_authority_new(&s->jwt, &jo, now_s(), err);
    if (rc < 0)
        goto fail;

    rc = sg_authz_new(&s->authz, cfg->trust_domain, err);
    if (rc == 0)
        rc = sg_authz_reload(s->authz, s->ds, err);
    if (rc < 0)
        goto fail;

    if (cfg->join_token_enabled) {
        s->jt = sg_registry_node_server("join_token");
        if (!s->jt) {
            rc = sg_err_set(err, SG_ECONFIG, "node attestor \"join_token\" is not built in");
            goto fail;
        }
        rc = s->jt->configure(cfg, &s->jt_state, err);
        if (rc < 0) {
            s->jt = NULL;
            goto fail;
        }
    }

    rc = server_identity_refresh(s, err);
    if (rc == 0)
        rc = sg_node_sync_hub_new(&s->sync_hub, s, err);
    if (rc == 0)
        rc = sg_federation_server_setup(&s->fed, s, err);
    if (rc < 0)
        goto fail;
    free(dbpath);
    free(keys_dir);
    *out = s;
    return 0;
fail:
    free(dbpath);
    free(keys_dir);
    sg_server_free(s);
    return rc;
}

/* Formats "host:port", bracketing IPv6 literals. */
static void node_address(const sg_server_config *cfg, char *out, size_t len)
{
    const char *host = cfg->bind_address && cfg->bind_address[0] ? cfg->bind_address : "0.0.0.0";
    if (strchr(host, ':') && host[0] != '[')
        snprintf(out, len, "[%s]:%d", host, cfg->bind_port);
    else
        snprintf(out, len, "%s:%d", host, cfg->bind_port);
}

/*
 * A plain bind (SO_REUSEADDR only, so TIME_WAIT sockets of a previous run do
 * not count) finds a live listener first and gives a clearer message than
 * gRPC's failed add_port.
 */
static int probe_port(const sg_server_config *cfg, sg_err *err)
{
    const char *host = cfg->bind_address && cfg->bind_address[0] ? cfg->bind_address : "0.0.0.0";
    char h[256], port[16];
    snprintf(h, sizeof(h), "%s", host);
    size_t hl = strlen(h);
    if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') {
        memmove(h, h + 1, hl - 2);
        h[hl - 2] = 0;
    }
    snprintf(port, sizeof(port), "%d", cfg->bind_port);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(h, port, &hints, &res);
    if (g != 0)
        return sg_err_set(err, SG_ECONFIG, "bind_address \"%s\": %s", host, gai_strerror(g));
    int rc = 0;
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, res->ai_addr, res->ai_addrlen) < 0) {
            if (errno == EADDRINUSE)
                rc = sg_err_set(err, SG_EEXIST, "node API address %s:%d is already in use", host,
                                cfg->bind_port);
            else
                rc = sg_err_sys(err, "cannot bind node API address %s:%d", host, cfg->bind_port);
        }
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
}

static int start_node_api(sg_server *s, sg_err *err)
{
    int prc = probe_port(s->cfg, err);
    if (prc < 0)
        return prc;
    int64_t age = s->cfg->default_x509_svid_ttl_s * 1000 / 4;
    if (age > MAX_CONN_AGE_MAX_MS)
        age = MAX_CONN_AGE_MAX_MS;
    if (age < MAX_CONN_AGE_MIN_MS)
        age = MAX_CONN_AGE_MIN_MS;
    sg_rpc_server_options o = {.cq_threads = NODE_CQ_THREADS, .max_connection_age_ms = age};
    int rc = sg_rpc_server_new(&s->node, &o, err);
    if (rc == 0)
        rc = sg_node_api_register(s->node, s, err);
    if (rc < 0)
        return rc;
    char addr[300];
    node_address(s->cfg, addr, sizeof(addr));
    grpc_server_credentials *creds = sg_tls_server_credentials(s->tls);
    if (!creds)
        return sg_err_set(err, SG_ECRYPTO, "could not create the node API TLS credentials");
    rc = sg_rpc_server_add_port(s->node, addr, creds, err);
    grpc_server_credentials_release(creds);
    if (rc == 0)
        rc = sg_rpc_server_start(s->node, err);
    if (rc == 0)
        sg_log_info("node API listening address=%s", addr);
    return rc;
}

/*
 * Removes a leftover socket at path, refusing when a live server still
 * answers on it or when the path is something other than a socket.
 */
static int remove_stale_socket(const char *path, sg_err *err)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : sg_err_sys(err, "cannot inspect %s", path);
    if (!S_ISSOCK(st.st_mode))
        return sg_err_set(err, SG_EEXIST, "socket_path %s exists and is not a socket", path);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return sg_err_set(err, SG_EINVAL, "socket_path %s is too long", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        int c = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
        close(fd);
        if (c == 0)
            return sg_err_set(err, SG_EEXIST,
                              "another server is already listening on socket_path %s", path);
    }
    if (unlink(path) < 0 && errno != ENOENT)
        return sg_err_sys(err, "cannot remove stale socket %s", path);
    return 0;
}

static int start_admin_api(sg_server *s, sg_err *err)
{
    const char *path = s->cfg->socket_path;
    if (!path || !path[0])
        return sg_err_set(err, SG_ECONFIG, "server.socket_path is empty");
    struct sockaddr_un sa;
    if (strlen(path) >= sizeof(sa.sun_path))
        return sg_err_set(err, SG_ECONFIG, "socket_path %s is too long (at most %zu bytes)", path,
                          sizeof(sa.sun_path) - 1);
    char *tmp = strdup(path);
    if (!tmp)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    int rc = sg_fs_mkdir_p(dirname(tmp), 0700, err);
    free(tmp);
    if (rc < 0)
        return rc;
    rc = remove_stale_socket(path, err);
    if (rc < 0)
        return rc;

    rc = sg_rpc_server_new(&s->admin, NULL, err);
    if (rc == 0)
        rc = sg_admin_api_register(s->admin, s, err);
    if (rc < 0)
        return rc;
    size_t alen = strlen(path) + sizeof("unix:");
    char *addr = malloc(alen);
    if (!addr)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    snprintf(addr, alen, "unix:%s", path);
    /* The socket must never be reachable by others, not even for the
     * moment between bind and chmod: bind under a restrictive umask. */
    mode_t old = umask(0177);
    rc = sg_rpc_server_add_port(s->admin, addr, NULL, err);
    if (rc == 0) {
        s->admin_socket_created = true;
        rc = sg_rpc_server_start(s->admin, err);
    }
    umask(old);
    free(addr);
    if (rc < 0)
        return rc;
    if (chmod(path, 0600) < 0)
        return sg_err_sys(err, "cannot set permissions of %s", path);
    sg_log_info("admin API listening socket=%s", path);
    return 0;
}

static void log_ca(sg_server *s)
{
    sg_der *certs = NULL;
    size_t n = 0;
    sg_err err;
    sg_err_clear(&err);
    char when[32] = "";
    time_t t = (time_t)sg_ca_not_after(s->ca);
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (sg_ca_bundle_der(s->ca, &certs, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++) {
            X509 *x = NULL;
            if (sg_x509_from_der(certs[i].data, certs[i].len, &x, &err) == 0) {
                char serial[64];
                sg_x509_serial_hex(x, serial, sizeof(serial));
                sg_log_info("trust bundle root serial=%s", serial);
                X509_free(x);
            }
            sg_der_cleanup(&certs[i]);
        }
        free(certs);
    }
    sg_log_info("CA ready expires_at=%s upstream=%s", when, s->cfg->has_upstream ? "disk" : "none");
}

int sg_server_run(sg_server *s, sg_err *err)
{
    /* Signals are handled synchronously here; main blocked them before any
     * thread was created so no other thread receives them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    sg_log_info("Starting sigil-server trust_domain=%s data_dir=%s", s->cfg->trust_domain,
                s->cfg->data_dir);
    log_ca(s);
    int rc = sg_sync_hub_start(s->sync_hub, err);
    if (rc == 0)
        rc = start_node_api(s, err);
    if (rc == 0)
        rc = start_admin_api(s, err);
    if (rc == 0)
        rc = sg_federation_server_start(s->fed, s, &s->bundle_ep, err);
    if (rc == 0) {
        if (pthread_create(&s->timer, NULL, timer_main, s) != 0)
            rc = sg_err_set(err, SG_ESYS, "cannot start the timer thread");
        else
            s->timer_started = true;
    }
    if (rc == 0) {
        sg_log_info("sigil-server is ready");
        int sig = 0;
        while (sigwait(&set, &sig) != 0)
            ;
        sg_log_info("received %s, stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    }

    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->timer_started) {
        pthread_join(s->timer, NULL);
        s->timer_started = false;
    }
    sg_bundle_endpoint_stop(s->bundle_ep);
    s->bundle_ep = NULL;
    sg_federation_stop(s->fed);
    if (s->admin)
        sg_rpc_server_shutdown(s->admin);
    /* The notifier stops first; shutdown then cancels the open streams. */
    sg_sync_hub_stop(s->sync_hub);
    if (s->node)
        sg_rpc_server_shutdown(s->node);
    if (s->admin_socket_created) {
        unlink(s->cfg->socket_path);
        s->admin_socket_created = false;
    }
    if (rc == 0)
        sg_log_info("sigil-server stopped");
    return rc;
}

void sg_server_free(sg_server *s)
{
    if (!s)
        return;
    if (s->timer_started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->timer, NULL);
    }
    if (s->admin) {
        sg_rpc_server_shutdown(s->admin);
        sg_rpc_server_free(s->admin);
    }
    sg_sync_hub_stop(s->sync_hub);
    if (s->node) {
        sg_rpc_server_shutdown(s->node);
        sg_rpc_server_free(s->node);
    }
    sg_bundle_endpoint_stop(s->bundle_ep);
    sg_federation_free(s->fed);
    sg_sync_hub_free(s->sync_hub);
    s->sync_hub = NULL;
    if (s->admin_socket_created)
        unlink(s->cfg->socket_path);
    sg_tls_server_free(s->tls);
    if (s->jt)
        s->jt->destroy(s->jt_state);
    sg_authz_free(s->authz);
    sg_jwt_authority_free(s->jwt);
    sg_ca_free(s->ca);
    sg_datastore_close(s->ds);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->reload_mu);
    free(s);
}
