/*
 * The floor under the agent's FetchX509SVID: a Workload API server on the
 * same gRPC core layer (common/rpc, one CQ thread running the handler, as
 * in the agent) that answers every FetchX509SVID at once with a fixed
 * response, with no caller identification, attestation or cache behind it.
 * Measured with bench_fetch in the same run, it tells how much of a fetch
 * is gRPC itself and how much is sigil.
 *
 *   bench_floor SOCKET RESPONSE_FILE
 *
 * RESPONSE_FILE holds one packed X509SVIDResponse (bench_fetch saves the
 * agent's first answer), so both servers send the same bytes. Runs until
 * SIGTERM or SIGINT.
 */
#include "common/fsutil.h"
#include "common/rpc.h"

#include "spiffe/workload.pb-c.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define FLOOR_MAX_RESPONSE (4 * 1024 * 1024)

static X509SVIDResponse *g_response;
static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* Streams stay open until the client cancels, as the agent's do. */
static void on_done(sg_rpc_call *call, bool cancelled, void *user)
{
    (void)call;
    (void)cancelled;
    (void)user;
}

static void fetch_x509svid(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    (void)req;
    (void)user;
    sg_rpc_call_on_done(call, on_done, NULL);
    if (sg_rpc_call_send(call, &g_response->base) != 0)
        sg_rpc_call_finish(call, GRPC_STATUS_CANCELLED, "call is over");
}

int main(int argc, char **argv)
{
    sg_err err = {0};
    uint8_t *raw = NULL;
    size_t len = 0;
    char addr[600];
    sg_rpc_server *srv = NULL;
    sg_rpc_server_options opts = {.cq_threads = 1};

    if (argc != 3) {
        fprintf(stderr, "usage: bench_floor SOCKET RESPONSE_FILE\n");
        return 2;
    }
    if (sg_fs_read_file(argv[2], FLOOR_MAX_RESPONSE, &raw, &len, &err) != 0) {
        fprintf(stderr, "bench_floor: %s\n", err.msg);
        return 1;
    }
    g_response = x509_svidresponse__unpack(NULL, len, raw);
    free(raw);
    if (g_response == NULL || g_response->n_svids == 0) {
        fprintf(stderr, "bench_floor: %s does not hold an X509SVIDResponse with an SVID\n",
                argv[2]);
        return 1;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    grpc_init();
    snprintf(addr, sizeof addr, "unix:%s", argv[1]);
    unlink(argv[1]);
    if (sg_rpc_server_new(&srv, &opts, &err) != 0 ||
        sg_rpc_server_add_method(srv, &spiffe_workload_api__descriptor, "FetchX509SVID",
                                 SG_RPC_SERVER_STREAM, fetch_x509svid, NULL, &err) != 0 ||
        sg_rpc_server_add_port(srv, addr, NULL, &err) != 0 || sg_rpc_server_start(srv, &err) != 0) {
        fprintf(stderr, "bench_floor: %s\n", err.msg);
        return 1;
    }
    while (!g_stop)
        pause();
    sg_rpc_server_shutdown(srv);
    sg_rpc_server_free(srv);
    x509_svidresponse__free_unpacked(g_response, NULL);
    grpc_shutdown_blocking();
    unlink(argv[1]);
    return 0;
}
