/*
 * Bundle endpoint: an accept thread plus one short-lived thread per
 * connection. The accept thread also keeps the serving identity fresh
 * (https_spiffe: a new SVID at half-life; https_web: the files re-read
 * when their modification time changes). Handshakes pick up the current
 * SSL_CTX, which is swapped whole under a mutex and reference-counted.
 */
#include "server/bundle_endpoint.h"

#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FILE_CHECK_S     5
#define ID_RETRY_S       10
#define LINGER_MS        1000
#define LINGER_MAX_BYTES (256 * 1024)

struct sg_bundle_endpoint {
    sg_bundle_endpoint_options o;
    char *address, *cert_file, *key_file; /* owned copies of the option strings */
    int fd;
    int port;
    int wake[2]; /* pipe: stop request for the accept thread */
    pthread_t thread;
    bool started;

    pthread_mutex_t mu; /* guards ctx and nconns */
    pthread_cond_t cv;
    SSL_CTX *ctx;
    int nconns;
    int conn_fds[SG_BUNDLE_ENDPOINT_MAX_CONNS]; /* open connections, -1 = free slot */
    bool stopping;

    /* accept thread only */
    int64_t renew_at;
    time_t cert_mtime, key_mtime;
    int64_t next_file_check;
};

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ TLS identity */

/* A server SSL_CTX serving chain_pem (leaf first) with key_pem. */
static int ctx_from_pem(const char *key_pem, const char *chain_pem, SSL_CTX **out, sg_err *err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    BIO *cb = NULL, *kb = NULL;
    EVP_PKEY *key = NULL;
    X509 *x;
    int rc = 0, n = 0;

    if (ctx == NULL)
        return sg_err_ssl(err, "creating the bundle endpoint TLS context");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    cb = BIO_new_mem_buf(chain_pem, -1);
    kb = BIO_new_mem_buf(key_pem, -1);
    if (cb == NULL || kb == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory");
        goto out;
    }
    while ((x = PEM_read_bio_X509(cb, NULL, NULL, NULL)) != NULL) {
        int ok = n == 0 ? SSL_CTX_use_certificate(ctx, x) : SSL_CTX_add0_chain_cert(ctx, x);
        if (n == 0 || !ok)
            X509_free(x);
        if (!ok) {
            rc = sg_err_ssl(err, "installing the bundle endpoint certificate");
            goto out;
        }
        n++;
    }
    ERR_clear_error();
    if (n == 0) {
        rc = sg_err_set(err, SG_EINVAL, "bundle endpoint certificate: no PEM certificate found");
        goto out;
    }
    key = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL);
    if (key == NULL) {
        rc = sg_err_ssl(err, "bundle endpoint key: no PEM private key found");
        goto out;
    }
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        rc = sg_err_ssl(err, "bundle endpoint key does not match its certificate");
        goto out;
    }
out:
    EVP_PKEY_free(key);
    BIO_free(cb);
    BIO_free(kb);
    if (rc < 0) {
        SSL_CTX_free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

static void ctx_install(sg_bundle_endpoint *ep, SSL_CTX *ctx)
{
    SSL_CTX *old;

    pthread_mutex_lock(&ep->mu);
    old = ep->ctx;
    ep->ctx = ctx;
    pthread_mutex_unlock(&ep->mu);
    SSL_CTX_free(old);
}

static char *read_text(const char *path, sg_err *err)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t len = 0, cap = 0;

    if (f == NULL) {
        sg_err_sys(err, "cannot open \"%s\"", path);
        return NULL;
    }
    for (;;) {
        if (len + 4096 + 1 > cap) {
            char *nb;
            if (cap >= 1024 * 1024) {
                sg_err_set(err, SG_ETOOBIG, "\"%s\" is larger than 1 MiB", path);
                free(buf);
                fclose(f);
                return NULL;
            }
            cap = cap ? cap * 2 : 8192;
            nb = realloc(buf, cap);
            if (nb == NULL) {
                sg_err_set(err, SG_ENOMEM, "out of memory");
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len - 1, f);
        len += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

/* Loads (or reloads) the serving identity; on failure the current one stays. */
static int load_identity(sg_bundle_endpoint *ep, sg_err *err)
{
    char *key = NULL, *chain = NULL;
    SSL_CTX *ctx = NULL;
    int64_t not_after = 0;
    int rc;

    if (ep->o.https_web) {
        struct stat cs, ks;
        if (stat(ep->cert_file, &cs) != 0)
            return sg_err_sys(err, "bundle endpoint cert_file_path \"%s\"", ep->cert_file);
        if (stat(ep->key_file, &ks) != 0)
            return sg_err_sys(err, "bundle endpoint key_file_path \"%s\"", ep->key_file);
        chain = read_text(ep->cert_file, err);
        key = chain ? read_text(ep->key_file, err) : NULL;
        rc = key ? ctx_from_pem(key, chain, &ctx, err) : SG_EIO;
        if (rc == 0) {
            ep->cert_mtime = cs.st_mtime;
            ep->key_mtime = ks.st_mtime;
        }
    } else {
        rc = ep->o.identity(ep->o.ctx, &key, &chain, &not_after, err);
        if (rc == 0)
            rc = ctx_from_pem(key, chain, &ctx, err);
        if (rc == 0) {
            int64_t now = now_s();
            ep->renew_at = now + (not_after > now ? (not_after - now) / 2 : ID_RETRY_S);
        }
    }
    if (key != NULL) {
        OPENSSL_cleanse(key, strlen(key));
        free(key);
    }
    free(chain);
    if (rc < 0)
        return rc;
    ctx_install(ep, ctx);
    return 0;
}

/* Accept-thread tick: renews the SVID at half-life, reloads changed files. */
static void maintain_identity(sg_bundle_endpoint *ep)
{
    int64_t now = now_s();
    sg_err err;

    sg_err_clear(&err);
    if (!ep->o.https_web) {
        if (now < ep->renew_at)
            return;
        if (load_identity(ep, &err) < 0) {
            ep->renew_at = now + ID_RETRY_S;
            sg_log_error("bundle endpoint: cannot renew its SVID: %s", err.msg);
        } else {
            sg_log_debug("bundle endpoint SVID renewed");
        }
        return;
    }
    if (now < ep->next_file_check)
        return;
    ep->next_file_check = now + FILE_CHECK_S;
    struct stat cs, ks;
    if (stat(ep->cert_file, &cs) != 0 || stat(ep->key_file, &ks) != 0)
        return;
    if (cs.st_mtime == ep->cert_mtime && ks.st_mtime == ep->key_mtime)
        return;
    if (load_identity(ep, &err) < 0)
        sg_log_error("bundle endpoint: cannot reload its certificate: %s", err.msg);
    else
        sg_log_info("bundle endpoint certificate reloaded from %s", ep->cert_file);
}

/* ------------------------------------------------------------ one request */

typedef struct conn {
    sg_bundle_endpoint *ep;
    int fd;
    int slot; /* index in ep->conn_fds */
    char peer[64];
} conn;

typedef struct req_state {
    char url[256];
    size_t url_len;
    bool url_too_long;
    bool complete;
} req_state;

static int on_url(http_parser *p, const char *at, size_t len)
{
    req_state *r = p->data;

    if (r->url_len + len >= sizeof r->url) {
        r->url_too_long = true;
        return 1;
    }
    memcpy(r->url + r->url_len, at, len);
    r->url_len += len;
    r->url[r->url_len] = '\0';
    return 0;
}

static int on_complete(http_parser *p)
{
    req_state *r = p->data;

    r->complete = true;
    http_parser_pause(p, 1);
    return 0;
}

/* Sets the socket timeouts to what is left of the deadline; false when it has passed. */
static bool arm_timeout(int fd, int64_t deadline_ms)
{
    int64_t left = deadline_ms - mono_ms();
    struct timeval tv;

    if (left <= 0)
        return false;
    tv.tv_sec = (time_t)(left / 1000);
    tv.tv_usec = (suseconds_t)((left % 1000) * 1000);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return true;
}

static void send_all(SSL *ssl, const char *data, size_t len, int fd, int64_t deadline_ms)
{
    while (len > 0 && arm_timeout(fd, deadline_ms)) {
        int n = SSL_write(ssl, data, len > INT32_MAX ? INT32_MAX : (int)len);
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

static void respond(SSL *ssl, int fd, int64_t deadline_ms, int status, const char *reason,
                    const char *ctype, const char *body, bool head_only)
{
    char head[512];
    size_t blen = strlen(body);
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                     status, reason, ctype, blen);

    send_all(ssl, head, (size_t)n, fd, deadline_ms);
    if (!head_only)
        send_all(ssl, body, blen, fd, deadline_ms);
}

/* Reads one request head (bounded) and answers it. */
static void serve(sg_bundle_endpoint *ep, SSL *ssl, int fd, const char *peer, int64_t deadline)
{
    static const char text[] = "text/plain; charset=utf-8";
    char buf[1024];
    size_t total = 0;
    req_state r;
    http_parser p;
    http_parser_settings s;

    memset(&r, 0, sizeof r);
    http_parser_init(&p, HTTP_REQUEST);
    http_parser_settings_init(&s);
    s.on_url = on_url;
    s.on_message_complete = on_complete;
    p.data = &r;
    while (!r.complete) {
        if (!arm_timeout(fd, deadline))
            return;
        int n = SSL_read(ssl, buf, sizeof buf);
        if (n <= 0)
            return; /* closed, timed out or broken: nothing to answer */
        total += (size_t)n;
        if (total > SG_BUNDLE_ENDPOINT_REQUEST_MAX) {
            sg_log_warn("bundle endpoint: request from %s is larger than %d bytes", peer,
                        SG_BUNDLE_ENDPOINT_REQUEST_MAX);
            respond(ssl, fd, deadline, 431, "Request Header Fields Too Large", text,
                    "request too large\n", false);
            return;
        }
        size_t used = http_parser_execute(&p, &s, buf, (size_t)n);
        enum http_errno e = HTTP_PARSER_ERRNO(&p);
        if (r.url_too_long) {
            respond(ssl, fd, deadline, 414, "URI Too Long", text, "URI too long\n", false);
            return;
        }
        if (e != HPE_OK && e != HPE_PAUSED) {
            sg_log_warn("bundle endpoint: malformed request from %s: %s", peer,
                        http_errno_description(e));
            respond(ssl, fd, deadline, 400, "Bad Request", text, "malformed request\n", false);
            return;
        }
        (void)used;
    }
    bool head = p.method == HTTP_HEAD;
    if (p.method != HTTP_GET && !head) {
        respond(ssl, fd, deadline, 405, "Method Not Allowed", text, "use GET\n", false);
        return;
    }
    if (strcmp(r.url, "/") != 0) {
        respond(ssl, fd, deadline, 404, "Not Found", text, "not found\n", head);
        return;
    }
    char *json = NULL;
    sg_err err;
    sg_err_clear(&err);
    if (ep->o.bundle_json(ep->o.ctx, &json, &err) < 0) {
        sg_log_error("bundle endpoint: cannot build the bundle: %s", err.msg);
        respond(ssl, fd, deadline, 503, "Service Unavailable", text, "bundle unavailable\n", head);
        return;
    }
    respond(ssl, fd, deadline, 200, "OK", "application/json", json, head);
    free(json);
}

/*
 * Half-closes fd and reads (bounded in time and bytes) what the client
 * still sends, so a request we stopped reading early does not turn the
 * close into a reset that destroys the answer before the client reads it.
 */
static void linger_close(int fd, int64_t deadline_ms)
{
    int64_t until = mono_ms() + LINGER_MS;
    size_t total = 0;
    char buf[4096];

    if (until > deadline_ms)
        until = deadline_ms;
    shutdown(fd, SHUT_WR);
    while (total < LINGER_MAX_BYTES && arm_timeout(fd, until)) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            break;
        total += (size_t)n;
    }
}

static void *conn_main(void *arg)
{
    conn *c = arg;
    sg_bundle_endpoint *ep = c->ep;
    int64_t deadline = mono_ms() + SG_BUNDLE_ENDPOINT_DEADLINE_S * 1000;
    SSL_CTX *ctx;
    SSL *ssl = NULL;
    sigset_t pipe_set;

    /* A client gone mid-answer must give EPIPE here, never kill the process. */
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
    pthread_mutex_lock(&ep->mu);
    ctx = ep->ctx;
    if (ctx != NULL)
        SSL_CTX_up_ref(ctx);
    pthread_mutex_unlock(&ep->mu);
    if (ctx != NULL && (ssl = SSL_new(ctx)) != NULL && SSL_set_fd(ssl, c->fd) == 1 &&
        arm_timeout(c->fd, deadline)) {
        if (SSL_accept(ssl) == 1) {
            serve(ep, ssl, c->fd, c->peer, deadline);
            SSL_shutdown(ssl);
            linger_close(c->fd, deadline);
        } else {
            unsigned long e = ERR_peek_last_error();
            char why[256];
            ERR_error_string_n(e, why, sizeof why);
            sg_log_debug("bundle endpoint: TLS handshake with %s failed: %s", c->peer,
                         e ? why : "connection closed or timed out");
        }
    }
    ERR_clear_error();
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    pthread_mutex_lock(&ep->mu);
    ep->conn_fds[c->slot] = -1;
    pthread_mutex_unlock(&ep->mu);
    close(c->fd);
    free(c);
    pthread_mutex_lock(&ep->mu);
    ep->nconns--;
    pthread_cond_broadcast(&ep->cv);
    pthread_mutex_unlock(&ep->mu);
    return NULL;
}

static void peer_name(const struct sockaddr_storage *sa, socklen_t len, char *out, size_t n)
{
    char host[NI_MAXHOST], port[NI_MAXSERV];

    if (getnameinfo((const struct sockaddr *)sa, len, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) == 0)
        snprintf(out, n, "%.40s:%.8s", host, port);
    else
        snprintf(out, n, "unknown");
}

static void *accept_main(void *arg)
{
    sg_bundle_endpoint *ep = arg;

    for (;;) {
        struct pollfd pf[2] = {{.fd = ep->fd, .events = POLLIN},
                               {.fd = ep->wake[0], .events = POLLIN}};
        int r = poll(pf, 2, 1000);
        if (r < 0 && errno != EINTR)
            break;
        if (pf[1].revents)
            break;
        maintain_identity(ep);
        if (r <= 0 || !(pf[0].revents & POLLIN))
            continue;
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(ep->fd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        int slot = -1;
        pthread_mutex_lock(&ep->mu);
        for (int k = 0; k < SG_BUNDLE_ENDPOINT_MAX_CONNS && slot < 0; k++)
            if (ep->conn_fds[k] < 0)
                slot = k;
        bool full = slot < 0;
        if (!full) {
            ep->nconns++;
            ep->conn_fds[slot] = fd;
        }
        pthread_mutex_unlock(&ep->mu);
        if (full) {
            sg_log_warn("bundle endpoint: %d connections open; refusing another",
                        SG_BUNDLE_ENDPOINT_MAX_CONNS);
            close(fd);
            continue;
        }
        conn *c = calloc(1, sizeof *c);
        pthread_t t;
        pthread_attr_t attr;
        bool ok = false;
        if (c != NULL) {
            c->ep = ep;
            c->fd = fd;
            c->slot = slot;
            peer_name(&sa, sl, c->peer, sizeof c->peer);
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            ok = pthread_create(&t, &attr, conn_main, c) == 0;
            pthread_attr_destroy(&attr);
        }
        if (!ok) {
            free(c);
            close(fd);
            pthread_mutex_lock(&ep->mu);
            ep->conn_fds[slot] = -1;
            ep->nconns--;
            pthread_cond_broadcast(&ep->cv);
            pthread_mutex_unlock(&ep->mu);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------ lifecycle */

static int listen_on(sg_bundle_endpoint *ep, sg_err *err)
{
    const char *host = ep->address && ep->address[0] ? ep->address : "0.0.0.0";
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char port[16];
    int one = 1, g;

    snprintf(port, sizeof port, "%d", ep->o.port);
    g = getaddrinfo(host, port, &hints, &res);
    if (g != 0)
        return sg_err_set(err, SG_ECONFIG, "bundle endpoint address \"%.128s\": %s", host,
                          gai_strerror(g));
    /* Non-blocking: a connection reset between poll and accept must not stall the loop. */
    ep->fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (ep->fd < 0) {
        freeaddrinfo(res);
        return sg_err_sys(err, "bundle endpoint socket");
    }
    setsockopt(ep->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ep->fd, res->ai_addr, res->ai_addrlen) != 0 || listen(ep->fd, 128) != 0) {
        int e = errno;
        freeaddrinfo(res);
        errno = e;
        return sg_err_sys(err, "cannot listen on bundle endpoint %.128s:%d", host, ep->o.port);
    }
    freeaddrinfo(res);
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    if (getsockname(ep->fd, (struct sockaddr *)&sa, &sl) == 0) {
        if (sa.ss_family == AF_INET)
            ep->port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
        else if (sa.ss_family == AF_INET6)
            ep->port = ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
    }
    return 0;
}

static char *dup_opt(const char *s, bool *oom)
{
    char *d;

    if (s == NULL)
        return NULL;
    d = strdup(s);
    if (d == NULL)
        *oom = true;
    return d;
}

int sg_bundle_endpoint_start(sg_bundle_endpoint **out, const sg_bundle_endpoint_options *o,
                             sg_err *err)
{
    sg_bundle_endpoint *ep;
    bool oom = false;
    int rc;

    if (o->bundle_json == NULL)
        return sg_err_set(err, SG_EINVAL, "bundle endpoint needs a bundle source");
    if (o->https_web && (o->cert_file_path == NULL || o->key_file_path == NULL))
        return sg_err_set(err, SG_ECONFIG,
                          "bundle endpoint profile https_web needs serving_cert_file with "
                          "cert_file_path and key_file_path");
    if (!o->https_web && o->identity == NULL)
        return sg_err_set(err, SG_EINVAL, "bundle endpoint https_spiffe needs an identity source");
    if (o->port < 0 || o->port > 65535)
        return sg_err_set(err, SG_ECONFIG, "bundle endpoint port %d is out of range", o->port);
    ep = calloc(1, sizeof *ep);
    if (ep == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    ep->o = *o;
    ep->fd = -1;
    ep->wake[0] = ep->wake[1] = -1;
    for (int k = 0; k < SG_BUNDLE_ENDPOINT_MAX_CONNS; k++)
        ep->conn_fds[k] = -1;
    ep->address = dup_opt(o->address, &oom);
    ep->cert_file = dup_opt(o->cert_file_path, &oom);
    ep->key_file = dup_opt(o->key_file_path, &oom);
    pthread_mutex_init(&ep->mu, NULL);
    pthread_cond_init(&ep->cv, NULL);
    if (oom) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory");
        goto fail;
    }
    rc = load_identity(ep, err);
    if (rc < 0)
        goto fail;
    rc = listen_on(ep, err);
    if (rc < 0)
        goto fail;
    if (pipe2(ep->wake, O_CLOEXEC) != 0) {
        rc = sg_err_sys(err, "bundle endpoint pipe");
        goto fail;
    }
    if (pthread_create(&ep->thread, NULL, accept_main, ep) != 0) {
        rc = sg_err_set(err, SG_ESYS, "cannot start the bundle endpoint thread");
        goto fail;
    }
    ep->started = true;
    sg_log_info("bundle endpoint listening address=%s:%d profile=%s",
                ep->address && ep->address[0] ? ep->address : "0.0.0.0", ep->port,
                o->https_web ? "https_web" : "https_spiffe");
    *out = ep;
    return 0;
fail:
    sg_bundle_endpoint_stop(ep);
    return rc;
}

int sg_bundle_endpoint_port(const sg_bundle_endpoint *ep)
{
    return ep->port;
}

void sg_bundle_endpoint_stop(sg_bundle_endpoint *ep)
{
    if (ep == NULL)
        return;
    if (ep->started) {
        ssize_t w = write(ep->wake[1], "x", 1);
        (void)w;
        pthread_join(ep->thread, NULL);
    }
    if (ep->fd >= 0)
        close(ep->fd);
    /* Open connections are cut short; each thread then closes its own fd. */
    pthread_mutex_lock(&ep->mu);
    ep->stopping = true;
    for (int k = 0; k < SG_BUNDLE_ENDPOINT_MAX_CONNS; k++)
        if (ep->conn_fds[k] >= 0)
            shutdown(ep->conn_fds[k], SHUT_RDWR);
    while (ep->nconns > 0)
        pthread_cond_wait(&ep->cv, &ep->mu);
    pthread_mutex_unlock(&ep->mu);
    if (ep->wake[0] >= 0)
        close(ep->wake[0]);
    if (ep->wake[1] >= 0)
        close(ep->wake[1]);
    SSL_CTX_free(ep->ctx);
    pthread_cond_destroy(&ep->cv);
    pthread_mutex_destroy(&ep->mu);
    free(ep->address);
    free(ep->cert_file);
    free(ep->key_file);
    free(ep);
}
