/*
 * The federation refresher: one thread walks the relationships in the
 * datastore, fetches every bundle that is due with libcurl (OpenSSL
 * backend) and stores what it gets. Each trust domain has its own
 * schedule: the bundle's refresh hint after a good fetch, a doubling
 * backoff (1 s up to the refresh interval) after a failed one. A failed
 * fetch never touches the stored bundle.
 *
 * https_spiffe: curl's own chain check is replaced by ours through
 * CURLOPT_SSL_CTX_FUNCTION: the endpoint's chain must verify as an
 * X509-SVID against the stored bundle of the foreign trust domain, and its
 * SPIFFE ID must equal endpoint_spiffe_id. Host names are not checked.
 * https_web: curl's default verification (system roots, host name);
 * SSL_CERT_FILE, when set, names the roots file as it does for OpenSSL.
 */
#include "server/federation.h"

#include "common/log.h"
#include "common/spiffeid.h"
#include "common/x509.h"
#include "server/node_api.h"
#include "sigil/node/v1/node.pb-c.h"

#include <curl/curl.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BACKOFF_MIN_S   1
#define RELOAD_S        30 /* re-read relationships at least this often */
#define CONNECT_TIMEOUT 5

/* Schedule of one trust domain. */
typedef struct fed_sched {
    char *td;
    int64_t next_at;   /* unix seconds */
    int64_t backoff_s; /* 0 after a good fetch */
    bool seen;         /* still has a relationship (mark and sweep) */
} fed_sched;

struct sg_federation {
    sg_datastore *ds;
    char *own_td;
    void (*on_change)(void *ctx);
    void *ctx;

    pthread_t thread;
    bool started;
    atomic_bool abort;  /* set on stop: in-flight fetches end at once */
    pthread_mutex_t mu; /* guards the fields below */
    pthread_cond_t cv;
    bool stopping;
    bool kicked;
    fed_sched *sched; /* refresher thread only */
    size_t nsched;
};

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

int64_t sg_federation_next_refresh_s(const sg_bundle *b)
{
    int64_t h = b != NULL ? b->refresh_hint : 0;

    if (h <= 0)
        return SG_FED_REFRESH_DEFAULT_S;
    if (h < SG_FED_REFRESH_MIN_S)
        return SG_FED_REFRESH_MIN_S;
    if (h > SG_FED_REFRESH_MAX_S)
        return SG_FED_REFRESH_MAX_S;
    return h;
}

/* ------------------------------------------------------------ one fetch */

typedef struct body_buf {
    char *data;
    size_t len;
    bool too_big;
} body_buf;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *user)
{
    body_buf *b = user;
    size_t n = size * nmemb;
    char *nd;

    if (n > SG_FED_BODY_MAX || b->len + n > SG_FED_BODY_MAX) {
        b->too_big = true;
        return 0; /* curl aborts the transfer */
    }
    nd = realloc(b->data, b->len + n + 1);
    if (nd == NULL)
        return 0;
    memcpy(nd + b->len, ptr, n);
    b->data = nd;
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* State of the https_spiffe check for one fetch. */
typedef struct spiffe_check {
    STACK_OF(X509) * roots;
    const char *want_id;
    char why[2 * SG_ERR_MSG_LEN];
} spiffe_check;

/* Replaces OpenSSL's chain verification: the peer must be want_id, signed by roots. */
static int verify_endpoint(X509_STORE_CTX *xctx, void *arg)
{
    spiffe_check *sc = arg;
    X509 *leaf = X509_STORE_CTX_get0_cert(xctx);
    STACK_OF(X509) *untrusted = X509_STORE_CTX_get0_untrusted(xctx);
    sg_spiffeid got, want;
    sg_err err;

    sg_err_clear(&err);
    if (leaf == NULL) {
        snprintf(sc->why, sizeof sc->why, "the endpoint presented no certificate");
        goto fail;
    }
    if (sg_x509_verify_svid(leaf, untrusted, sc->roots, 0, &got, &err) < 0) {
        snprintf(sc->why, sizeof sc->why, "endpoint certificate not trusted: %s", err.msg);
        goto fail;
    }
    if (sg_spiffeid_parse(sc->want_id, &want, &err) < 0 || strcmp(want.td, got.td) != 0 ||
        strcmp(want.path, got.path) != 0) {
        snprintf(sc->why, sizeof sc->why,
                 "endpoint presented SPIFFE ID \"spiffe://%.80s%.80s\", expected \"%.100s\"",
                 got.td, got.path, sc->want_id);
        goto fail;
    }
    return 1;
fail:
    X509_STORE_CTX_set_error(xctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

static CURLcode on_ssl_ctx(CURL *curl, void *sslctx, void *parm)
{
    (void)curl;
    SSL_CTX_set_cert_verify_callback(sslctx, verify_endpoint, parm);
    return CURLE_OK;
}

static int roots_from_bundle(const sg_bundle *b, STACK_OF(X509) * *out, sg_err *err)
{
    STACK_OF(X509) *st = sk_X509_new_null();

    if (st == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    for (size_t i = 0; i < b->nx509; i++) {
        X509 *x = NULL;
        int rc = sg_x509_from_der(b->x509[i].data, b->x509[i].len, &x, err);
        if (rc < 0 || sk_X509_push(st, x) == 0) {
            X509_free(x);
            sk_X509_pop_free(st, X509_free);
            return rc < 0 ? rc : sg_err_set(err, SG_ENOMEM, "out of memory");
        }
    }
    *out = st;
    return 0;
}

/* Progress callback: a non-zero return aborts the transfer (the server is stopping). */
static int on_progress(void *user, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    const atomic_bool *abort_flag = user;

    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return abort_flag != NULL && atomic_load(abort_flag) ? 1 : 0;
}

static int fetch(const sg_fed_rel *rel, const sg_bundle *trust, const atomic_bool *abort_flag,
                 sg_bundle *out, sg_err *err);

int sg_federation_fetch(const sg_fed_rel *rel, const sg_bundle *trust, sg_bundle *out, sg_err *err)
{
    return fetch(rel, trust, NULL, out, err);
}

static int fetch(const sg_fed_rel *rel, const sg_bundle *trust, const atomic_bool *abort_flag,
                 sg_bundle *out, sg_err *err)
{
    char cerr[CURL_ERROR_SIZE];
    body_buf body = {0};
    spiffe_check sc;
    bool spiffe;
    CURL *c = NULL;
    CURLcode cc;
    long status = 0;
    int rc = 0;

    memset(&sc, 0, sizeof sc);
    memset(out, 0, sizeof *out);
    if (rel == NULL || rel->url == NULL || rel->profile == NULL || rel->trust_domain == NULL)
        return sg_err_set(err, SG_EINVAL, "incomplete federation relationship");
    spiffe = strcmp(rel->profile, "https_spiffe") == 0;
    if (spiffe) {
        if (trust == NULL || trust->nx509 == 0)
            return sg_err_set(err, SG_EUNTRUSTED,
                              "no bundle of \"%.128s\" to verify its https_spiffe endpoint %.256s "
                              "(set one with bundle set or -trustDomainBundlePath)",
                              rel->trust_domain, rel->url);
        rc = roots_from_bundle(trust, &sc.roots, err);
        if (rc < 0)
            return rc;
        sc.want_id = rel->endpoint_spiffe_id ? rel->endpoint_spiffe_id : "";
    }
    c = curl_easy_init();
    if (c == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory creating an HTTP client");
        goto out;
    }
    cerr[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, rel->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)SG_FED_FETCH_TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)CONNECT_TIMEOUT);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "sigil-server");
    if (abort_flag != NULL) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)(uintptr_t)abort_flag);
    }
    curl_easy_setopt(c, CURLOPT_SSL_SESSIONID_CACHE, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    if (spiffe) {
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
        curl_easy_setopt(c, CURLOPT_CAINFO, NULL);
        curl_easy_setopt(c, CURLOPT_CAPATH, NULL);
        curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
        curl_easy_setopt(c, CURLOPT_SSL_CTX_DATA, &sc);
    } else {
        const char *roots = getenv("SSL_CERT_FILE");
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
        if (roots != NULL && roots[0] != '\0')
            curl_easy_setopt(c, CURLOPT_CAINFO, roots);
    }
    cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        if (body.too_big)
            rc = sg_err_set(err, SG_ETOOBIG,
                            "bundle endpoint %.256s: response is larger than %d bytes", rel->url,
                            SG_FED_BODY_MAX);
        else if (sc.why[0] != '\0')
            rc = sg_err_set(err, SG_EUNTRUSTED, "bundle endpoint %.256s: %s", rel->url, sc.why);
        else
            rc = sg_err_set(err, cc == CURLE_OPERATION_TIMEDOUT ? SG_ETIMEDOUT : SG_EUNAVAIL,
                            "bundle endpoint %.256s: %s", rel->url,
                            cerr[0] ? cerr : curl_easy_strerror(cc));
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        rc = sg_err_set(err, SG_EPROTO, "bundle endpoint %.256s answered HTTP %ld", rel->url,
                        status);
        goto out;
    }
    if (body.len == 0) {
        rc = sg_err_set(err, SG_EPROTO, "bundle endpoint %.256s sent an empty body", rel->url);
        goto out;
    }
    if (memchr(body.data, '\0', body.len) != NULL) {
        rc = sg_err_set(err, SG_EPROTO, "bundle endpoint %.256s sent a body with a NUL byte",
                        rel->url);
        goto out;
    }
    {
        sg_err perr;
        sg_err_clear(&perr);
        rc = sg_bundle_from_jwks(rel->trust_domain, body.data, body.len, out, &perr);
        if (rc == 0 && out->nx509 == 0 && out->njwt == 0) {
            /* Keys the decoder skipped leave nothing to trust: never store that. */
            sg_bundle_cleanup(out);
            rc = sg_err_set(&perr, SG_EINVAL, "no usable x509-svid or jwt-svid key");
        }
        if (rc < 0)
            sg_err_set(err, rc, "bundle endpoint %.200s sent a malformed bundle: %s", rel->url,
                       perr.msg);
    }
out:
    if (c != NULL)
        curl_easy_cleanup(c);
    if (sc.roots != NULL)
        sk_X509_pop_free(sc.roots, X509_free);
    free(body.data);
    return rc;
}

/* ------------------------------------------------------------ store */

/* The stored bundle of td, parsed; SG_ENOENT when none. */
static int stored_bundle(sg_datastore *ds, const char *td, sg_bundle *out, sg_err *err)
{
    sg_fed_bundle_rec rec;
    int rc = sg_ds_fed_bundle_get(ds, td, &rec, err);

    if (rc < 0)
        return rc;
    rc = sg_bundle_from_jwks(td, rec.jwks, strlen(rec.jwks), out, err);
    if (rc == 0 && out->sequence < rec.sequence)
        out->sequence = rec.sequence;
    sg_fed_bundle_rec_cleanup(&rec);
    return rc;
}

/* Fetches rel's bundle and stores it; *next_s gets the refresh interval. */
static int fetch_and_store(sg_federation *f, const sg_fed_rel *rel, sg_bundle *out, int64_t *next_s,
                           sg_err *err)
{
    sg_bundle stored, got;
    bool have_stored, same = false, changed = false;
    char *json = NULL;
    sg_err terr;
    int rc;

    memset(&stored, 0, sizeof stored);
    memset(&got, 0, sizeof got);
    sg_err_clear(&terr);
    /* The stored bundle: the trust anchor of an https_spiffe endpoint, and what a fetch is
     * compared with. */
    have_stored = stored_bundle(f->ds, rel->trust_domain, &stored, &terr) == 0;
    rc = fetch(rel, have_stored ? &stored : NULL, &f->abort, &got, err);
    if (rc == 0 && have_stored) {
        if (got.sequence == 0)
            got.sequence = stored.sequence; /* no spiffe_sequence: order unknown, keep ours */
        /* The same keys under a lower number (ours came from `bundle set`): nothing to do. A
         * lower number with other keys is refused by the datastore as a rollback. */
        same = got.sequence < stored.sequence && sg_bundle_same_keys(&got, &stored);
    }
    if (rc == 0 && !same)
        rc = sg_bundle_to_jwks(&got, &json, err);
    if (rc == 0 && !same)
        rc = sg_ds_fed_bundle_put(f->ds, rel->trust_domain, json, got.sequence, &changed, err);
    if (rc == 0) {
        *next_s = sg_federation_next_refresh_s(&got);
        if (changed) {
            sg_log_info("federated bundle updated trust_domain=%s sequence=%llu x509=%zu jwt=%zu",
                        rel->trust_domain, (unsigned long long)got.sequence, got.nx509, got.njwt);
            if (f->on_change)
                f->on_change(f->ctx);
        }
        if (out != NULL) {
            if (same)
                got.sequence = stored.sequence;
            *out = got;
            memset(&got, 0, sizeof got);
        }
    }
    free(json);
    sg_bundle_cleanup(&got);
    sg_bundle_cleanup(&stored);
    return rc;
}

int sg_federation_refresh(sg_federation *f, const char *trust_domain, sg_bundle *out, sg_err *err)
{
    sg_fed_rel rel;
    int64_t next = 0;
    int rc = sg_ds_fed_rel_get(f->ds, trust_domain, &rel, err);

    if (rc < 0)
        return rc;
    rc = fetch_and_store(f, &rel, out, &next, err);
    sg_fed_rel_cleanup(&rel);
    return rc;
}

/* ------------------------------------------------------------ refresher thread */

static fed_sched *sched_find(sg_federation *f, const char *td)
{
    for (size_t i = 0; i < f->nsched; i++)
        if (strcmp(f->sched[i].td, td) == 0)
            return &f->sched[i];
    return NULL;
}

static fed_sched *sched_add(sg_federation *f, const char *td)
{
    fed_sched *n = realloc(f->sched, (f->nsched + 1) * sizeof *n);

    if (n == NULL)
        return NULL;
    f->sched = n;
    memset(&n[f->nsched], 0, sizeof *n);
    n[f->nsched].td = strdup(td);
    if (n[f->nsched].td == NULL)
        return NULL;
    return &n[f->nsched++];
}

/* Drops schedules whose relationship is gone. */
static void sched_sweep(sg_federation *f)
{
    size_t w = 0;

    for (size_t r = 0; r < f->nsched; r++) {
        if (!f->sched[r].seen) {
            free(f->sched[r].td);
            continue;
        }
        f->sched[w++] = f->sched[r];
    }
    f->nsched = w;
}

/* Runs every due fetch; returns the earliest next due time. */
static int64_t refresh_due(sg_federation *f)
{
    sg_fed_rel *rels = NULL;
    size_t n = 0;
    int64_t next = now_s() + RELOAD_S;
    sg_err err;

    sg_err_clear(&err);
    if (sg_ds_fed_rel_list(f->ds, &rels, &n, &err) < 0) {
        sg_log_error("cannot list federation relationships: %s", err.msg);
        return next;
    }
    for (size_t i = 0; i < f->nsched; i++)
        f->sched[i].seen = false;
    for (size_t i = 0; i < n; i++) {
        fed_sched *s = sched_find(f, rels[i].trust_domain);
        if (s == NULL)
            s = sched_add(f, rels[i].trust_domain);
        if (s == NULL)
            continue;
        s->seen = true;
        if (now_s() >= s->next_at) {
            int64_t every = 0;
            pthread_mutex_lock(&f->mu);
            bool stop = f->stopping;
            pthread_mutex_unlock(&f->mu);
            if (stop)
                break;
            sg_err_clear(&err);
            if (fetch_and_store(f, &rels[i], NULL, &every, &err) == 0) {
                s->backoff_s = 0;
                s->next_at = now_s() + every;
            } else {
                int64_t cap = SG_FED_REFRESH_DEFAULT_S;
                s->backoff_s = s->backoff_s ? s->backoff_s * 2 : BACKOFF_MIN_S;
                if (s->backoff_s > cap)
                    s->backoff_s = cap;
                s->next_at = now_s() + s->backoff_s;
                sg_log_error("federated bundle refresh failed trust_domain=%s retry_in=%llds "
                             "(the last good bundle is kept): %s",
                             rels[i].trust_domain, (long long)s->backoff_s, err.msg);
            }
        }
        if (s->next_at < next)
            next = s->next_at;
    }
    sched_sweep(f);
    sg_fed_rel_list_free(rels, n);
    return next;
}

static void *refresher_main(void *arg)
{
    sg_federation *f = arg;
    sigset_t pipe_set;

    /* curl runs with CURLOPT_NOSIGNAL: a peer that hangs up gives EPIPE, not SIGPIPE. */
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);

    pthread_mutex_lock(&f->mu);
    while (!f->stopping) {
        bool kicked = f->kicked;
        f->kicked = false;
        pthread_mutex_unlock(&f->mu);
        /* A relationship changed through the admin API: fetch every one at once. */
        for (size_t i = 0; kicked && i < f->nsched; i++)
            f->sched[i].next_at = 0;
        int64_t next = refresh_due(f);
        pthread_mutex_lock(&f->mu);
        if (f->stopping || f->kicked)
            continue;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t wait = next - now_s();
        if (wait < 1)
            wait = 1;
        ts.tv_sec += (time_t)wait;
        while (!f->stopping && !f->kicked)
            if (pthread_cond_timedwait(&f->cv, &f->mu, &ts) != 0)
                break;
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

/* ------------------------------------------------------------ lifecycle */

int sg_federation_new(sg_federation **out, sg_datastore *ds, const char *own_td,
                      void (*on_change)(void *ctx), void *ctx, sg_err *err)
{
    sg_federation *f = calloc(1, sizeof *f);

    if (f == NULL || (f->own_td = strdup(own_td ? own_td : "")) == NULL) {
        free(f);
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    /* Reference-counted by libcurl (thread-safe in Debian's 7.88); undone in free. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(f->own_td);
        free(f);
        return sg_err_set(err, SG_EUNAVAIL, "libcurl could not be initialised");
    }
    f->ds = ds;
    f->on_change = on_change;
    f->ctx = ctx;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    *out = f;
    return 0;
}

int sg_federation_start(sg_federation *f, sg_err *err)
{
    if (f->started)
        return 0;
    f->stopping = false;
    if (pthread_create(&f->thread, NULL, refresher_main, f) != 0)
        return sg_err_set(err, SG_ESYS, "cannot start the federation refresher thread");
    f->started = true;
    return 0;
}

void sg_federation_stop(sg_federation *f)
{
    if (f == NULL || !f->started)
        return;
    atomic_store(&f->abort, true);
    pthread_mutex_lock(&f->mu);
    f->stopping = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    f->started = false;
}

void sg_federation_kick(sg_federation *f)
{
    if (f == NULL)
        return;
    pthread_mutex_lock(&f->mu);
    f->kicked = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

void sg_federation_free(sg_federation *f)
{
    if (f == NULL)
        return;
    sg_federation_stop(f);
    for (size_t i = 0; i < f->nsched; i++)
        free(f->sched[i].td);
    free(f->sched);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f->own_td);
    free(f);
    curl_global_cleanup();
}

/* ------------------------------------------------------------ server glue */

int sg_federation_foreign_td(const char *what, const char *in, const char *own_td, char *out,
                             sg_err *err)
{
    sg_err perr;

    if (in == NULL || in[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "%s is required", what);
    if (sg_trust_domain_parse(in, out, &perr) < 0)
        return sg_err_set(err, SG_EINVAL, "invalid %s \"%.128s\": %s", what, in, perr.msg);
    if (own_td != NULL && strcmp(out, own_td) == 0)
        return sg_err_set(err, SG_EINVAL, "%s \"%.128s\" is this server's own trust domain", what,
                          in);
    return 0;
}

static void on_bundle_change(void *ctx)
{
    sg_sync_hub *hub = sg_server_sync_hub(ctx);

    if (hub != NULL)
        sg_sync_hub_changed(hub, NULL, false);
}

static bool same_str(const char *a, const char *b)
{
    if (a == NULL || a[0] == '\0')
        return b == NULL || b[0] == '\0';
    return b != NULL && strcmp(a, b) == 0;
}

int sg_federation_server_setup(sg_federation **out, sg_server *s, sg_err *err)
{
    const sg_server_config *cfg = sg_server_config_get(s);
    sg_datastore *ds = sg_server_datastore(s);
    int rc;

    for (size_t i = 0; i < cfg->nfederates_with; i++) {
        const sg_config_federates_with *fw = &cfg->federates_with[i];
        sg_fed_rel want = {
            .trust_domain = (char *)(uintptr_t)fw->trust_domain,
            .url = fw->bundle_endpoint_url,
            .profile = (char *)(uintptr_t)(fw->https_web ? "https_web" : "https_spiffe"),
            .endpoint_spiffe_id = fw->https_web ? NULL : fw->endpoint_spiffe_id,
        };
        sg_fed_rel have;
        sg_err gerr;
        bool exists = sg_ds_fed_rel_get(ds, fw->trust_domain, &have, &gerr) == 0;
        bool same = exists && same_str(have.url, want.url) &&
                    same_str(have.profile, want.profile) &&
                    same_str(have.endpoint_spiffe_id, want.endpoint_spiffe_id);
        if (exists)
            sg_fed_rel_cleanup(&have);
        if (same)
            continue;
        rc = sg_ds_fed_rel_put(ds, &want, exists, err);
        if (rc < 0)
            return rc;
        sg_log_info("federation relationship from config trust_domain=%s url=%s profile=%s",
                    want.trust_domain, want.url, want.profile);
    }
    return sg_federation_new(out, ds, cfg->trust_domain, on_bundle_change, s, err);
}

int sg_federation_local_bundle_json(sg_server *s, char **json, sg_err *err)
{
    const sg_server_config *cfg = sg_server_config_get(s);
    sg_jwt_authority *jwt = sg_server_jwt(s);
    sg_bundle b;
    int rc;

    memset(&b, 0, sizeof b);
    b.trust_domain = (char *)(uintptr_t)cfg->trust_domain;
    b.sequence = sg_server_bundle_sequence(s);
    b.refresh_hint = cfg->fed_endpoint_refresh_hint_s;
    rc = sg_ca_bundle_der(sg_server_ca(s), &b.x509, &b.nx509, err);
    if (rc == 0 && jwt != NULL)
        rc = sg_jwt_authority_keys(jwt, &b.jwt, &b.njwt, err);
    if (rc == 0)
        rc = sg_bundle_to_jwks(&b, json, err);
    for (size_t i = 0; i < b.nx509; i++)
        sg_der_cleanup(&b.x509[i]);
    free(b.x509);
    sg_jwt_authority_keys_free(b.jwt, b.njwt);
    return rc;
}

static int endpoint_json(void *ctx, char **json, sg_err *err)
{
    return sg_federation_local_bundle_json(ctx, json, err);
}

static int endpoint_identity(void *ctx, char **key_pem, char **chain_pem, int64_t *not_after,
                             sg_err *err)
{
    sg_server *s = ctx;
    STACK_OF(X509) *certs = NULL;
    int rc = sg_ca_server_identity(
        sg_server_ca(s), sg_server_config_get(s)->default_x509_svid_ttl_s, key_pem, chain_pem, err);

    if (rc < 0)
        return rc;
    rc = sg_x509_parse_pem_chain(*chain_pem, strlen(*chain_pem), &certs, err);
    if (rc == 0) {
        *not_after = sg_x509_not_after(sk_X509_value(certs, 0));
        sk_X509_pop_free(certs, X509_free);
    } else {
        free(*key_pem);
        free(*chain_pem);
        *key_pem = *chain_pem = NULL;
    }
    return rc;
}

int sg_federation_server_start(sg_federation *f, sg_server *s, sg_bundle_endpoint **ep, sg_err *err)
{
    const sg_server_config *cfg = sg_server_config_get(s);
    int rc = sg_federation_start(f, err);

    *ep = NULL;
    if (rc < 0 || !cfg->fed_endpoint_enabled)
        return rc;
    sg_bundle_endpoint_options o = {
        .address = cfg->fed_endpoint_address,
        .port = cfg->fed_endpoint_port,
        .https_web = cfg->fed_endpoint_https_web,
        .cert_file_path = cfg->fed_endpoint_cert_file,
        .key_file_path = cfg->fed_endpoint_key_file,
        .bundle_json = endpoint_json,
        .identity = endpoint_identity,
        .ctx = s,
    };
    return sg_bundle_endpoint_start(ep, &o, err);
}

/* ------------------------------------------------------------ Sync */

typedef struct node_bundle {
    Sigil__Node__V1__Bundle msg;
    sg_bundle b;
    ProtobufCBinaryData *x509;
    Sigil__Node__V1__JWTKey *keys;
    Sigil__Node__V1__JWTKey **keyp;
} node_bundle;

typedef struct node_bundles {
    node_bundle *v;
    size_t n;
} node_bundles;

static int td_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void sg_fed_node_bundles_cleanup(sg_fed_node_bundles *b)
{
    node_bundles *nb;

    if (b == NULL)
        return;
    nb = b->priv;
    for (size_t i = 0; nb != NULL && i < nb->n; i++) {
        sg_bundle_cleanup(&nb->v[i].b);
        free(nb->v[i].x509);
        free(nb->v[i].keys);
        free(nb->v[i].keyp);
    }
    if (nb != NULL)
        free(nb->v);
    free(nb);
    free(b->ptrs);
    memset(b, 0, sizeof *b);
}

/* Fills nb's message from its bundle (borrowed data). */
static int node_bundle_msg(node_bundle *nb)
{
    sg_bundle *b = &nb->b;

    sigil__node__v1__bundle__init(&nb->msg);
    nb->x509 = calloc(b->nx509 ? b->nx509 : 1, sizeof *nb->x509);
    nb->keys = calloc(b->njwt ? b->njwt : 1, sizeof *nb->keys);
    nb->keyp = calloc(b->njwt ? b->njwt : 1, sizeof *nb->keyp);
    if (nb->x509 == NULL || nb->keys == NULL || nb->keyp == NULL)
        return SG_ENOMEM;
    for (size_t i = 0; i < b->nx509; i++) {
        nb->x509[i].data = b->x509[i].data;
        nb->x509[i].len = b->x509[i].len;
    }
    for (size_t i = 0; i < b->njwt; i++) {
        sigil__node__v1__jwtkey__init(&nb->keys[i]);
        nb->keys[i].kid = b->jwt[i].kid;
        nb->keys[i].public_key.data = b->jwt[i].spki.data;
        nb->keys[i].public_key.len = b->jwt[i].spki.len;
        nb->keys[i].expires_at = b->jwt[i].expires_at;
        nb->keyp[i] = &nb->keys[i];
    }
    nb->msg.trust_domain = b->trust_domain;
    nb->msg.n_x509_authorities = b->nx509;
    nb->msg.x509_authorities = nb->x509;
    nb->msg.n_jwt_authorities = b->njwt;
    nb->msg.jwt_authorities = nb->keyp;
    nb->msg.sequence = b->sequence;
    nb->msg.refresh_hint = b->refresh_hint;
    return 0;
}

int sg_fed_node_bundles_build(sg_datastore *ds, const sg_authz_view *view, sg_fed_node_bundles *out,
                              sg_err *err)
{
    size_t n = sg_authz_view_count(view);
    const char **tds = NULL;
    size_t ntd = 0, cap = 0, uniq = 0;
    node_bundles *nb = NULL;
    int rc = 0;

    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < n; i++) {
        const sg_entry *e = sg_authz_view_entry(view, i);
        for (size_t j = 0; j < e->nfederates_with; j++) {
            const char *id = e->federates_with[j];
            if (strncmp(id, "spiffe://", 9) != 0)
                continue;
            if (ntd == cap) {
                size_t nc = cap ? cap * 2 : 8;
                const char **t = realloc(tds, nc * sizeof *t);
                if (t == NULL) {
                    free(tds);
                    return sg_err_set(err, SG_ENOMEM, "out of memory");
                }
                tds = t;
                cap = nc;
            }
            tds[ntd++] = id + 9;
        }
    }
    if (ntd == 0)
        return 0;
    qsort(tds, ntd, sizeof *tds, td_cmp);
    for (size_t i = 0; i < ntd; i++)
        if (uniq == 0 || strcmp(tds[uniq - 1], tds[i]) != 0)
            tds[uniq++] = tds[i];
    nb = calloc(1, sizeof *nb);
    if (nb != NULL)
        nb->v = calloc(uniq, sizeof *nb->v);
    out->ptrs = calloc(uniq, sizeof *out->ptrs);
    out->priv = nb;
    if (nb == NULL || nb->v == NULL || out->ptrs == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < uniq; i++) {
        sg_fed_bundle_rec rec;
        sg_err e;
        node_bundle *b = &nb->v[nb->n];
        if (sg_ds_fed_bundle_get(ds, tds[i], &rec, &e) < 0)
            continue; /* deleted (dissociate) or not fetched yet */
        rc = sg_bundle_from_jwks(tds[i], rec.jwks, strlen(rec.jwks), &b->b, &e);
        if (rc == 0 && b->b.sequence < rec.sequence)
            b->b.sequence = rec.sequence;
        sg_fed_bundle_rec_cleanup(&rec);
        if (rc < 0) {
            sg_log_warn("stored bundle of %s cannot be read: %s", tds[i], e.msg);
            rc = 0;
            continue;
        }
        nb->n++;
        if (node_bundle_msg(b) < 0) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            goto out;
        }
        out->ptrs[out->n++] = &b->msg;
    }
out:
    free(tds);
    if (rc < 0)
        sg_fed_node_bundles_cleanup(out);
    return rc;
}
