/*
 * Workload API load generator written against gRPC core: C concurrent
 * clients (one channel = one Unix-socket connection each) call one method
 * again and again for a fixed duration, and the run prints latency
 * percentiles, calls/s, failures and the load generator's own CPU time per
 * call (user + system, all threads).
 *
 *   bench_fetch SOCKET CLIENTS SECONDS [METHOD [SAVE_FILE]]
 *
 * METHOD:
 *   x509      FetchX509SVID: time the first message, cancel, call again
 *             (the default)
 *   jwt-warm  FetchJWTSVID with the same audience every call (the agent
 *             answers from its JWT-SVID cache after the first)
 *   jwt-cold  FetchJWTSVID with a new audience every call, so every call
 *             is a cache miss and a MintJWTSVID round trip to the server
 *   validate  ValidateJWTSVID of one token fetched before the run
 *
 * SAVE_FILE receives the first response as received (bench_floor serves
 * it back). Unary calls count when the status is OK and the response arrived; the
 * latency is until both did. Output lines are `name value`; the figures
 * keep the fetch_ prefix for every method.
 */
#include "common/rpc.h"

#include "spiffe/workload.pb-c.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define WARM_AUDIENCE     "bench-warm"
#define VALIDATE_AUDIENCE "bench-validate"

typedef enum bench_method { BM_X509, BM_JWT_WARM, BM_JWT_COLD, BM_VALIDATE } bench_method;

typedef struct bench {
    bench_method method;
    const char *path;  /* gRPC method path */
    grpc_slice req;    /* the request of every call (not jwt-cold) */
    unsigned long seq; /* jwt-cold: audiences used so far */
    int pid;           /* jwt-cold: keeps audiences of separate runs apart */
    int checked;       /* the first response was decoded and looked right */
    char spiffe_id[256];
} bench;

typedef struct client {
    bench *b;
    grpc_channel *ch;
    grpc_call *call;
    grpc_metadata_array md_in, trailing;
    grpc_byte_buffer *resp;
    grpc_status_code status;
    grpc_slice details;
    int pending; /* ops outstanding on this call */
    int got_message;
    double start, got_at;
    int id;
} client;

typedef struct tag {
    client *c;
    int kind; /* 0 = message batch, 1 = status */
} tag;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static grpc_slice pack_slice(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    return s;
}

/* Flattens a received message into a malloc'd buffer (NULL on failure). */
static uint8_t *flatten(grpc_byte_buffer *bb, size_t *len)
{
    grpc_byte_buffer_reader r;
    grpc_slice s;
    uint8_t *out;

    if (bb == NULL || !grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    *len = GRPC_SLICE_LENGTH(s);
    out = malloc(*len + 1);
    if (out != NULL)
        memcpy(out, GRPC_SLICE_START_PTR(s), *len);
    grpc_slice_unref(s);
    return out;
}

/* The request of the next call: shared, or a fresh audience for jwt-cold. */
static grpc_byte_buffer *next_request(bench *b)
{
    grpc_byte_buffer *bb;

    if (b->method == BM_JWT_COLD) {
        JWTSVIDRequest r = JWTSVIDREQUEST__INIT;
        char aud[64], *auds[1] = {aud};
        grpc_slice s;
        snprintf(aud, sizeof aud, "bench-cold-%d-%lu", b->pid, b->seq++);
        r.n_audience = 1;
        r.audience = auds;
        s = pack_slice(&r.base);
        bb = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);
        return bb;
    }
    return grpc_raw_byte_buffer_create(&b->req, 1);
}

static void start_call(client *c, grpc_completion_queue *cq, tag *tags)
{
    grpc_metadata md;
    grpc_op ops[6];
    grpc_byte_buffer *req;
    grpc_slice path = grpc_slice_from_static_string(c->b->path);

    memset(ops, 0, sizeof ops);
    c->call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, path, NULL,
                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_metadata_array_init(&c->md_in);
    grpc_metadata_array_init(&c->trailing);
    c->resp = NULL;
    c->got_message = 0;
    md.key = grpc_slice_from_static_string("workload.spiffe.io");
    md.value = grpc_slice_from_static_string("true");
    req = next_request(c->b);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = 1;
    ops[0].data.send_initial_metadata.metadata = &md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->md_in;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &c->resp;
    c->start = now_s();
    if (grpc_call_start_batch(c->call, ops, 5, &tags[2 * c->id], NULL) != GRPC_CALL_OK)
        abort();
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &c->trailing;
    ops[0].data.recv_status_on_client.status = &c->status;
    ops[0].data.recv_status_on_client.status_details = &c->details;
    if (grpc_call_start_batch(c->call, ops, 1, &tags[2 * c->id + 1], NULL) != GRPC_CALL_OK)
        abort();
    c->pending = 2;
    grpc_byte_buffer_destroy(req);
}

static void end_call(client *c)
{
    grpc_metadata_array_destroy(&c->md_in);
    grpc_metadata_array_destroy(&c->trailing);
    grpc_slice_unref(c->details);
    if (c->resp != NULL)
        grpc_byte_buffer_destroy(c->resp);
    grpc_call_unref(c->call);
    c->call = NULL;
}

/*
 * Decodes a response of the method: the SPIFFE ID it names into
 * b->spiffe_id, and for FetchJWTSVID the first token into *token when
 * token is not NULL. 0 when the response looks right.
 */
static int check_response(bench *b, grpc_byte_buffer *bb, char **token)
{
    size_t len = 0;
    uint8_t *raw = flatten(bb, &len);
    const char *id = NULL;
    int rc = -1;

    if (raw == NULL)
        return -1;
    if (b->method == BM_X509) {
        X509SVIDResponse *r = x509_svidresponse__unpack(NULL, len, raw);
        if (r != NULL && r->n_svids > 0 && r->svids[0]->spiffe_id != NULL) {
            id = r->svids[0]->spiffe_id;
            snprintf(b->spiffe_id, sizeof b->spiffe_id, "%s", id);
            rc = 0;
        }
        x509_svidresponse__free_unpacked(r, NULL);
    } else if (b->method == BM_VALIDATE) {
        ValidateJWTSVIDResponse *r = validate_jwtsvidresponse__unpack(NULL, len, raw);
        if (r != NULL && r->spiffe_id != NULL && r->spiffe_id[0] != '\0') {
            snprintf(b->spiffe_id, sizeof b->spiffe_id, "%s", r->spiffe_id);
            rc = 0;
        }
        validate_jwtsvidresponse__free_unpacked(r, NULL);
    } else {
        JWTSVIDResponse *r = jwtsvidresponse__unpack(NULL, len, raw);
        if (r != NULL && r->n_svids > 0 && r->svids[0]->svid != NULL &&
            r->svids[0]->svid[0] != '\0') {
            snprintf(b->spiffe_id, sizeof b->spiffe_id, "%s", r->svids[0]->spiffe_id);
            rc = 0;
            if (token != NULL && (*token = strdup(r->svids[0]->svid)) == NULL)
                rc = -1;
        }
        jwtsvidresponse__free_unpacked(r, NULL);
    }
    free(raw);
    return rc;
}

/* Writes the response bytes of bb to path; 0 on success. */
static int save_response(grpc_byte_buffer *bb, const char *path)
{
    size_t len = 0;
    uint8_t *raw = flatten(bb, &len);
    FILE *f = raw != NULL ? fopen(path, "wb") : NULL;
    int rc = f != NULL && fwrite(raw, 1, len, f) == len ? 0 : -1;
    if (f != NULL && fclose(f) != 0)
        rc = -1;
    free(raw);
    if (rc != 0)
        fprintf(stderr, "bench_fetch: cannot save the response to %s\n", path);
    return rc;
}

/*
 * ValidateJWTSVID needs a token: one FetchJWTSVID for VALIDATE_AUDIENCE on
 * ch, then the request every call sends. 0 on success.
 */
static int prepare_validate(bench *b, grpc_channel *ch)
{
    JWTSVIDRequest fr = JWTSVIDREQUEST__INIT;
    ValidateJWTSVIDRequest vr = VALIDATE_JWTSVIDREQUEST__INIT;
    char *auds[1] = {(char *)(uintptr_t)VALIDATE_AUDIENCE}, *token = NULL;
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    grpc_metadata md;
    grpc_metadata_array md_in, trailing;
    grpc_byte_buffer *req, *resp = NULL;
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice(), s;
    grpc_op ops[6];
    grpc_call *call;
    grpc_event ev;
    int rc = -1, tagv = 0;

    fr.n_audience = 1;
    fr.audience = auds;
    s = pack_slice(&fr.base);
    req = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    grpc_metadata_array_init(&md_in);
    grpc_metadata_array_init(&trailing);
    md.key = grpc_slice_from_static_string("workload.spiffe.io");
    md.value = grpc_slice_from_static_string("true");
    call =
        grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                 grpc_slice_from_static_string("/SpiffeWorkloadAPI/FetchJWTSVID"),
                                 NULL, gpr_time_from_seconds(30, GPR_TIMESPAN), NULL);
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = 1;
    ops[0].data.send_initial_metadata.metadata = &md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &md_in;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    if (call != NULL && grpc_call_start_batch(call, ops, 6, &tagv, NULL) == GRPC_CALL_OK) {
        ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_OP_COMPLETE && status == GRPC_STATUS_OK) {
            bench_method m = b->method;
            b->method = BM_JWT_WARM; /* decode as a FetchJWTSVID response */
            rc = check_response(b, resp, &token);
            b->method = m;
        } else {
            char *d = grpc_slice_to_c_string(details);
            fprintf(stderr,
                    "bench_fetch: FetchJWTSVID for the token to validate failed: status %d %s\n",
                    status, d);
            gpr_free(d);
        }
    }
    if (rc == 0) {
        vr.audience = (char *)(uintptr_t)VALIDATE_AUDIENCE;
        vr.svid = token;
        b->req = pack_slice(&vr.base);
    }
    free(token);
    if (resp != NULL)
        grpc_byte_buffer_destroy(resp);
    grpc_byte_buffer_destroy(req);
    grpc_metadata_array_destroy(&md_in);
    grpc_metadata_array_destroy(&trailing);
    grpc_slice_unref(details);
    if (call != NULL)
        grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    return rc;
}

static int parse_method(const char *s, bench *b)
{
    static const struct {
        const char *name, *path;
        bench_method m;
    } methods[] = {
        {"x509", "/SpiffeWorkloadAPI/FetchX509SVID", BM_X509},
        {"jwt-warm", "/SpiffeWorkloadAPI/FetchJWTSVID", BM_JWT_WARM},
        {"jwt-cold", "/SpiffeWorkloadAPI/FetchJWTSVID", BM_JWT_COLD},
        {"validate", "/SpiffeWorkloadAPI/ValidateJWTSVID", BM_VALIDATE},
    };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        if (strcmp(s, methods[i].name) == 0) {
            b->method = methods[i].m;
            b->path = methods[i].path;
            return 0;
        }
    }
    fprintf(stderr, "bench_fetch: unknown method \"%.40s\" (x509, jwt-warm, jwt-cold, validate)\n",
            s);
    return -1;
}

int main(int argc, char **argv)
{
    bench b = {0};
    struct rlimit rl;
    size_t cap = 1 << 20, nlat = 0, failures = 0;
    double *lat, t_end, t0, cpu0;
    int nclients, seconds, unary;
    char target[600];
    client *clients;
    tag *tags;
    grpc_completion_queue *cq;
    int active, rc = 0, bad_response = 0;

    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: bench_fetch SOCKET CLIENTS SECONDS "
                        "[x509|jwt-warm|jwt-cold|validate [SAVE_FILE]]\n");
        return 2;
    }
    nclients = (int)strtol(argv[2], NULL, 10);
    seconds = (int)strtol(argv[3], NULL, 10);
    if (nclients <= 0 || seconds <= 0) {
        fprintf(stderr, "bench_fetch: CLIENTS and SECONDS must be positive numbers\n");
        return 2;
    }
    if (parse_method(argc >= 5 ? argv[4] : "x509", &b) != 0)
        return 2;
    unary = b.method != BM_X509;
    b.pid = (int)getpid();
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    grpc_init();
    if (b.method == BM_X509) {
        X509SVIDRequest r = X509_SVIDREQUEST__INIT;
        b.req = pack_slice(&r.base);
    } else if (b.method == BM_JWT_WARM) {
        JWTSVIDRequest r = JWTSVIDREQUEST__INIT;
        char *auds[1] = {(char *)(uintptr_t)WARM_AUDIENCE};
        r.n_audience = 1;
        r.audience = auds;
        b.req = pack_slice(&r.base);
    } else {
        b.req = grpc_empty_slice();
    }
    snprintf(target, sizeof target, "unix:%s", argv[1]);
    cq = grpc_completion_queue_create_for_next(NULL);
    clients = calloc((size_t)nclients, sizeof *clients);
    tags = calloc((size_t)nclients * 2, sizeof *tags);
    lat = malloc(cap * sizeof *lat);
    if (clients == NULL || tags == NULL || lat == NULL) {
        fprintf(stderr, "bench_fetch: out of memory\n");
        return 1;
    }
    for (int i = 0; i < nclients; i++) {
        grpc_channel_credentials *creds = grpc_insecure_credentials_create();
        grpc_arg arg = {.type = GRPC_ARG_INTEGER,
                        .key = (char *)(uintptr_t) "grpc.use_local_subchannel_pool",
                        .value.integer = 1};
        grpc_channel_args args = {.num_args = 1, .args = &arg};
        clients[i].ch = grpc_channel_create(target, creds, &args);
        grpc_channel_credentials_release(creds);
        clients[i].b = &b;
        clients[i].id = i;
        tags[2 * i] = (tag){&clients[i], 0};
        tags[2 * i + 1] = (tag){&clients[i], 1};
    }
    if (b.method == BM_VALIDATE && prepare_validate(&b, clients[0].ch) != 0) {
        printf("fetch_method validate\nfetch_clients %d\nfetch_failures 1\n", nclients);
        rc = 1;
        goto out;
    }
    t0 = now_s();
    cpu0 = cpu_s();
    t_end = t0 + seconds;
    for (int i = 0; i < nclients; i++)
        start_call(&clients[i], cq, tags);
    active = nclients;
    while (active > 0) {
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        tag *t = ev.tag;
        client *c;

        if (ev.type != GRPC_OP_COMPLETE)
            break;
        c = t->c;
        if (t->kind == 0) {
            if (ev.success && c->resp != NULL) {
                c->got_at = now_s();
                c->got_message = 1;
                if (!unary && nlat < cap)
                    lat[nlat++] = c->got_at - c->start;
            }
            if (!unary)
                grpc_call_cancel(c->call, NULL);
        } else if (unary ? c->status != GRPC_STATUS_OK || !c->got_message
                         : !c->got_message && c->status != GRPC_STATUS_CANCELLED) {
            failures++;
            if (failures == 1) {
                char *d = grpc_slice_to_c_string(c->details);
                fprintf(stderr, "bench_fetch: call failed: status %d %s\n", c->status, d);
                gpr_free(d);
            }
        } else if (unary && nlat < cap) {
            double done = now_s();
            lat[nlat++] = (done > c->got_at ? done : c->got_at) - c->start;
        }
        if (--c->pending == 0) {
            if (c->got_message && !b.checked) {
                if (check_response(&b, c->resp, NULL) != 0) {
                    fprintf(stderr, "bench_fetch: the first response does not decode as %s's\n",
                            b.path);
                    bad_response = 1;
                } else if (argc == 6 && save_response(c->resp, argv[5]) != 0) {
                    bad_response = 1;
                }
                b.checked = 1;
            }
            end_call(c);
            if (now_s() < t_end && failures < 1000 && !bad_response)
                start_call(c, cq, tags);
            else
                active--;
        }
    }
    {
        double elapsed = now_s() - t0;
        double cpu = cpu_s() - cpu0;
        qsort(lat, nlat, sizeof *lat, cmp_double);
        printf("fetch_method %s\n", argc >= 5 ? argv[4] : "x509");
        if (nlat == 0 || bad_response) {
            printf("fetch_clients %d\nfetch_failures %zu\n", nclients, failures);
            rc = 1;
            goto out;
        }
        printf("fetch_clients %d\n", nclients);
        printf("fetch_total %zu\n", nlat);
        printf("fetch_failures %zu\n", failures);
        printf("fetch_per_s %.0f\n", (double)nlat / elapsed);
        printf("fetch_p50_us %.0f\n", lat[nlat / 2] * 1e6);
        printf("fetch_p90_us %.0f\n", lat[(size_t)((double)nlat * 0.90)] * 1e6);
        printf("fetch_p99_us %.0f\n", lat[(size_t)((double)nlat * 0.99)] * 1e6);
        printf("fetch_p999_us %.0f\n", lat[(size_t)((double)nlat * 0.999)] * 1e6);
        printf("fetch_max_us %.0f\n", lat[nlat - 1] * 1e6);
        printf("fetch_seconds %.3f\n", elapsed);
        printf("fetch_client_cpu_us %.1f\n", cpu * 1e6 / (double)nlat);
        if (b.method == BM_JWT_COLD)
            printf("fetch_audiences %lu\n", b.seq);
        printf("fetch_spiffe_id %s\n", b.spiffe_id[0] != '\0' ? b.spiffe_id : "-");
    }
out:
    for (int i = 0; i < nclients; i++)
        grpc_channel_destroy(clients[i].ch);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    grpc_slice_unref(b.req);
    free(clients);
    free(tags);
    free(lat);
    grpc_shutdown_blocking();
    return rc;
}
