/*
 * Workload API load generator written against gRPC core: C concurrent
 * clients (one channel = one Unix-socket connection each) call
 * FetchX509SVID, time the first message, cancel, and call again, for a fixed
 * duration. Prints first-message latency percentiles, fetches/s and the
 * load generator's own CPU time per fetch (user + system, all threads).
 *
 *   bench_fetch SOCKET CLIENTS SECONDS
 */
#include "common/rpc.h"

#include "spiffe/workload.pb-c.h"

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct client {
    grpc_channel *ch;
    grpc_call *call;
    grpc_metadata_array md_in, trailing;
    grpc_byte_buffer *resp;
    grpc_status_code status;
    grpc_slice details;
    int pending; /* ops outstanding on this call */
    int got_message;
    double start;
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

static grpc_slice request_slice;

static void start_call(client *c, grpc_completion_queue *cq, tag *tags)
{
    grpc_metadata md;
    grpc_op ops[6];
    grpc_byte_buffer *req;
    grpc_slice path = grpc_slice_from_static_string("/SpiffeWorkloadAPI/FetchX509SVID");

    memset(ops, 0, sizeof ops);
    c->call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, path, NULL,
                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_metadata_array_init(&c->md_in);
    grpc_metadata_array_init(&c->trailing);
    c->resp = NULL;
    c->got_message = 0;
    md.key = grpc_slice_from_static_string("workload.spiffe.io");
    md.value = grpc_slice_from_static_string("true");
    req = grpc_raw_byte_buffer_create(&request_slice, 1);
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

int main(int argc, char **argv)
{
    X509SVIDRequest req = X509_SVIDREQUEST__INIT;
    struct rlimit rl;
    size_t cap = 1 << 20, nlat = 0, failures = 0;
    double *lat, t_end, t0, cpu0;
    int nclients, seconds;
    char target[600];
    client *clients;
    tag *tags;
    grpc_completion_queue *cq;
    uint8_t buf[16];
    int active;

    if (argc != 4) {
        fprintf(stderr, "usage: bench_fetch SOCKET CLIENTS SECONDS\n");
        return 2;
    }
    nclients = (int)strtol(argv[2], NULL, 10);
    seconds = (int)strtol(argv[3], NULL, 10);
    if (nclients <= 0 || seconds <= 0)
        return 2;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    grpc_init();
    request_slice =
        grpc_slice_from_copied_buffer((const char *)buf, x509_svidrequest__pack(&req, buf));
    snprintf(target, sizeof target, "unix:%s", argv[1]);
    cq = grpc_completion_queue_create_for_next(NULL);
    clients = calloc((size_t)nclients, sizeof *clients);
    tags = calloc((size_t)nclients * 2, sizeof *tags);
    lat = malloc(cap * sizeof *lat);
    for (int i = 0; i < nclients; i++) {
        grpc_channel_credentials *creds = grpc_insecure_credentials_create();
        grpc_arg arg = {.type = GRPC_ARG_INTEGER,
                        .key = (char *)(uintptr_t) "grpc.use_local_subchannel_pool",
                        .value.integer = 1};
        grpc_channel_args args = {.num_args = 1, .args = &arg};
        clients[i].ch = grpc_channel_create(target, creds, &args);
        grpc_channel_credentials_release(creds);
        clients[i].id = i;
        tags[2 * i] = (tag){&clients[i], 0};
        tags[2 * i + 1] = (tag){&clients[i], 1};
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
                double l = now_s() - c->start;
                if (nlat < cap)
                    lat[nlat++] = l;
                c->got_message = 1;
            }
            grpc_call_cancel(c->call, NULL);
        } else if (!c->got_message && c->status != GRPC_STATUS_CANCELLED) {
            failures++;
            if (failures == 1) {
                char *d = grpc_slice_to_c_string(c->details);
                fprintf(stderr, "bench_fetch: call failed: status %d %s\n", c->status, d);
                gpr_free(d);
            }
        }
        if (--c->pending == 0) {
            end_call(c);
            if (now_s() < t_end && failures < 1000)
                start_call(c, cq, tags);
            else
                active--;
        }
    }
    {
        double elapsed = now_s() - t0;
        double cpu = cpu_s() - cpu0;
        qsort(lat, nlat, sizeof *lat, cmp_double);
        if (nlat == 0) {
            printf("fetch_clients %d\nfetch_failures %zu\n", nclients, failures);
            return 1;
        }
        printf("fetch_clients %d\n", nclients);
        printf("fetch_total %zu\n", nlat);
        printf("fetch_failures %zu\n", failures);
        printf("fetch_per_s %.0f\n", (double)nlat / elapsed);
        printf("fetch_p50_us %.0f\n", lat[nlat / 2] * 1e6);
        printf("fetch_p99_us %.0f\n", lat[(size_t)((double)nlat * 0.99)] * 1e6);
        printf("fetch_seconds %.3f\n", elapsed);
        printf("fetch_client_cpu_us %.1f\n", cpu * 1e6 / (double)nlat);
    }
    for (int i = 0; i < nclients; i++)
        grpc_channel_destroy(clients[i].ch);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    grpc_slice_unref(request_slice);
    free(clients);
    free(tags);
    free(lat);
    grpc_shutdown_blocking();
    return failures > 0 && nlat == 0;
}
