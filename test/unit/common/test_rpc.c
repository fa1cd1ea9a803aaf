/*
 * Tests for common/rpc.c: a Workload API server on a Unix socket (and on a
 * handed-over fd) driven by the blocking client calls, plus raw gRPC calls
 * for bytes the client API would never send.
 */
#include "common/rpc.h"
#include "common/rpc_wait.h"

#include "sigil/node/v1/node.pb-c.h"
#include "spiffe/workload.pb-c.h"
#include "test/runner.h"

#include <grpc/byte_buffer.h>
#include <grpc/grpc_posix.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define UNARY_PATH  "/SpiffeWorkloadAPI/ValidateJWTSVID"
#define MD_PATH     "/SpiffeWorkloadAPI/FetchJWTSVID"
#define STREAM_PATH "/SpiffeWorkloadAPI/FetchX509SVID"
#define BIDI_PATH   "/sigil.node.v1.Node/AttestAgent"

/* State shared between handlers and the test body (one test per process). */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sg_rpc_call *held; /* a stream the test drives itself */
    int done_count;
    int cancelled_count;
    pthread_t handler_thread;
    bool handler_ran;
} st = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void on_done(sg_rpc_call *call, bool cancelled, void *user)
{
    (void)call;
    (void)user;
    pthread_mutex_lock(&st.mu);
    st.done_count++;
    if (cancelled)
        st.cancelled_count++;
    if (st.held == call)
        st.held = NULL;
    pthread_cond_broadcast(&st.cv);
    pthread_mutex_unlock(&st.mu);
}

/* Waits up to ms for done_count to reach n. */
static bool wait_done(int n, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&st.mu);
    while (st.done_count < n)
        if (pthread_cond_timedwait(&st.cv, &st.mu, &ts) != 0)
            break;
    bool ok = st.done_count >= n;
    pthread_mutex_unlock(&st.mu);
    return ok;
}

static void note_handler(void)
{
    pthread_mutex_lock(&st.mu);
    st.handler_thread = pthread_self();
    st.handler_ran = true;
    pthread_mutex_unlock(&st.mu);
}

/* ValidateJWTSVID: answers spiffe_id = svid; audience "deny" -> SG_EPERM;
 * audience "peer" answers the peer string. */
static void h_unary(sg_rpc_call *call, const ProtobufCMessage *msg, void *user)
{
    const ValidateJWTSVIDRequest *req = (const ValidateJWTSVIDRequest *)msg;
    (void)user;
    note_handler();
    sg_rpc_call_on_done(call, on_done, NULL);
    if (strcmp(req->audience, "deny") == 0) {
        sg_err err;
        sg_err_set(&err, SG_EPERM, "audience \"%s\" is not allowed", req->audience);
        sg_rpc_call_finish_err(call, &err);
        return;
    }
    ValidateJWTSVIDResponse resp = VALIDATE_JWTSVIDRESPONSE__INIT;
    resp.spiffe_id =
        strcmp(req->audience, "peer") == 0 ? (char *)sg_rpc_call_peer(call) : req->svid;
    sg_rpc_call_send(call, &resp.base);
    sg_rpc_call_finish(call, GRPC_STATUS_OK, NULL);
}

/* FetchJWTSVID: echoes the value of metadata "x-test" as svids[0].svid. */
static void h_md(sg_rpc_call *call, const ProtobufCMessage *msg, void *user)
{
    (void)msg;
    (void)user;
    const char *val;
    size_t len;
    char buf[64];
    if (!sg_rpc_call_metadata(call, "x-test", &val, &len) || len >= sizeof buf) {
        sg_rpc_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "x-test header missing");
        return;
    }
    memcpy(buf, val, len);
    buf[len] = '\0';
    JWTSVID svid = JWTSVID__INIT;
    JWTSVID *svids[1] = {&svid};
    svid.svid = buf;
    JWTSVIDResponse resp = JWTSVIDRESPONSE__INIT;
    resp.n_svids = 1;
    resp.svids = svids;
    sg_rpc_call_send(call, &resp.base);
    sg_rpc_call_finish(call, GRPC_STATUS_OK, NULL);
}

static void send_svid(sg_rpc_call *call, const char *id)
{
    X509SVID svid = X509_SVID__INIT;
    X509SVID *svids[1] = {&svid};
    svid.spiffe_id = (char *)id;
    X509SVIDResponse resp = X509_SVIDRESPONSE__INIT;
    resp.n_svids = 1;
    resp.svids = svids;
    sg_rpc_call_send(call, &resp.base);
}

/* FetchX509SVID: three messages then OK, or with "x-mode: hold" one message
 * and the call is left open for the test. */
static void h_stream(sg_rpc_call *call, const ProtobufCMessage *msg, void *user)
{
    const char *val;
    size_t len;
    (void)msg;
    (void)user;
    note_handler();
    sg_rpc_call_on_done(call, on_done, NULL);
    if (sg_rpc_call_metadata(call, "x-mode", &val, &len) && len == 4 &&
        memcmp(val, "hold", 4) == 0) {
        send_svid(call, "spiffe://example.org/held");
        pthread_mutex_lock(&st.mu);
        st.held = call;
        pthread_mutex_unlock(&st.mu);
        return;
    }
    send_svid(call, "spiffe://example.org/1");
    send_svid(call, "spiffe://example.org/2");
    send_svid(call, "spiffe://example.org/3");
    ASSERT(!sg_rpc_call_is_over(call));
    sg_rpc_call_finish(call, GRPC_STATUS_OK, NULL);
    /* The handler still holds the call: it is over but not yet freed. */
    ASSERT(sg_rpc_call_is_over(call));
    X509SVIDResponse late = X509_SVIDRESPONSE__INIT;
    ASSERT_EQ(sg_rpc_call_send(call, &late.base), SG_ECANCELLED);
}

/* AttestAgent: answers every challenge_response with the same bytes as a
 * challenge; finishes OK when the client half-closes. */
static void bidi_recv(sg_rpc_call *call, const ProtobufCMessage *msg, void *user)
{
    if (msg == NULL) {
        sg_rpc_call_finish(call, GRPC_STATUS_OK, NULL);
        return;
    }
    const Sigil__Node__V1__AttestAgentRequest *req = (const void *)msg;
    Sigil__Node__V1__AttestAgentResponse resp = SIGIL__NODE__V1__ATTEST_AGENT_RESPONSE__INIT;
    resp.step_case = SIGIL__NODE__V1__ATTEST_AGENT_RESPONSE__STEP_CHALLENGE;
    resp.challenge = req->challenge_response;
    sg_rpc_call_send(call, &resp.base);
    sg_rpc_call_recv(call, &sigil__node__v1__attest_agent_request__descriptor, bidi_recv, user);
}

static void h_bidi(sg_rpc_call *call, const ProtobufCMessage *msg, void *user)
{
    ASSERT(msg == NULL);
    sg_rpc_call_on_done(call, on_done, NULL);
    ASSERT_OK(sg_rpc_call_recv(call, &sigil__node__v1__attest_agent_request__descriptor, bidi_recv,
                               user));
}

/* ---------------------------------------------------------------- fixture */

typedef struct fixture {
    sg_rpc_server *srv;
    grpc_channel *ch;
    char addr[300];
} fixture;

static void add_methods(sg_rpc_server *srv)
{
    sg_err err;
    ASSERT_OK(sg_rpc_server_add_method(srv, &spiffe_workload_api__descriptor, "ValidateJWTSVID",
                                       SG_RPC_UNARY, h_unary, NULL, &err));
    ASSERT_OK(sg_rpc_server_add_method(srv, &spiffe_workload_api__descriptor, "FetchJWTSVID",
                                       SG_RPC_UNARY, h_md, NULL, &err));
    ASSERT_OK(sg_rpc_server_add_method(srv, &spiffe_workload_api__descriptor, "FetchX509SVID",
                                       SG_RPC_SERVER_STREAM, h_stream, NULL, &err));
    ASSERT_OK(sg_rpc_server_add_method(srv, &sigil__node__v1__node__descriptor, "AttestAgent",
                                       SG_RPC_BIDI_STREAM, h_bidi, NULL, &err));
}

static void fixture_start(fixture *f, const sg_rpc_server_options *opts)
{
    sg_err err;
    grpc_init();
    snprintf(f->addr, sizeof f->addr, "unix:%s/api.sock", sg_test_tmpdir());
    ASSERT_OK(sg_rpc_server_new(&f->srv, opts, &err));
    add_methods(f->srv);
    ASSERT_OK(sg_rpc_server_add_port(f->srv, f->addr, NULL, &err));
    ASSERT_OK(sg_rpc_server_start(f->srv, &err));
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    f->ch = grpc_channel_create(f->addr, creds, NULL);
    grpc_channel_credentials_release(creds);
}

static void fixture_stop(fixture *f)
{
    grpc_channel_destroy(f->ch);
    sg_rpc_server_shutdown(f->srv);
    sg_rpc_server_free(f->srv);
    grpc_shutdown_blocking();
}

static int call_unary(grpc_channel *ch, const char *audience, const char *svid,
                      ValidateJWTSVIDResponse **out, sg_rpc_status *status, sg_err *err)
{
    ValidateJWTSVIDRequest req = VALIDATE_JWTSVIDREQUEST__INIT;
    req.audience = (char *)audience;
    req.svid = (char *)svid;
    ProtobufCMessage *resp = NULL;
    int rc = sg_rpc_unary(ch, UNARY_PATH, &req.base, &validate_jwtsvidresponse__descriptor, NULL, 0,
                          5000, &resp, status, err);
    *out = (ValidateJWTSVIDResponse *)resp;
    return rc;
}

/* Sends raw bytes as the request of a unary call; returns the status code. */
static grpc_status_code raw_call(grpc_channel *ch, const char *path, const void *data, size_t len,
                                 char *details, size_t dlen)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice method = grpc_slice_from_copied_string(path);
    gpr_timespec dl =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(5000, GPR_TIMESPAN));
    grpc_call *call =
        grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL, dl, NULL);
    grpc_slice_unref(method);
    grpc_slice payload = grpc_slice_from_copied_buffer(data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&payload, 1);
    grpc_slice_unref(payload);
    grpc_byte_buffer *recv = NULL;
    grpc_metadata_array im, tm;
    grpc_metadata_array_init(&im);
    grpc_metadata_array_init(&tm);
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice sd = grpc_empty_slice();
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &im;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &tm;
    ops[5].data.recv_status_on_client.status = &code;
    ops[5].data.recv_status_on_client.status_details = &sd;
    int tag;
    ASSERT_EQ(grpc_call_start_batch(call, ops, 6, &tag, NULL), GRPC_CALL_OK);
    grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    size_t n = GRPC_SLICE_LENGTH(sd) < dlen - 1 ? GRPC_SLICE_LENGTH(sd) : dlen - 1;
    memcpy(details, GRPC_SLICE_START_PTR(sd), n);
    details[n] = '\0';
    grpc_slice_unref(sd);
    if (recv != NULL)
        grpc_byte_buffer_destroy(recv);
    grpc_byte_buffer_destroy(bb);
    grpc_metadata_array_destroy(&im);
    grpc_metadata_array_destroy(&tm);
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_completion_queue_destroy(cq);
    return code;
}

static sg_rpc_call *wait_held(void)
{
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&st.mu);
        sg_rpc_call *c = st.held;
        pthread_mutex_unlock(&st.mu);
        if (c != NULL)
            return c;
        usleep(10000);
    }
    return NULL;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------- tests */

TEST(rpc_unary_roundtrip)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    ValidateJWTSVIDResponse *resp = NULL;
    fixture_start(&f, NULL);
    for (int i = 0; i < 20; i++) {
        ASSERT_OK(call_unary(f.ch, "aud", "spiffe://example.org/w", &resp, &status, &err));
        ASSERT_STREQ(resp->spiffe_id, "spiffe://example.org/w");
        ASSERT_EQ(status.code, GRPC_STATUS_OK);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    ASSERT(wait_done(20, 2000));
    ASSERT_EQ(st.cancelled_count, 0);
    fixture_stop(&f);
}

TEST(rpc_unary_error_maps_status)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    ValidateJWTSVIDResponse *resp = NULL;
    fixture_start(&f, NULL);
    ASSERT_EQ(call_unary(f.ch, "deny", "x", &resp, &status, &err), SG_EPERM);
    ASSERT_EQ(status.code, GRPC_STATUS_PERMISSION_DENIED);
    ASSERT_STREQ(status.details, "audience \"deny\" is not allowed");
    ASSERT_STREQ(err.msg, "PERMISSION_DENIED: audience \"deny\" is not allowed");
    fixture_stop(&f);
}

TEST(rpc_stream_three_messages_then_ok)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    sg_rpc_stream *s;
    X509SVIDRequest req = X509_SVIDREQUEST__INIT;
    fixture_start(&f, NULL);
    ASSERT_OK(sg_rpc_stream_open(f.ch, STREAM_PATH, &req.base, false, NULL, 0, 5000, &s, &err));
    for (int i = 1; i <= 3; i++) {
        ProtobufCMessage *m = NULL;
        char want[64];
        ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 0, &m, &status, &err), 1);
        X509SVIDResponse *r = (X509SVIDResponse *)m;
        snprintf(want, sizeof want, "spiffe://example.org/%d", i);
        ASSERT_EQ(r->n_svids, 1);
        ASSERT_STREQ(r->svids[0]->spiffe_id, want);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    ProtobufCMessage *m = NULL;
    ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 0, &m, &status, &err), 0);
    ASSERT_EQ(status.code, GRPC_STATUS_OK);
    ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 0, &m, &status, &err), 0);
    sg_rpc_stream_free(s);
    ASSERT(wait_done(1, 2000));
    ASSERT_EQ(st.cancelled_count, 0);
    fixture_stop(&f);
}

TEST(rpc_stream_client_cancel_runs_done_cancelled)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    sg_rpc_stream *s;
    X509SVIDRequest req = X509_SVIDREQUEST__INIT;
    sg_rpc_md md[1] = {{"x-mode", "hold"}};
    fixture_start(&f, NULL);
    ASSERT_OK(sg_rpc_stream_open(f.ch, STREAM_PATH, &req.base, false, md, 1, 0, &s, &err));
    ProtobufCMessage *m = NULL;
    ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 0, &m, &status, &err), 1);
    protobuf_c_message_free_unpacked(m, NULL);
    ASSERT(wait_held() != NULL);
    sg_rpc_stream_free(s);
    ASSERT(wait_done(1, 2000));
    ASSERT_EQ(st.cancelled_count, 1);
    fixture_stop(&f);
}

/*
 * A held stream: after its first message, waits time out and leave the
 * stream usable; a message sent later from another thread still arrives,
 * then the clean end.
 */
static void held_stream_times_out_then_delivers(fixture *f)
{
    sg_err err;
    sg_rpc_status status;
    sg_rpc_stream *s;
    X509SVIDRequest req = X509_SVIDREQUEST__INIT;
    sg_rpc_md md[1] = {{"x-mode", "hold"}};
    ASSERT_OK(sg_rpc_stream_open(f->ch, STREAM_PATH, &req.base, false, md, 1, 0, &s, &err));
    ProtobufCMessage *m = NULL;
    ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 0, &m, &status, &err), 1);
    protobuf_c_message_free_unpacked(m, NULL);
    int64_t t0 = now_ms();
    ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 150, &m, &status, &err),
              SG_ETIMEDOUT);
    ASSERT(now_ms() - t0 >= 140);
    ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 50, &m, &status, &err),
              SG_ETIMEDOUT);
    /* The test thread drives the held call: send is thread-safe. */
    sg_rpc_call *held = wait_held();
    ASSERT(held != NULL);
    send_svid(held, "spiffe://example.org/later");
    sg_rpc_call_finish(held, GRPC_STATUS_OK, NULL);
    ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 2000, &m, &status, &err), 1);
    ASSERT_STREQ(((X509SVIDResponse *)m)->svids[0]->spiffe_id, "spiffe://example.org/later");
    protobuf_c_message_free_unpacked(m, NULL);
    ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 2000, &m, &status, &err), 0);
    ASSERT_EQ(status.code, GRPC_STATUS_OK);
    sg_rpc_stream_free(s);
    ASSERT(wait_done(1, 2000));
    ASSERT_EQ(st.cancelled_count, 0);
}

TEST(rpc_stream_next_timeout_keeps_stream_usable)
{
    fixture f;
    fixture_start(&f, NULL);
    held_stream_times_out_then_delivers(&f);
    fixture_stop(&f);
}

/* With a server that drives client I/O, blocking client calls sleep instead
 * of polling; unary calls, streams and stream timeouts behave the same. */
TEST(rpc_client_calls_while_server_thread_drives_io)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    ValidateJWTSVIDResponse *resp = NULL;
    sg_rpc_server_options opts = {.cq_threads = 1, .drive_client_io = true};
    fixture_start(&f, &opts);
    for (int i = 0; i < 20; i++) {
        ASSERT_OK(call_unary(f.ch, "aud", "spiffe://example.org/w", &resp, &status, &err));
        ASSERT_STREQ(resp->spiffe_id, "spiffe://example.org/w");
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    held_stream_times_out_then_delivers(&f);
    fixture_stop(&f);
    /* Once that server is gone, calls poll for themselves again. */
    fixture_start(&f, NULL);
    ASSERT_OK(call_unary(f.ch, "aud", "spiffe://example.org/w", &resp, &status, &err));
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    fixture_stop(&f);
}

typedef struct unary_job {
    grpc_channel *ch;
    int rc;
    grpc_status_code code;
} unary_job;

static void *unary_thread(void *arg)
{
    unary_job *j = arg;
    sg_err err;
    sg_rpc_status status = {0};
    ValidateJWTSVIDResponse *resp = NULL;
    j->rc = call_unary(j->ch, "aud", "spiffe://example.org/w", &resp, &status, &err);
    j->code = status.code;
    if (resp != NULL)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return NULL;
}

/*
 * A call waiting on a callback queue while the CQ thread that drove its I/O
 * goes away must poll for itself. The server runs in a child process so no
 * thread of this one polls; gRPC's backup poller is off, so without the
 * fallback the call could only end at its deadline.
 */
TEST(rpc_client_wait_polls_once_no_driver_is_left)
{
    char path[300];
    snprintf(path, sizeof path, "%s/child.sock", sg_test_tmpdir());
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        sg_err err;
        sg_rpc_server *srv = NULL;
        char addr[320];
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a test that failed */
        snprintf(addr, sizeof addr, "unix:%s", path);
        grpc_init();
        if (sg_rpc_server_new(&srv, NULL, &err) != 0)
            _exit(1);
        add_methods(srv);
        if (sg_rpc_server_add_port(srv, addr, NULL, &err) != 0 ||
            sg_rpc_server_start(srv, &err) != 0)
            _exit(1);
        for (;;)
            pause();
    }
    struct stat sb;
    for (int i = 0; i < 500 && stat(path, &sb) != 0; i++)
        usleep(10000);
    ASSERT_OK(stat(path, &sb));
    setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "0", 1);
    grpc_init();
    char addr[320];
    snprintf(addr, sizeof addr, "unix:%s", path);
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    unary_job j = {.ch = grpc_channel_create(addr, creds, NULL), .rc = -1};
    grpc_channel_credentials_release(creds);
    sg_rpc_wait_drivers_add(1); /* as if a CQ thread were driving I/O */
    pthread_t t;
    ASSERT_OK(pthread_create(&t, NULL, unary_thread, &j));
    usleep(200000);
    sg_rpc_wait_drivers_add(-1); /* ... and it exited */
    pthread_join(t, NULL);
    ASSERT_OK(j.rc);
    ASSERT_EQ(j.code, GRPC_STATUS_OK);
    grpc_channel_destroy(j.ch);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    grpc_shutdown_blocking();
}

TEST(rpc_metadata_lookup)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    JWTSVIDRequest req = JWTSVIDREQUEST__INIT;
    sg_rpc_md md[2] = {{"workload.spiffe.io", "true"}, {"x-test", "hello"}};
    ProtobufCMessage *resp = NULL;
    fixture_start(&f, NULL);
    ASSERT_OK(sg_rpc_unary(f.ch, MD_PATH, &req.base, &jwtsvidresponse__descriptor, md, 2, 5000,
                           &resp, &status, &err));
    ASSERT_STREQ(((JWTSVIDResponse *)resp)->svids[0]->svid, "hello");
    protobuf_c_message_free_unpacked(resp, NULL);
    ASSERT_EQ(sg_rpc_unary(f.ch, MD_PATH, &req.base, &jwtsvidresponse__descriptor, md, 1, 5000,
                           &resp, &status, &err),
              SG_EINVAL);
    ASSERT_STREQ(err.msg, "INVALID_ARGUMENT: x-test header missing");
    fixture_stop(&f);
}

TEST(rpc_unknown_method_unimplemented)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    JWTSVIDRequest req = JWTSVIDREQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    fixture_start(&f, NULL);
    for (int i = 0; i < 10; i++) {
        ASSERT_EQ(sg_rpc_unary(f.ch, "/SpiffeWorkloadAPI/Nope", &req.base,
                               &jwtsvidresponse__descriptor, NULL, 0, 5000, &resp, &status, &err),
                  SG_EUNSUPPORTED);
        ASSERT_EQ(status.code, GRPC_STATUS_UNIMPLEMENTED);
        ASSERT_STREQ(status.details, "unknown method /SpiffeWorkloadAPI/Nope");
    }
    fixture_stop(&f);
}

TEST(rpc_malformed_request_invalid_argument)
{
    fixture f;
    char details[256];
    /* Field 1 claims 16 bytes but only 2 follow. */
    static const unsigned char bad[] = {0x0a, 0x10, 'a', 'b'};
    fixture_start(&f, NULL);
    ASSERT_EQ(raw_call(f.ch, UNARY_PATH, bad, sizeof bad, details, sizeof details),
              GRPC_STATUS_INVALID_ARGUMENT);
    ASSERT_STREQ(details, "malformed ValidateJWTSVIDRequest request");
    ASSERT_EQ(raw_call(f.ch, STREAM_PATH, bad, sizeof bad, details, sizeof details),
              GRPC_STATUS_INVALID_ARGUMENT);
    ASSERT_STREQ(details, "malformed X509SVIDRequest request");
    /* The server is still fine. */
    ValidateJWTSVIDResponse *resp = NULL;
    sg_err err;
    ASSERT_OK(call_unary(f.ch, "a", "b", &resp, NULL, &err));
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    fixture_stop(&f);
}

TEST(rpc_oversized_request_resource_exhausted)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    sg_rpc_server_options opts = {.max_message_bytes = 1024};
    ValidateJWTSVIDResponse *resp = NULL;
    char big[4096];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    fixture_start(&f, &opts);
    ASSERT_EQ(call_unary(f.ch, "a", big, &resp, &status, &err), SG_ETOOBIG);
    ASSERT_EQ(status.code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    ASSERT_OK(call_unary(f.ch, "a", "small", &resp, &status, &err));
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    fixture_stop(&f);
}

TEST(rpc_bidi_echo)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    sg_rpc_stream *s;
    fixture_start(&f, NULL);
    ASSERT_OK(sg_rpc_stream_open(f.ch, BIDI_PATH, NULL, true, NULL, 0, 5000, &s, &err));
    for (int i = 0; i < 3; i++) {
        Sigil__Node__V1__AttestAgentRequest req = SIGIL__NODE__V1__ATTEST_AGENT_REQUEST__INIT;
        uint8_t b = (uint8_t)('a' + i);
        req.step_case = SIGIL__NODE__V1__ATTEST_AGENT_REQUEST__STEP_CHALLENGE_RESPONSE;
        req.challenge_response.data = &b;
        req.challenge_response.len = 1;
        ASSERT_OK(sg_rpc_stream_send(s, &req.base, &err));
        ProtobufCMessage *m = NULL;
        ASSERT_EQ(sg_rpc_stream_next(s, &sigil__node__v1__attest_agent_response__descriptor, 0, &m,
                                     &status, &err),
                  1);
        Sigil__Node__V1__AttestAgentResponse *r = (void *)m;
        ASSERT_EQ(r->step_case, SIGIL__NODE__V1__ATTEST_AGENT_RESPONSE__STEP_CHALLENGE);
        ASSERT_EQ(r->challenge.len, 1);
        ASSERT_EQ(r->challenge.data[0], 'a' + i);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    ASSERT_OK(sg_rpc_stream_close_send(s, &err));
    ProtobufCMessage *m = NULL;
    ASSERT_EQ(sg_rpc_stream_next(s, &sigil__node__v1__attest_agent_response__descriptor, 0, &m,
                                 &status, &err),
              0);
    sg_rpc_stream_free(s);
    ASSERT(wait_done(1, 2000));
    ASSERT_EQ(st.cancelled_count, 0);
    fixture_stop(&f);
}

/* Dispatcher: events go through a queue that one owner thread drains. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sg_rpc_event *q[4096];
    size_t head, tail;
    atomic_int dispatched;
} dq = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void dispatch(sg_rpc_event *ev, void *ctx)
{
    (void)ctx;
    pthread_mutex_lock(&dq.mu);
    dq.q[dq.tail++ % 4096] = ev;
    atomic_fetch_add(&dq.dispatched, 1);
    pthread_cond_broadcast(&dq.cv);
    pthread_mutex_unlock(&dq.mu);
}

/* Runs queued events for up to ms; returns how many ran. */
static int run_events(int ms)
{
    int ran = 0;
    int64_t end = now_ms() + ms;
    for (;;) {
        pthread_mutex_lock(&dq.mu);
        sg_rpc_event *ev = dq.head != dq.tail ? dq.q[dq.head++ % 4096] : NULL;
        pthread_mutex_unlock(&dq.mu);
        if (ev != NULL) {
            sg_rpc_event_run(ev);
            ran++;
            continue;
        }
        if (now_ms() >= end)
            return ran;
        usleep(1000);
    }
}

static atomic_bool owner_stop;
static pthread_t owner_tid;

static void *owner_main(void *arg)
{
    sg_rpc_server *srv = arg;
    while (!atomic_load(&owner_stop))
        run_events(10);
    sg_rpc_server_shutdown(srv);
    while (!sg_rpc_server_shutdown_done(srv))
        run_events(10);
    run_events(0);
    return NULL;
}

TEST(rpc_dispatcher_runs_handlers_on_owner_thread)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    sg_rpc_server_options opts = {.dispatch = dispatch};
    ValidateJWTSVIDResponse *resp = NULL;
    fixture_start(&f, &opts);
    ASSERT_OK(pthread_create(&owner_tid, NULL, owner_main, f.srv));
    ASSERT_OK(call_unary(f.ch, "a", "spiffe://example.org/d", &resp, &status, &err));
    ASSERT_STREQ(resp->spiffe_id, "spiffe://example.org/d");
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    ASSERT(st.handler_ran);
    ASSERT(pthread_equal(st.handler_thread, owner_tid));
    ASSERT(atomic_load(&dq.dispatched) > 0);

    /* A held stream is cancelled by the shutdown the owner runs. */
    sg_rpc_stream *s;
    X509SVIDRequest req = X509_SVIDREQUEST__INIT;
    sg_rpc_md md[1] = {{"x-mode", "hold"}};
    ASSERT_OK(sg_rpc_stream_open(f.ch, STREAM_PATH, &req.base, false, md, 1, 0, &s, &err));
    ProtobufCMessage *m = NULL;
    ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 0, &m, &status, &err), 1);
    protobuf_c_message_free_unpacked(m, NULL);
    atomic_store(&owner_stop, true);
    pthread_join(owner_tid, NULL);
    ASSERT(sg_rpc_server_shutdown_done(f.srv));
    ASSERT(wait_done(2, 100));
    ASSERT_EQ(st.cancelled_count, 1);
    ASSERT(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 0, &m, &status, &err) < 0);
    sg_rpc_stream_free(s);
    grpc_channel_destroy(f.ch);
    sg_rpc_server_free(f.srv);
    grpc_shutdown_blocking();
}

TEST(rpc_dispatcher_answers_bad_calls_without_owner)
{
    fixture f;
    char details[256];
    static const unsigned char bad[] = {0x0a, 0x10, 'a', 'b'};
    sg_rpc_server_options opts = {.dispatch = dispatch};
    fixture_start(&f, &opts);
    /* No owner thread yet: malformed and unknown calls are still answered. */
    ASSERT_EQ(raw_call(f.ch, STREAM_PATH, bad, sizeof bad, details, sizeof details),
              GRPC_STATUS_INVALID_ARGUMENT);
    ASSERT_STREQ(details, "malformed X509SVIDRequest request");
    ASSERT_EQ(raw_call(f.ch, "/SpiffeWorkloadAPI/Nope", bad, sizeof bad, details, sizeof details),
              GRPC_STATUS_UNIMPLEMENTED);
    ASSERT_STREQ(details, "unknown method /SpiffeWorkloadAPI/Nope");
    ASSERT(!st.handler_ran);
    /* A good call waits for the owner, whose thread runs the handler. */
    ASSERT_OK(pthread_create(&owner_tid, NULL, owner_main, f.srv));
    ValidateJWTSVIDResponse *resp = NULL;
    sg_err err;
    sg_rpc_status status;
    ASSERT_OK(call_unary(f.ch, "a", "spiffe://example.org/e", &resp, &status, &err));
    ASSERT_STREQ(resp->spiffe_id, "spiffe://example.org/e");
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    ASSERT(pthread_equal(st.handler_thread, owner_tid));
    atomic_store(&owner_stop, true);
    pthread_join(owner_tid, NULL);
    ASSERT(sg_rpc_server_shutdown_done(f.srv));
    grpc_channel_destroy(f.ch);
    sg_rpc_server_free(f.srv);
    grpc_shutdown_blocking();
}

static struct {
    grpc_channel *ch;
    int rc;
} bg_call;

static void *bg_unary(void *arg)
{
    (void)arg;
    ValidateJWTSVIDResponse *resp = NULL;
    sg_err err;
    bg_call.rc = call_unary(bg_call.ch, "a", "spiffe://example.org/late", &resp, NULL, &err);
    if (resp != NULL)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return NULL;
}

TEST(rpc_dispatcher_skips_handler_once_stopping)
{
    fixture f;
    pthread_t t;
    sg_rpc_server_options opts = {.dispatch = dispatch};
    fixture_start(&f, &opts);
    bg_call.ch = f.ch;
    ASSERT_OK(pthread_create(&t, NULL, bg_unary, NULL));
    /* The call is accepted and its handler queued, but no owner runs yet. */
    for (int i = 0; i < 500 && atomic_load(&dq.dispatched) == 0; i++)
        usleep(10000);
    ASSERT(atomic_load(&dq.dispatched) > 0);
    sg_rpc_server_shutdown(f.srv);
    while (!sg_rpc_server_shutdown_done(f.srv))
        run_events(10);
    run_events(0);
    pthread_join(t, NULL);
    ASSERT(!st.handler_ran);
    ASSERT(bg_call.rc < 0);
    grpc_channel_destroy(f.ch);
    sg_rpc_server_free(f.srv);
    grpc_shutdown_blocking();
}

TEST(rpc_shutdown_with_open_stream_is_prompt)
{
    fixture f;
    sg_err err;
    sg_rpc_status status;
    sg_rpc_stream *s;
    X509SVIDRequest req = X509_SVIDREQUEST__INIT;
    sg_rpc_md md[1] = {{"x-mode", "hold"}};
    sg_rpc_server_options opts = {.cq_threads = 4};
    fixture_start(&f, &opts);
    ASSERT_OK(sg_rpc_stream_open(f.ch, STREAM_PATH, &req.base, false, md, 1, 0, &s, &err));
    ProtobufCMessage *m = NULL;
    ASSERT_EQ(sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 0, &m, &status, &err), 1);
    protobuf_c_message_free_unpacked(m, NULL);
    ASSERT(wait_held() != NULL);
    int64_t t0 = now_ms();
    sg_rpc_server_shutdown(f.srv);
    ASSERT(now_ms() - t0 < 1000);
    ASSERT(sg_rpc_server_shutdown_done(f.srv));
    ASSERT_EQ(st.done_count, 1);
    ASSERT_EQ(st.cancelled_count, 1);
    int rc = sg_rpc_stream_next(s, &x509_svidresponse__descriptor, 2000, &m, &status, &err);
    ASSERT(rc < 0 && rc != SG_ETIMEDOUT);
    sg_rpc_stream_free(s);
    grpc_channel_destroy(f.ch);
    sg_rpc_server_free(f.srv);
    grpc_shutdown_blocking();
}

TEST(rpc_fd_handoff_peer_is_fd)
{
    sg_rpc_server *srv;
    sg_err err;
    sg_rpc_status status;
    int sv[2];
    grpc_init();
    ASSERT_OK(sg_rpc_server_new(&srv, NULL, &err));
    add_methods(srv);
    ASSERT_OK(sg_rpc_server_start(srv, &err));
    ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv));
    ASSERT_OK(sg_rpc_server_add_fd(srv, sv[0], &err));
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create_from_fd("fdpeer", sv[1], creds, NULL);
    grpc_channel_credentials_release(creds);
    ValidateJWTSVIDResponse *resp = NULL;
    ASSERT_OK(call_unary(ch, "peer", "x", &resp, &status, &err));
    char want[32];
    snprintf(want, sizeof want, "fd:%d", sv[0]);
    ASSERT_STREQ(resp->spiffe_id, want);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    grpc_channel_destroy(ch);
    sg_rpc_server_shutdown(srv);
    sg_rpc_server_free(srv);
    grpc_shutdown_blocking();
}

TEST(rpc_add_method_rejects_unknown_name)
{
    sg_rpc_server *srv;
    sg_err err;
    grpc_init();
    ASSERT_OK(sg_rpc_server_new(&srv, NULL, &err));
    ASSERT_EQ(sg_rpc_server_add_method(srv, &spiffe_workload_api__descriptor, "FetchNothing",
                                       SG_RPC_UNARY, h_unary, NULL, &err),
              SG_ENOENT);
    ASSERT(strstr(err.msg, "\"FetchNothing\"") != NULL);
    ASSERT_OK(sg_rpc_server_add_method(srv, &spiffe_workload_api__descriptor, "ValidateJWTSVID",
                                       SG_RPC_UNARY, h_unary, NULL, &err));
    ASSERT_EQ(sg_rpc_server_add_method(srv, &spiffe_workload_api__descriptor, "ValidateJWTSVID",
                                       SG_RPC_UNARY, h_unary, NULL, &err),
              SG_EEXIST);
    sg_rpc_server_free(srv);
    grpc_shutdown_blocking();
}

TEST(rpc_status_table)
{
    ASSERT_EQ(sg_rpc_status_from_err(SG_EINVAL), GRPC_STATUS_INVALID_ARGUMENT);
    ASSERT_EQ(sg_rpc_status_from_err(SG_EPERM), GRPC_STATUS_PERMISSION_DENIED);
    ASSERT_EQ(sg_rpc_status_from_err(SG_ENOENT), GRPC_STATUS_NOT_FOUND);
    ASSERT_EQ(sg_rpc_status_from_err(SG_EEXIST), GRPC_STATUS_ALREADY_EXISTS);
    ASSERT_EQ(sg_rpc_status_from_err(SG_EEXPIRED), GRPC_STATUS_UNAUTHENTICATED);
    ASSERT_EQ(sg_rpc_status_from_err(SG_EUNAUTH), GRPC_STATUS_UNAUTHENTICATED);
    ASSERT_EQ(sg_rpc_status_from_err(SG_EUNTRUSTED), GRPC_STATUS_UNAUTHENTICATED);
    ASSERT_EQ(sg_rpc_status_from_err(SG_EUNAVAIL), GRPC_STATUS_UNAVAILABLE);
    ASSERT_EQ(sg_rpc_status_from_err(SG_ETIMEDOUT), GRPC_STATUS_DEADLINE_EXCEEDED);
    ASSERT_EQ(sg_rpc_status_from_err(SG_ETOOBIG), GRPC_STATUS_RESOURCE_EXHAUSTED);
    ASSERT_EQ(sg_rpc_status_from_err(SG_EUNSUPPORTED), GRPC_STATUS_UNIMPLEMENTED);
    ASSERT_EQ(sg_rpc_status_from_err(SG_ECANCELLED), GRPC_STATUS_CANCELLED);
    ASSERT_EQ(sg_rpc_status_from_err(SG_EDB), GRPC_STATUS_INTERNAL);
    ASSERT_EQ(sg_rpc_err_from_status(GRPC_STATUS_PERMISSION_DENIED), SG_EPERM);
    ASSERT_EQ(sg_rpc_err_from_status(GRPC_STATUS_UNAVAILABLE), SG_EUNAVAIL);
    ASSERT_EQ(sg_rpc_err_from_status(GRPC_STATUS_OK), 0);
    ASSERT_STREQ(sg_rpc_status_name(GRPC_STATUS_UNAUTHENTICATED), "UNAUTHENTICATED");
    ASSERT_STREQ(sg_rpc_status_name((grpc_status_code)99), "UNKNOWN");
}

static void *unary_worker(void *arg)
{
    grpc_channel *ch = arg;
    for (int i = 0; i < 100; i++) {
        ValidateJWTSVIDResponse *resp = NULL;
        sg_err err;
        char id[64];
        snprintf(id, sizeof id, "spiffe://example.org/%d", i);
        if (call_unary(ch, "a", id, &resp, NULL, &err) != 0 || strcmp(resp->spiffe_id, id) != 0)
            return (void *)1;
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return NULL;
}

TEST(rpc_concurrent_unary_on_many_cq_threads)
{
    fixture f;
    pthread_t t[8];
    sg_rpc_server_options opts = {.cq_threads = 4};
    fixture_start(&f, &opts);
    for (int i = 0; i < 8; i++)
        ASSERT_OK(pthread_create(&t[i], NULL, unary_worker, f.ch));
    for (int i = 0; i < 8; i++) {
        void *r;
        pthread_join(t[i], &r);
        ASSERT(r == NULL);
    }
    ASSERT(wait_done(800, 2000));
    fixture_stop(&f);
}
