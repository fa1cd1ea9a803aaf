/*
 * sigil-agent's Workload API client subcommands (api fetch x509, api watch,
 * healthcheck), with spire-agent's flags and output so scripts written for
 * it keep working. Talks to the agent's socket with gRPC core, like any
 * other workload.
 */
#include "agent/cli.h"

#include "common/err.h"
#include "common/fsutil.h"
#include "common/rpc.h"
#include "common/strparse.h"
#include "common/x509.h"

#include "grpc/health/v1/health.pb-c.h"
#include "sigil/agent/v1/status.pb-c.h"
#include "spiffe/workload.pb-c.h"

#include <errno.h>
#include <grpc/grpc.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CLI_DEFAULT_SOCKET    "/tmp/spire-agent/public/api.sock"
#define CLI_DEFAULT_TIMEOUT   5000
#define CLI_FETCH_X509_PATH   "/SpiffeWorkloadAPI/FetchX509SVID"
#define CLI_FETCH_JWT_PATH    "/SpiffeWorkloadAPI/FetchJWTSVID"
#define CLI_JWT_BUNDLES_PATH  "/SpiffeWorkloadAPI/FetchJWTBundles"
#define CLI_VALIDATE_JWT_PATH "/SpiffeWorkloadAPI/ValidateJWTSVID"
#define CLI_MAX_AUDIENCES     32
#define CLI_HEALTH_CHECK_PATH "/grpc.health.v1.Health/Check"
#define CLI_STATUS_GET_PATH   "/sigil.agent.v1.AgentStatus/Get"
/* api watch: how often the stream wait checks for SIGINT/SIGTERM, and the
 * reconnect backoff (doubling from the first to the cap, as spire-agent). */
#define CLI_WATCH_POLL_MS        200
#define CLI_WATCH_BACKOFF_MS     1000
#define CLI_WATCH_BACKOFF_MAX_MS 10000

typedef struct cli_opts {
    const char *socket_path;
    const char *write_dir;
    const char *timeout;
    const char *output;
    const char *spiffe_id;
    const char *svid;
    const char *aud[CLI_MAX_AUDIENCES]; /* -audience, repeated or comma-separated */
    size_t naud;
    char *aud_buf[CLI_MAX_AUDIENCES]; /* copies split at commas (freed by main) */
    size_t naud_buf;
    bool silent;
    bool shallow;
    bool verbose;
} cli_opts;

typedef int (*cli_fn)(const cli_opts *o);

/* Flags a subcommand accepts. */
enum {
    F_SOCKET = 1 << 0,
    F_WRITE = 1 << 1,
    F_TIMEOUT = 1 << 2,
    F_SILENT = 1 << 3,
    F_OUTPUT = 1 << 4,
    F_SHALLOW = 1 << 5,
    F_VERBOSE = 1 << 6,
    F_AUDIENCE = 1 << 7,
    F_SPIFFEID = 1 << 8,
    F_SVID = 1 << 9,
};

static int cmd_fetch_x509(const cli_opts *o);
static int cmd_watch(const cli_opts *o);
static int cmd_healthcheck(const cli_opts *o);
static int cmd_fetch_jwt(const cli_opts *o);
static int cmd_validate_jwt(const cli_opts *o);

static const struct cli_command {
    const char *words[3];
    size_t nwords;
    cli_fn fn;
    unsigned flags;
    const char *usage;
    bool waits_for_signals; /* SIGINT/SIGTERM blocked in every thread, taken with sigtimedwait */
} commands[] = {
    {{"api", "fetch", "x509"},
     3,
     cmd_fetch_x509,
     F_SOCKET | F_WRITE | F_TIMEOUT | F_SILENT | F_OUTPUT,
     "api fetch x509 [-socketPath P] [-write DIR] [-timeout D] [-silent] [-output json]",
     false},
    {{"api", "fetch", "jwt"},
     3,
     cmd_fetch_jwt,
     F_SOCKET | F_TIMEOUT | F_OUTPUT | F_AUDIENCE | F_SPIFFEID,
     "api fetch jwt -audience A [-audience B] [-spiffeID ID] [-socketPath P] [-timeout D] "
     "[-output json]",
     false},
    {{"api", "validate", "jwt"},
     3,
     cmd_validate_jwt,
     F_SOCKET | F_TIMEOUT | F_OUTPUT | F_AUDIENCE | F_SVID,
     "api validate jwt -audience A -svid TOKEN [-socketPath P] [-timeout D] [-output json]",
     false},
    {{"api", "fetch", NULL},
     2,
     cmd_fetch_x509,
     F_SOCKET | F_WRITE | F_TIMEOUT | F_SILENT | F_OUTPUT,
     "api fetch [-socketPath P] [-write DIR] [-timeout D] [-silent] [-output json]",
     false},
    {{"api", "watch", NULL},
     2,
     cmd_watch,
     F_SOCKET | F_OUTPUT,
     "api watch [-socketPath P] [-output json]",
     true},
    {{"healthcheck", NULL, NULL},
     1,
     cmd_healthcheck,
     F_SOCKET | F_SHALLOW | F_VERBOSE,
     "healthcheck [-socketPath P] [-shallow] [-verbose]",
     false},
};

static const struct cli_flag {
    const char *name;
    unsigned bit;
    bool is_bool;
    size_t off;
} flags[] = {
    {"socketPath", F_SOCKET, false, offsetof(cli_opts, socket_path)},
    {"write", F_WRITE, false, offsetof(cli_opts, write_dir)},
    {"timeout", F_TIMEOUT, false, offsetof(cli_opts, timeout)},
    {"output", F_OUTPUT, false, offsetof(cli_opts, output)},
    {"silent", F_SILENT, true, offsetof(cli_opts, silent)},
    {"shallow", F_SHALLOW, true, offsetof(cli_opts, shallow)},
    {"verbose", F_VERBOSE, true, offsetof(cli_opts, verbose)},
    {"audience", F_AUDIENCE, false, 0}, /* collected in aud[] */
    {"spiffeID", F_SPIFFEID, false, offsetof(cli_opts, spiffe_id)},
    {"svid", F_SVID, false, offsetof(cli_opts, svid)},
};

/* -audience: each use adds one or more (comma-separated, as spire-agent) audiences. */
static int add_audience(cli_opts *o, const char *val)
{
    const char *p = val;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        if (len > 0) {
            if (o->naud == CLI_MAX_AUDIENCES) {
                fprintf(stderr, "too many audiences (at most %d)\n", CLI_MAX_AUDIENCES);
                return -1;
            }
            char *a = strndup(p, len);
            if (a == NULL) {
                fprintf(stderr, "out of memory\n");
                return -1;
            }
            o->aud_buf[o->naud_buf++] = a;
            o->aud[o->naud++] = a;
        }
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: sigil-agent <command> [flags]\n\nClient commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %s\n", commands[i].usage);
}

/* Go-style flags: -name value, -name=value, one or two dashes; bools take =true/=false. */
static int parse_flags(int argc, char **argv, unsigned allowed, cli_opts *o)
{
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (arg[0] != '-' || arg[1] == '\0') {
            fprintf(stderr, "unexpected argument \"%s\"\n", arg);
            return -1;
        }
        const char *name = arg + (arg[1] == '-' ? 2 : 1);
        const char *eq = strchr(name, '=');
        size_t nlen = eq != NULL ? (size_t)(eq - name) : strlen(name);
        const struct cli_flag *fl = NULL;
        for (size_t k = 0; k < sizeof(flags) / sizeof(flags[0]); k++)
            if (strlen(flags[k].name) == nlen && strncmp(flags[k].name, name, nlen) == 0)
                fl = &flags[k];
        if (fl == NULL || (fl->bit & allowed) == 0) {
            fprintf(stderr, "flag provided but not defined: -%.*s\n", (int)nlen, name);
            return -1;
        }
        if (fl->is_bool) {
            bool v = true;
            if (eq != NULL) {
                if (strcmp(eq + 1, "true") == 0 || strcmp(eq + 1, "1") == 0)
                    v = true;
                else if (strcmp(eq + 1, "false") == 0 || strcmp(eq + 1, "0") == 0)
                    v = false;
                else {
                    fprintf(stderr, "invalid boolean value \"%s\" for -%s\n", eq + 1, fl->name);
                    return -1;
                }
            }
            *(bool *)((char *)o + fl->off) = v;
            continue;
        }
        const char *val;
        if (eq != NULL) {
            val = eq + 1;
        } else {
            if (i + 1 >= argc) {
                fprintf(stderr, "flag needs an argument: -%s\n", fl->name);
                return -1;
            }
            val = argv[++i];
        }
        if (fl->bit == F_AUDIENCE) {
            if (add_audience(o, val) < 0)
                return -1;
            continue;
        }
        *(const char **)((char *)o + fl->off) = val;
    }
    return 0;
}

/*
 * The socket path: -socketPath, else SPIFFE_ENDPOINT_SOCKET ("unix:///path"
 * or "unix:/path"), else spire-agent's default. Writes "unix:<path>" into target.
 */
static int resolve_socket(const cli_opts *o, char *target, size_t len, sg_err *err)
{
    const char *path = NULL;
    if (o->socket_path != NULL) {
        if (o->socket_path[0] == '\0')
            return sg_err_set(err, SG_EINVAL, "-socketPath is empty");
        path = o->socket_path;
    } else {
        const char *env = getenv("SPIFFE_ENDPOINT_SOCKET");
        if (env != NULL && env[0] != '\0') {
            /* SPIFFE Workload Endpoint 4: a unix URI with an empty authority. */
            if (strncmp(env, "unix:///", 8) == 0)
                path = env + 7;
            else if (strncmp(env, "unix:/", 6) == 0 && env[6] != '/')
                path = env + 5;
            else if (strncmp(env, "unix://", 7) == 0)
                return sg_err_set(err, SG_EINVAL,
                                  "SPIFFE_ENDPOINT_SOCKET \"%.200s\": a unix address must not "
                                  "have an authority (use unix:///path)",
                                  env);
            else
                return sg_err_set(err, SG_EINVAL,
                                  "SPIFFE_ENDPOINT_SOCKET \"%.200s\" is not a unix:///path "
                                  "address",
                                  env);
            if (strchr(path, '?') != NULL || strchr(path, '#') != NULL)
                return sg_err_set(err, SG_EINVAL,
                                  "SPIFFE_ENDPOINT_SOCKET \"%.200s\" must not have a query or "
                                  "fragment",
                                  env);
        } else {
            path = CLI_DEFAULT_SOCKET;
        }
    }
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return sg_err_set(err, SG_EINVAL, "socket path \"%.200s\" is too long", path);
    snprintf(target, len, "unix:%s", path);
    return 0;
}

/* -timeout (default 5 s). */
static int parse_timeout(const cli_opts *o, int64_t *ms)
{
    sg_err err;
    sg_err_clear(&err);
    *ms = CLI_DEFAULT_TIMEOUT;
    if (o->timeout == NULL)
        return 0;
    if (sg_parse_duration_ms(o->timeout, ms, &err) < 0 || *ms <= 0) {
        fprintf(stderr, "invalid value \"%s\" for -timeout: %s\n", o->timeout,
                err.msg[0] ? err.msg : "must be positive");
        return -1;
    }
    return 0;
}

/* resolve_socket for an api command: the error printed as it is. */
static int api_target(const cli_opts *o, char *target, size_t len)
{
    sg_err err;
    sg_err_clear(&err);
    if (resolve_socket(o, target, len, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

/* Go's time.Time default format: "2006-01-02 15:04:05 +0000 UTC". */
static void format_time(const ASN1_TIME *t, char *out, size_t len)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        snprintf(out, len, "(invalid time)");
        return;
    }
    strftime(out, len, "%Y-%m-%d %H:%M:%S +0000 UTC", &tm);
}

/*
 * Opens FetchX509SVID with the security header on a new channel (a fresh
 * channel per attempt, so gRPC's own reconnect backoff never delays a retry).
 * On failure *status says why (UNAVAILABLE when no call could be started).
 */
static int x509_stream_open(const char *target, int64_t timeout_ms, grpc_channel **ch_out,
                            sg_rpc_stream **st_out, sg_rpc_status *status, sg_err *err)
{
    static const sg_rpc_md md[] = {{"workload.spiffe.io", "true"}};
    X509SVIDRequest req = X509_SVIDREQUEST__INIT;
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    int rc = ch != NULL ? sg_rpc_stream_open(ch, CLI_FETCH_X509_PATH, &req.base, false, md, 1,
                                             timeout_ms, st_out, err)
                        : sg_err_set(err, SG_EUNAVAIL, "cannot create a channel to %.200s", target);
    if (rc < 0) {
        status->code = GRPC_STATUS_UNAVAILABLE;
        snprintf(status->details, sizeof(status->details), "%s", err ? err->msg : "");
        if (ch != NULL)
            grpc_channel_destroy(ch);
        return rc;
    }
    *ch_out = ch;
    return 0;
}

static void x509_stream_close(grpc_channel *ch, sg_rpc_stream *st)
{
    sg_rpc_stream_free(st);
    if (ch != NULL)
        grpc_channel_destroy(ch);
}

/*
 * The next X509SVIDResponse (wait_ms > 0: SG_ETIMEDOUT with status->code
 * still OK when none came in time, the stream stays usable). A stream that
 * ends cleanly is reported as UNAVAILABLE: a Workload API stream never ends
 * on its own while the agent serves.
 */
static int x509_stream_next(sg_rpc_stream *st, int64_t wait_ms, X509SVIDResponse **out,
                            sg_rpc_status *status, sg_err *err)
{
    ProtobufCMessage *msg = NULL;
    memset(status, 0, sizeof(*status));
    int rc = sg_rpc_stream_next(st, &x509_svidresponse__descriptor, wait_ms, &msg, status, err);
    if (rc > 0) {
        *out = (X509SVIDResponse *)msg;
        return 0;
    }
    if (rc == 0) {
        status->code = GRPC_STATUS_UNAVAILABLE;
        snprintf(status->details, sizeof(status->details),
                 "the agent ended the stream without a response");
        rc = sg_err_set(err, SG_EUNAVAIL, "%s", status->details);
    }
    return rc;
}

/* Opens FetchX509SVID and waits for the first response. */
static int fetch_first(const char *target, int64_t timeout_ms, X509SVIDResponse **out,
                       sg_rpc_status *status, sg_err *err)
{
    grpc_channel *ch = NULL;
    sg_rpc_stream *st = NULL;
    int rc = x509_stream_open(target, timeout_ms, &ch, &st, status, err);
    if (rc == 0)
        rc = x509_stream_next(st, 0, out, status, err);
    x509_stream_close(ch, st);
    return rc;
}

/* "rpc error: code = PermissionDenied desc = ..." as spire-agent prints it. */
static void print_rpc_error(const sg_rpc_status *status, const sg_err *err)
{
    fprintf(stderr, "rpc error: code = %s desc = %s\n", sg_rpc_status_go_name(status->code),
            status->details[0] ? status->details : err->msg);
}

static int write_pem_file(const char *path, const char *pem, mode_t mode, sg_err *err)
{
    return sg_fs_write_atomic(path, pem, strlen(pem), mode, err);
}

static int der_chain_to_pem(const ProtobufCBinaryData *d, char **pem, STACK_OF(X509) * *sk_out,
                            sg_err *err)
{
    STACK_OF(X509) *sk = NULL;
    int rc = sg_x509_parse_der_chain(d->data, d->len, &sk, err);
    if (rc < 0)
        return rc;
    size_t total = 1;
    char **parts = calloc((size_t)sk_X509_num(sk) + 1, sizeof(*parts));
    if (parts == NULL) {
        sk_X509_pop_free(sk, X509_free);
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    for (int i = 0; rc == 0 && i < sk_X509_num(sk); i++) {
        rc = sg_x509_to_pem(sk_X509_value(sk, i), &parts[i], err);
        if (rc == 0)
            total += strlen(parts[i]);
    }
    char *all = rc == 0 ? malloc(total) : NULL;
    if (rc == 0 && all == NULL)
        rc = sg_err_set(err, SG_ENOMEM, "out of memory");
    if (rc == 0) {
        size_t off = 0;
        for (int i = 0; i < sk_X509_num(sk); i++) {
            size_t l = strlen(parts[i]);
            memcpy(all + off, parts[i], l);
            off += l;
        }
        all[off] = '\0';
    }
    for (int i = 0; i < sk_X509_num(sk); i++)
        free(parts[i]);
    free(parts);
    if (rc < 0) {
        sk_X509_pop_free(sk, X509_free);
        return rc;
    }
    *pem = all;
    if (sk_out != NULL)
        *sk_out = sk;
    else
        sk_X509_pop_free(sk, X509_free);
    return 0;
}

/* PKCS#8 DER to "PRIVATE KEY" PEM (after checking that it parses). */
static int key_to_pem(const ProtobufCBinaryData *d, char **pem, sg_err *err)
{
    const unsigned char *p = d->data;
    EVP_PKEY *k = d2i_AutoPrivateKey(NULL, &p, (long)d->len);
    if (k == NULL)
        return sg_err_ssl(err, "the SVID's private key is not valid PKCS#8 DER");
    EVP_PKEY_free(k);
    BIO *bio = BIO_new(BIO_s_secmem());
    if (bio == NULL || PEM_write_bio(bio, "PRIVATE KEY", "", d->data, (long)d->len) <= 0) {
        BIO_free(bio);
        return sg_err_ssl(err, "cannot encode the private key");
    }
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    char *s = malloc((size_t)n + 1);
    if (s == NULL) {
        BIO_free(bio);
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    BIO_free(bio);
    *pem = s;
    return 0;
}

static void free_secret(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

static void print_svid(size_t idx, const X509SVID *svid, STACK_OF(X509) * chain,
                       STACK_OF(X509) * bundle)
{
    (void)idx;
    char a[64], b[64], serial[41];
    X509 *leaf = sk_X509_value(chain, 0);
    printf("SPIFFE ID:\t\t%s\n", svid->spiffe_id != NULL ? svid->spiffe_id : "");
    if (svid->hint != NULL && svid->hint[0] != '\0')
        printf("Hint:\t\t\t%s\n", svid->hint);
    sg_x509_serial_hex(leaf, serial, sizeof(serial));
    printf("Serial number:\t\t%s\n", serial);
    format_time(X509_get0_notBefore(leaf), a, sizeof(a));
    format_time(X509_get0_notAfter(leaf), b, sizeof(b));
    printf("SVID Valid After:\t%s\nSVID Valid Until:\t%s\n", a, b);
    for (int i = 1; i < sk_X509_num(chain); i++) {
        X509 *x = sk_X509_value(chain, i);
        format_time(X509_get0_notBefore(x), a, sizeof(a));
        format_time(X509_get0_notAfter(x), b, sizeof(b));
        printf("Intermediate #%d Valid After:\t%s\nIntermediate #%d Valid Until:\t%s\n", i, a, i,
               b);
    }
    for (int i = 0; bundle != NULL && i < sk_X509_num(bundle); i++) {
        X509 *x = sk_X509_value(bundle, i);
        format_time(X509_get0_notBefore(x), a, sizeof(a));
        format_time(X509_get0_notAfter(x), b, sizeof(b));
        printf("CA #%d Valid After:\t%s\nCA #%d Valid Until:\t%s\n", i + 1, a, i + 1, b);
    }
    printf("\n");
}

static json_t *b64_json(const ProtobufCBinaryData *d)
{
    size_t olen = 4 * ((d->len + 2) / 3) + 1;
    char *out = malloc(olen);
    if (out == NULL)
        return NULL;
    EVP_EncodeBlock((unsigned char *)out, d->data, (int)d->len);
    json_t *s = json_string(out);
    OPENSSL_cleanse(out, olen);
    free(out);
    return s;
}

/* The response as protojson would show it (bytes in base64, empty fields left out);
 * one_line: on a single line (api watch prints one object per update). */
static int print_json(const X509SVIDResponse *r, bool one_line)
{
    json_t *root = json_object();
    json_t *svids = json_array();
    for (size_t i = 0; i < r->n_svids; i++) {
        const X509SVID *s = r->svids[i];
        json_t *o = json_object();
        json_object_set_new(o, "spiffe_id", json_string(s->spiffe_id ? s->spiffe_id : ""));
        json_object_set_new(o, "x509_svid", b64_json(&s->x509_svid));
        json_object_set_new(o, "x509_svid_key", b64_json(&s->x509_svid_key));
        json_object_set_new(o, "bundle", b64_json(&s->bundle));
        if (s->hint != NULL && s->hint[0] != '\0')
            json_object_set_new(o, "hint", json_string(s->hint));
        json_array_append_new(svids, o);
    }
    json_object_set_new(root, "svids", svids);
    if (r->n_federated_bundles > 0) {
        json_t *fb = json_object();
        for (size_t i = 0; i < r->n_federated_bundles; i++)
            json_object_set_new(fb, r->federated_bundles[i]->key,
                                b64_json(&r->federated_bundles[i]->value));
        json_object_set_new(root, "federated_bundles", fb);
    }
    char *text = json_dumps(root, (one_line ? JSON_COMPACT : JSON_INDENT(2)) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (text == NULL)
        return -1;
    printf("%s\n", text);
    OPENSSL_cleanse(text, strlen(text));
    free(text);
    return 0;
}

static int write_svid_files(const char *dir, size_t i, const char *chain_pem, const char *key_pem,
                            const char *bundle_pem, bool silent, sg_err *err)
{
    char name[64];
    int rc = 0;
    const struct {
        const char *prefix, *suffix, *what, *pem;
        mode_t mode;
    } files[] = {
        {"svid", "pem", "SVID", chain_pem, 0644},
        {"svid", "key", "key", key_pem, 0600},
        {"bundle", "pem", "bundle", bundle_pem, 0644},
    };
    for (size_t k = 0; rc == 0 && k < 3; k++) {
        if (files[k].pem == NULL)
            continue;
        snprintf(name, sizeof(name), "%s.%zu.%s", files[k].prefix, i, files[k].suffix);
        char *path = sg_fs_join(dir, name);
        if (path == NULL)
            return sg_err_set(err, SG_ENOMEM, "out of memory");
        if (!silent)
            printf("Writing %s #%zu to file %s.\n", files[k].what, i, path);
        rc = write_pem_file(path, files[k].pem, files[k].mode, err);
        free(path);
    }
    return rc;
}

static int fed_key_cmp(const void *a, const void *b)
{
    const X509SVIDResponse__FederatedBundlesEntry *x =
        *(X509SVIDResponse__FederatedBundlesEntry *const *)a;
    const X509SVIDResponse__FederatedBundlesEntry *y =
        *(X509SVIDResponse__FederatedBundlesEntry *const *)b;
    return strcmp(x->key ? x->key : "", y->key ? y->key : "");
}

/*
 * The federated bundles next to SVID #i, as spire-agent names them:
 * federated_bundle.<j>.<i>.pem, j counting the trust domains (in key order).
 */
static int write_federated_files(const char *dir, size_t i, const X509SVIDResponse *resp,
                                 bool silent, sg_err *err)
{
    size_t n = resp->n_federated_bundles;
    if (n == 0)
        return 0;
    X509SVIDResponse__FederatedBundlesEntry **sorted = calloc(n, sizeof(*sorted));
    if (sorted == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    memcpy(sorted, resp->federated_bundles, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), fed_key_cmp);
    int rc = 0;
    for (size_t j = 0; j < n && rc == 0; j++) {
        const X509SVIDResponse__FederatedBundlesEntry *fb = sorted[j];
        char *pem = NULL;
        STACK_OF(X509) *certs = NULL;
        rc = der_chain_to_pem(&fb->value, &pem, &certs, err);
        if (rc < 0) {
            sg_err_set(err, rc, "federated bundle for %.100s is malformed: %.120s",
                       fb->key ? fb->key : "", err->msg);
            break;
        }
        sk_X509_pop_free(certs, X509_free);
        char name[80];
        snprintf(name, sizeof(name), "federated_bundle.%zu.%zu.pem", j, i);
        char *path = sg_fs_join(dir, name);
        if (path == NULL) {
            free(pem);
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            break;
        }
        if (!silent)
            printf("Writing federated bundle #%zu for trust domain %s to file %s.\n", i,
                   fb->key ? fb->key : "", path);
        rc = write_pem_file(path, pem, 0644, err);
        free(path);
        free(pem);
    }
    free(sorted);
    return rc;
}

/* -output: json, or pretty (the default). */
static int parse_output(const cli_opts *o, bool *json)
{
    *json = false;
    if (o->output == NULL || strcmp(o->output, "pretty") == 0)
        return 0;
    if (strcmp(o->output, "json") == 0) {
        *json = true;
        return 0;
    }
    fprintf(stderr, "invalid value \"%s\" for -output: use json or pretty\n", o->output);
    return -1;
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/*
 * Prints one response the way `api fetch x509` does ("Received N svid after
 * X ms", then each SVID, or the JSON object) and, with -write, writes each
 * SVID's files. Returns 0, or 1 after saying on stderr what was wrong.
 */
static int show_response(const cli_opts *o, const X509SVIDResponse *resp, double ms, bool json,
                         bool one_line_json)
{
    sg_err err;
    sg_err_clear(&err);
    int ret = 0;
    if (json) {
        if (!o->silent && print_json(resp, one_line_json) < 0)
            ret = 1;
    } else if (!o->silent) {
        printf("Received %zu svid after %.3fms\n\n", resp->n_svids, ms);
    }
    for (size_t i = 0; i < resp->n_svids && ret == 0; i++) {
        const X509SVID *s = resp->svids[i];
        char *chain_pem = NULL, *key_pem = NULL, *bundle_pem = NULL;
        STACK_OF(X509) *chain = NULL, *bundle = NULL;
        if (der_chain_to_pem(&s->x509_svid, &chain_pem, &chain, &err) < 0 ||
            (s->bundle.len > 0 && der_chain_to_pem(&s->bundle, &bundle_pem, &bundle, &err) < 0) ||
            (o->write_dir != NULL && key_to_pem(&s->x509_svid_key, &key_pem, &err) < 0)) {
            fprintf(stderr, "SVID #%zu (%s) is malformed: %s\n", i,
                    s->spiffe_id ? s->spiffe_id : "", err.msg);
            ret = 1;
        } else {
            if (!json && !o->silent)
                print_svid(i, s, chain, bundle);
            if (o->write_dir != NULL && write_svid_files(o->write_dir, i, chain_pem, key_pem,
                                                         bundle_pem, o->silent || json, &err) < 0) {
                fprintf(stderr, "cannot write SVID #%zu: %s\n", i, err.msg);
                ret = 1;
            }
            if (ret == 0 && o->write_dir != NULL &&
                write_federated_files(o->write_dir, i, resp, o->silent || json, &err) < 0) {
                fprintf(stderr, "cannot write the federated bundles of SVID #%zu: %s\n", i,
                        err.msg);
                ret = 1;
            }
        }
        free(chain_pem);
        free(bundle_pem);
        free_secret(key_pem);
        if (chain != NULL)
            sk_X509_pop_free(chain, X509_free);
        if (bundle != NULL)
            sk_X509_pop_free(bundle, X509_free);
    }
    return ret;
}

static int cmd_fetch_x509(const cli_opts *o)
{
    sg_err err;
    sg_err_clear(&err);
    char target[256];
    int64_t timeout_ms;
    bool json;
    if (parse_output(o, &json) < 0 || parse_timeout(o, &timeout_ms) < 0 ||
        api_target(o, target, sizeof(target)) < 0)
        return 1;

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    X509SVIDResponse *resp = NULL;
    sg_rpc_status status;
    memset(&status, 0, sizeof(status));
    if (fetch_first(target, timeout_ms, &resp, &status, &err) < 0) {
        print_rpc_error(&status, &err);
        return 1;
    }
    double ms = ms_since(&t0);
    if (o->write_dir != NULL && sg_fs_mkdir_p(o->write_dir, 0755, &err) < 0) {
        fprintf(stderr, "cannot create directory %s: %s\n", o->write_dir, err.msg);
        x509_svidresponse__free_unpacked(resp, NULL);
        return 1;
    }
    int ret = show_response(o, resp, ms, json, false);
    x509_svidresponse__free_unpacked(resp, NULL);
    return ret;
}

/*
 * Waits up to ms for SIGINT/SIGTERM (blocked in every thread by
 * sg_agent_cli_main); true when one came.
 */
static bool got_stop_signal(int64_t ms)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    int sig;
    do
        sig = sigtimedwait(&set, NULL, &ts);
    while (sig < 0 && errno == EINTR);
    return sig == SIGINT || sig == SIGTERM;
}

/*
 * Reads one stream until it fails or a signal comes. Prints each update and
 * flushes it. Returns 1 on a stop signal, 0 when the stream failed (status
 * and err say how), -1 when a response could not be shown.
 */
static int watch_stream(const cli_opts *o, sg_rpc_stream *st, bool json, int64_t *backoff_ms,
                        sg_rpc_status *status, sg_err *err)
{
    struct timespec since;
    clock_gettime(CLOCK_MONOTONIC, &since);
    for (;;) {
        X509SVIDResponse *resp = NULL;
        int rc = x509_stream_next(st, CLI_WATCH_POLL_MS, &resp, status, err);
        if (rc == SG_ETIMEDOUT && status->code == GRPC_STATUS_OK) {
            if (got_stop_signal(0))
                return 1;
            continue;
        }
        if (rc < 0)
            return 0;
        *backoff_ms = CLI_WATCH_BACKOFF_MS;
        int bad = show_response(o, resp, ms_since(&since), json, true);
        x509_svidresponse__free_unpacked(resp, NULL);
        fflush(stdout);
        if (bad)
            return -1;
        clock_gettime(CLOCK_MONOTONIC, &since);
        if (got_stop_signal(0))
            return 1;
    }
}

/*
 * api watch: one FetchX509SVID stream, every update printed as it arrives.
 * UNAVAILABLE (agent down or restarting) and PERMISSION_DENIED (not
 * registered yet) are retried with backoff; other errors end the watch.
 */
static int cmd_watch(const cli_opts *o)
{
    sg_err err;
    sg_err_clear(&err);
    char target[256];
    bool json;
    if (parse_output(o, &json) < 0 || api_target(o, target, sizeof(target)) < 0)
        return 1;
    int64_t backoff_ms = CLI_WATCH_BACKOFF_MS;
    for (;;) {
        grpc_channel *ch = NULL;
        sg_rpc_stream *st = NULL;
        sg_rpc_status status;
        memset(&status, 0, sizeof(status));
        int rc = x509_stream_open(target, 0, &ch, &st, &status, &err);
        if (rc == 0)
            rc = watch_stream(o, st, json, &backoff_ms, &status, &err);
        x509_stream_close(ch, st);
        if (rc != 0)
            return rc > 0 ? 0 : 1;
        if (status.code == GRPC_STATUS_OK) {
            /* A local failure (a malformed message): no status to retry on. */
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        print_rpc_error(&status, &err);
        fflush(stderr);
        if (status.code != GRPC_STATUS_UNAVAILABLE && status.code != GRPC_STATUS_PERMISSION_DENIED)
            return 1;
        if (got_stop_signal(backoff_ms))
            return 0;
        backoff_ms =
            backoff_ms * 2 > CLI_WATCH_BACKOFF_MAX_MS ? CLI_WATCH_BACKOFF_MAX_MS : backoff_ms * 2;
    }
}

/* ------------------------------------------------------------ JWT */

static const sg_rpc_md workload_md[] = {{"workload.spiffe.io", "true"}};

/* A channel to the agent's Workload API socket, or NULL after printing why. */
static grpc_channel *api_channel(const cli_opts *o)
{
    char target[256];
    if (api_target(o, target, sizeof(target)) < 0)
        return NULL;
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    if (ch == NULL)
        fprintf(stderr, "cannot create a channel to %s\n", target);
    return ch;
}

/* The first message of FetchJWTBundles. */
static int fetch_jwt_bundles(grpc_channel *ch, int64_t timeout_ms, JWTBundlesResponse **out,
                             sg_rpc_status *status, sg_err *err)
{
    JWTBundlesRequest req = JWTBUNDLES_REQUEST__INIT;
    sg_rpc_stream *st = NULL;
    ProtobufCMessage *msg = NULL;
    int rc = sg_rpc_stream_open(ch, CLI_JWT_BUNDLES_PATH, &req.base, false, workload_md, 1,
                                timeout_ms, &st, err);
    if (rc < 0) {
        status->code = GRPC_STATUS_UNAVAILABLE;
        snprintf(status->details, sizeof(status->details), "%s", err->msg);
        return rc;
    }
    rc = sg_rpc_stream_next(st, &jwtbundles_response__descriptor, 0, &msg, status, err);
    sg_rpc_stream_free(st);
    if (rc == 0) {
        status->code = GRPC_STATUS_UNAVAILABLE;
        snprintf(status->details, sizeof(status->details),
                 "the agent ended the stream without a response");
        return sg_err_set(err, SG_EUNAVAIL, "%s", status->details);
    }
    if (rc < 0)
        return rc;
    *out = (JWTBundlesResponse *)msg;
    return 0;
}

static int bundle_key_cmp(const void *a, const void *b)
{
    const JWTBundlesResponse__BundlesEntry *x = *(JWTBundlesResponse__BundlesEntry *const *)a;
    const JWTBundlesResponse__BundlesEntry *y = *(JWTBundlesResponse__BundlesEntry *const *)b;
    return strcmp(x->key ? x->key : "", y->key ? y->key : "");
}

/* spire-agent's -output json: [JWTSVIDResponse, JWTBundlesResponse] as protojson. */
static int print_jwt_json(const JWTSVIDResponse *sv, const JWTBundlesResponse *b)
{
    json_t *arr = json_array();
    json_t *o1 = json_object();
    json_t *svids = json_array();
    for (size_t i = 0; i < sv->n_svids; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "spiffe_id", json_string(sv->svids[i]->spiffe_id));
        json_object_set_new(o, "svid", json_string(sv->svids[i]->svid));
        if (sv->svids[i]->hint != NULL && sv->svids[i]->hint[0] != '\0')
            json_object_set_new(o, "hint", json_string(sv->svids[i]->hint));
        json_array_append_new(svids, o);
    }
    json_object_set_new(o1, "svids", svids);
    json_array_append_new(arr, o1);
    json_t *o2 = json_object();
    json_t *bundles = json_object();
    for (size_t i = 0; i < b->n_bundles; i++)
        json_object_set_new(bundles, b->bundles[i]->key ? b->bundles[i]->key : "",
                            b64_json(&b->bundles[i]->value));
    json_object_set_new(o2, "bundles", bundles);
    json_array_append_new(arr, o2);
    char *text = json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(arr);
    if (text == NULL)
        return -1;
    printf("%s\n", text);
    OPENSSL_cleanse(text, strlen(text));
    free(text);
    return 0;
}

/*
 * api fetch jwt: the caller's JWT-SVIDs for the audience, then the JWT
 * bundles, printed as spire-agent does ("token(<id>):" and
 * "bundle(<td>):" blocks, or -output json).
 */
static int cmd_fetch_jwt(const cli_opts *o)
{
    sg_err err;
    sg_err_clear(&err);
    int64_t timeout_ms;
    bool json;
    if (parse_output(o, &json) < 0 || parse_timeout(o, &timeout_ms) < 0)
        return 1;
    if (o->naud == 0) {
        fprintf(stderr, "audience must be specified (-audience)\n");
        return 1;
    }
    grpc_channel *ch = api_channel(o);
    if (ch == NULL)
        return 1;
    JWTSVIDRequest req = JWTSVIDREQUEST__INIT;
    req.n_audience = o->naud;
    req.audience = (char **)o->aud;
    if (o->spiffe_id != NULL)
        req.spiffe_id = (char *)o->spiffe_id;
    ProtobufCMessage *msg = NULL;
    JWTBundlesResponse *bundles = NULL;
    sg_rpc_status status;
    memset(&status, 0, sizeof(status));
    int ret = 1;
    if (sg_rpc_unary(ch, CLI_FETCH_JWT_PATH, &req.base, &jwtsvidresponse__descriptor, workload_md,
                     1, timeout_ms, &msg, &status, &err) < 0) {
        print_rpc_error(&status, &err);
        goto done;
    }
    memset(&status, 0, sizeof(status));
    if (fetch_jwt_bundles(ch, timeout_ms, &bundles, &status, &err) < 0) {
        print_rpc_error(&status, &err);
        goto done;
    }
    const JWTSVIDResponse *sv = (const JWTSVIDResponse *)msg;
    if (json) {
        ret = print_jwt_json(sv, bundles) < 0 ? 1 : 0;
        goto done;
    }
    for (size_t i = 0; i < sv->n_svids; i++) {
        printf("token(%s):\n\t%s\n", sv->svids[i]->spiffe_id, sv->svids[i]->svid);
        if (sv->svids[i]->hint != NULL && sv->svids[i]->hint[0] != '\0')
            printf("hint(%s):\n\t%s\n", sv->svids[i]->spiffe_id, sv->svids[i]->hint);
    }
    qsort(bundles->bundles, bundles->n_bundles, sizeof(*bundles->bundles), bundle_key_cmp);
    for (size_t i = 0; i < bundles->n_bundles; i++)
        printf("bundle(%s):\n\t%.*s\n", bundles->bundles[i]->key,
               (int)bundles->bundles[i]->value.len, (const char *)bundles->bundles[i]->value.data);
    ret = 0;
done:
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    if (bundles != NULL)
        jwtbundles_response__free_unpacked(bundles, NULL);
    grpc_channel_destroy(ch);
    return ret;
}

static json_t *value_to_json(const Google__Protobuf__Value *v, int depth);

static json_t *struct_to_json(const Google__Protobuf__Struct *s, int depth)
{
    json_t *o = json_object();
    for (size_t i = 0; s != NULL && i < s->n_fields && depth < 64; i++)
        if (s->fields[i]->key != NULL)
            json_object_set_new(o, s->fields[i]->key,
                                value_to_json(s->fields[i]->value, depth + 1));
    return o;
}

static json_t *value_to_json(const Google__Protobuf__Value *v, int depth)
{
    if (v == NULL || depth > 64)
        return json_null();
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE: {
        double d = v->number_value;
        if (d == (double)(json_int_t)d && d > -9007199254740992.0 && d < 9007199254740992.0)
            return json_integer((json_int_t)d);
        return json_real(d);
    }
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        return json_string(v->string_value ? v->string_value : "");
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return json_boolean(v->bool_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return struct_to_json(v->struct_value, depth + 1);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE: {
        json_t *a = json_array();
        for (size_t i = 0; v->list_value != NULL && i < v->list_value->n_values; i++)
            json_array_append_new(a, value_to_json(v->list_value->values[i], depth + 1));
        return a;
    }
    default:
        return json_null();
    }
}

/* api validate jwt: "SVID is valid." with the SPIFFE ID and claims, as spire-agent. */
static int cmd_validate_jwt(const cli_opts *o)
{
    sg_err err;
    sg_err_clear(&err);
    int64_t timeout_ms;
    bool json;
    if (parse_output(o, &json) < 0 || parse_timeout(o, &timeout_ms) < 0)
        return 1;
    if (o->naud != 1) {
        fprintf(stderr, o->naud == 0 ? "audience must be specified (-audience)\n"
                                     : "validate takes exactly one audience\n");
        return 1;
    }
    if (o->svid == NULL || o->svid[0] == '\0') {
        fprintf(stderr, "svid must be specified (-svid)\n");
        return 1;
    }
    grpc_channel *ch = api_channel(o);
    if (ch == NULL)
        return 1;
    ValidateJWTSVIDRequest req = VALIDATE_JWTSVIDREQUEST__INIT;
    req.audience = (char *)o->aud[0];
    req.svid = (char *)o->svid;
    ProtobufCMessage *msg = NULL;
    sg_rpc_status status;
    memset(&status, 0, sizeof(status));
    int ret = 1;
    if (sg_rpc_unary(ch, CLI_VALIDATE_JWT_PATH, &req.base, &validate_jwtsvidresponse__descriptor,
                     workload_md, 1, timeout_ms, &msg, &status, &err) < 0) {
        print_rpc_error(&status, &err);
        goto done;
    }
    const ValidateJWTSVIDResponse *r = (const ValidateJWTSVIDResponse *)msg;
    json_t *claims = struct_to_json(r->claims, 0);
    char *text = json_dumps(claims, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(claims);
    if (text == NULL)
        goto done;
    if (json)
        printf("{\"spiffe_id\":\"%s\",\"claims\":%s}\n", r->spiffe_id, text);
    else
        printf("SVID is valid.\nSPIFFE ID : %s\nClaims    : %s\n", r->spiffe_id, text);
    free(text);
    ret = 0;
done:
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    grpc_channel_destroy(ch);
    return ret;
}

/*
 * The probe agents without the health service answer: FetchX509SVID, where
 * any answer but UNAVAILABLE or a timeout proves the agent serves.
 */
static int healthcheck_workload_api(const cli_opts *o, const char *target)
{
    sg_err err;
    sg_err_clear(&err);
    X509SVIDResponse *resp = NULL;
    sg_rpc_status status;
    memset(&status, 0, sizeof(status));
    int rc = fetch_first(target, CLI_DEFAULT_TIMEOUT, &resp, &status, &err);
    if (rc == 0) {
        x509_svidresponse__free_unpacked(resp, NULL);
    } else if (status.code == GRPC_STATUS_UNAVAILABLE ||
               status.code == GRPC_STATUS_DEADLINE_EXCEEDED || status.code == GRPC_STATUS_OK) {
        fprintf(stderr, "Agent is unhealthy: rpc error: code = %s desc = %s\n",
                sg_rpc_status_go_name(status.code), status.details[0] ? status.details : err.msg);
        return 1;
    } else if (o->verbose) {
        printf("Workload API answered %s (%s): the agent is serving.\n",
               sg_rpc_status_go_name(status.code), status.details);
    }
    printf("Agent is healthy.\n");
    return 0;
}

/* Unix seconds as "2006-01-02 15:04:05 +0000 UTC", or "never" for 0. */
static void format_unix(int64_t t, char *out, size_t len)
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (t <= 0 || gmtime_r(&tt, &tm) == NULL) {
        snprintf(out, len, "never");
        return;
    }
    strftime(out, len, "%Y-%m-%d %H:%M:%S +0000 UTC", &tm);
}

static void print_status(const Sigil__Agent__V1__AgentStatusResponse *st)
{
    char t[64];
    printf("attested: %s\n", st->attested ? "true" : "false");
    format_unix(st->agent_svid_expires_at, t, sizeof(t));
    printf("agent SVID expires at: %s\n", st->agent_svid_expires_at > 0 ? t : "(no SVID)");
    printf("server reachable: %s\n", st->server_reachable ? "true" : "false");
    format_unix(st->last_server_contact, t, sizeof(t));
    printf("last server contact: %s\n", t);
    format_unix(st->unreachable_since, t, sizeof(t));
    printf("unreachable since: %s\n", st->unreachable_since > 0 ? t : "-");
    printf("last error: %s\n", st->last_error && st->last_error[0] ? st->last_error : "-");
    printf("entries: %u\n", (unsigned)st->entries);
    printf("svids: %u\n", (unsigned)st->svids);
    printf("bundle sequence: %llu\n", (unsigned long long)st->bundle_sequence);
}

/*
 * Health/Check says whether the agent serves (an unexpired agent SVID and a
 * bundle); AgentStatus/Get (skipped with -shallow) says why not, and
 * whether it is riding out a server outage on cached SVIDs.
 */
static int cmd_healthcheck(const cli_opts *o)
{
    sg_err err;
    sg_err_clear(&err);
    char target[256];
    if (resolve_socket(o, target, sizeof(target), &err) < 0) {
        fprintf(stderr, "Agent is unhealthy: %s\n", err.msg);
        return 1;
    }
    const char *path = target + 5;
    if (o->verbose)
        printf("Checking agent health at %s...\n", path);
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    if (ch == NULL) {
        fprintf(stderr, "Agent is unhealthy: cannot create a channel to %s\n", path);
        return 1;
    }
    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *hmsg = NULL;
    sg_rpc_status status;
    memset(&status, 0, sizeof(status));
    int rc = sg_rpc_unary(ch, CLI_HEALTH_CHECK_PATH, &hreq.base,
                          &grpc__health__v1__health_check_response__descriptor, NULL, 0,
                          CLI_DEFAULT_TIMEOUT, &hmsg, &status, &err);
    if (rc != 0) {
        grpc_channel_destroy(ch);
        if (status.code == GRPC_STATUS_UNIMPLEMENTED)
            return healthcheck_workload_api(o, target); /* an agent without the health service */
        fprintf(stderr, "Agent is unhealthy: rpc error: code = %s desc = %s\n",
                sg_rpc_status_go_name(status.code), status.details[0] ? status.details : err.msg);
        return 1;
    }
    bool serving = ((Grpc__Health__V1__HealthCheckResponse *)hmsg)->status ==
                   GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    protobuf_c_message_free_unpacked(hmsg, NULL);

    Sigil__Agent__V1__AgentStatusResponse *st = NULL;
    if (!o->shallow) {
        Sigil__Agent__V1__GetStatusRequest sreq = SIGIL__AGENT__V1__GET_STATUS_REQUEST__INIT;
        ProtobufCMessage *smsg = NULL;
        memset(&status, 0, sizeof(status));
        sg_err_clear(&err);
        rc = sg_rpc_unary(ch, CLI_STATUS_GET_PATH, &sreq.base,
                          &sigil__agent__v1__agent_status_response__descriptor, NULL, 0,
                          CLI_DEFAULT_TIMEOUT, &smsg, &status, &err);
        if (rc == 0)
            st = (Sigil__Agent__V1__AgentStatusResponse *)smsg;
        else if (o->verbose)
            printf("Agent status unavailable: %s\n", err.msg);
    }
    grpc_channel_destroy(ch);
    if (o->verbose && st != NULL)
        print_status(st);

    int64_t now = (int64_t)time(NULL);
    int ret = 0;
    if (!serving) {
        const char *why = "not serving";
        if (st != NULL && !st->attested)
            why = "not attested";
        else if (st != NULL && st->agent_svid_expires_at <= now)
            why = "agent SVID expired";
        else if (st != NULL)
            why = "no trust bundle yet";
        fprintf(stderr, "Agent is unhealthy: %s\n", why);
        ret = 1;
    } else {
        printf("Agent is healthy.\n");
        if (st != NULL && !st->server_reachable) {
            char until[64];
            format_unix(st->agent_svid_expires_at, until, sizeof(until));
            int64_t secs = st->unreachable_since > 0 ? now - st->unreachable_since : 0;
            fflush(stdout);
            fprintf(stderr,
                    "warning: the server has been unreachable for %llds (last error: %s); "
                    "serving cached SVIDs until %s\n",
                    (long long)(secs < 0 ? 0 : secs),
                    st->last_error && st->last_error[0] ? st->last_error : "none", until);
        }
    }
    if (st != NULL)
        protobuf_c_message_free_unpacked(&st->base, NULL);
    return ret;
}

int sg_agent_cli_main(int argc, char **argv)
{
    const struct cli_command *cmd = NULL;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]) && cmd == NULL; i++) {
        const struct cli_command *c = &commands[i];
        if ((size_t)argc < c->nwords + 1)
            continue;
        bool match = true;
        for (size_t w = 0; w < c->nwords && match; w++)
            match = strcmp(argv[1 + w], c->words[w]) == 0;
        /* "api fetch" must not swallow "api fetch jwt". */
        if (match && (size_t)argc > c->nwords + 1 && argv[1 + c->nwords][0] != '-')
            match = false;
        if (match)
            cmd = c;
    }
    if (cmd == NULL) {
        fprintf(stderr, "Unknown command:");
        for (int i = 1; i < argc; i++)
            fprintf(stderr, " %s", argv[i]);
        fprintf(stderr, "\n");
        usage(stderr);
        return 1;
    }
    cli_opts o;
    memset(&o, 0, sizeof(o));
    if (parse_flags(argc - 1 - (int)cmd->nwords, argv + 1 + cmd->nwords, cmd->flags, &o) < 0) {
        for (size_t i = 0; i < o.naud_buf; i++)
            free(o.aud_buf[i]);
        fprintf(stderr, "Usage: sigil-agent %s\n", cmd->usage);
        return 1;
    }
    if (cmd->waits_for_signals) {
        /* Before gRPC starts its threads, so they all inherit the mask. */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
    }
    grpc_init();
    int rc = cmd->fn(&o);
    grpc_shutdown_blocking();
    for (size_t i = 0; i < o.naud_buf; i++)
        free(o.aud_buf[i]);
    return rc;
}
