/*
 * gRPC core glue shared by every sigil service and client.
 *
 * Server side: methods are registered from protoc-c service descriptors
 * (path "/" + service name + "/" + method name, request type from the
 * descriptor); completion-queue threads receive events and either run them
 * at once or hand them to a dispatcher (the agent forwards them to its libuv
 * loop). Unknown methods are answered UNIMPLEMENTED.
 *
 * Client side: blocking unary calls and blocking stream readers, for CLIs,
 * the agent's worker threads and load generators.
 */
#ifndef SG_COMMON_RPC_H
#define SG_COMMON_RPC_H

#include "common/err.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SG_RPC_DEFAULT_MAX_MESSAGE (4 * 1024 * 1024)

typedef struct sg_rpc_server sg_rpc_server;
typedef struct sg_rpc_call sg_rpc_call;

typedef enum sg_rpc_kind {
    SG_RPC_UNARY,         /* one request, one response */
    SG_RPC_SERVER_STREAM, /* one request, many responses */
    SG_RPC_BIDI_STREAM,   /* many requests (sg_rpc_call_recv), many responses */
} sg_rpc_kind;

/*
 * Runs when a call arrives. req is the decoded first request (NULL for
 * SG_RPC_BIDI_STREAM, which reads with sg_rpc_call_recv) and is borrowed:
 * valid only until the handler returns. The handler, or anything it hands
 * the call to, must eventually call sg_rpc_call_finish exactly once.
 */
typedef void (*sg_rpc_handler)(sg_rpc_call *call, const ProtobufCMessage *req, void *user);

/* Runs exactly once when a call is over (finished, cancelled or the server
 * stopped); the call is freed right after it returns. */
typedef void (*sg_rpc_done_fn)(sg_rpc_call *call, bool cancelled, void *user);

/* Receives the next client message of a bidi call (borrowed), or NULL when
 * the client half-closed or the call failed. */
typedef void (*sg_rpc_recv_fn)(sg_rpc_call *call, const ProtobufCMessage *msg, void *user);

/*
 * An event from a completion-queue thread. When the server has a dispatcher,
 * the CQ thread passes every event that runs a handler or callback to it
 * instead of running it; the owner must later call sg_rpc_event_run(ev)
 * exactly once on its own thread (in arrival order). Handlers and callbacks
 * then all run on that thread. Bookkeeping with no user code (accepting a
 * call, decoding its request, a finished send with nothing more to do)
 * stays on the CQ thread and costs the owner no wake-up.
 */
typedef struct sg_rpc_event sg_rpc_event;
typedef void (*sg_rpc_dispatch_fn)(sg_rpc_event *ev, void *ctx);
void sg_rpc_event_run(sg_rpc_event *ev);

typedef struct sg_rpc_server_options {
    int cq_threads;              /* completion-queue threads; default 1 */
    sg_rpc_dispatch_fn dispatch; /* NULL: run events on the CQ threads */
    void *dispatch_ctx;
    int max_message_bytes;         /* receive limit; default SG_RPC_DEFAULT_MAX_MESSAGE */
    int64_t max_connection_age_ms; /* 0: unlimited (forces re-handshakes for TLS rotation) */
    /* While its CQ threads run, blocking client calls in the process leave
     * the polling to them and sleep (see common/rpc_wait.h). */
    bool drive_client_io;
} sg_rpc_server_options;

/* Creates a server (not yet started). opts may be NULL for defaults. */
int sg_rpc_server_new(sg_rpc_server **out, const sg_rpc_server_options *opts, sg_err *err);

/*
 * Registers a method of service by name (e.g. "FetchX509SVID"). Must be
 * called before sg_rpc_server_start. Fails when the name is not in the
 * descriptor.
 */
int sg_rpc_server_add_method(sg_rpc_server *srv, const ProtobufCServiceDescriptor *service,
                             const char *method, sg_rpc_kind kind, sg_rpc_handler handler,
                             void *user, sg_err *err);

/*
 * Listens on addr ("127.0.0.1:8081", "unix:/path") with creds (borrowed;
 * NULL means insecure). Before sg_rpc_server_start.
 */
int sg_rpc_server_add_port(sg_rpc_server *srv, const char *addr, grpc_server_credentials *creds,
                           sg_err *err);

/* Starts serving and the CQ threads. */
int sg_rpc_server_start(sg_rpc_server *srv, sg_err *err);

/*
 * Hands an accepted, non-blocking socket to the server (insecure
 * transport; gRPC owns and closes fd). After sg_rpc_server_start.
 */
int sg_rpc_server_add_fd(sg_rpc_server *srv, int fd, sg_err *err);

/*
 * Stops accepting, cancels every live call (their done callbacks run with
 * cancelled = true) and waits until all calls are gone and the CQ threads
 * have exited. With a dispatcher, events keep arriving through it until
 * sg_rpc_server_shutdown_done(srv) is true; the owner keeps running them.
 * Without a dispatcher it blocks until done.
 */
void sg_rpc_server_shutdown(sg_rpc_server *srv);
bool sg_rpc_server_shutdown_done(sg_rpc_server *srv);

/* Frees a server after shutdown has completed. NULL-safe. */
void sg_rpc_server_free(sg_rpc_server *srv);

/*
 * Queues msg (borrowed: packed before return) for sending. Thread-safe.
 * Returns SG_ECANCELLED if the call is already over or finished.
 */
int sg_rpc_call_send(sg_rpc_call *call, const ProtobufCMessage *msg);

/*
 * Ends the call with a grpc status and details (borrowed), after every
 * queued message has been sent. Thread-safe; later calls are ignored.
 */
void sg_rpc_call_finish(sg_rpc_call *call, grpc_status_code status, const char *details);

/* Ends the call with the status that matches err->code and err->msg as details. */
void sg_rpc_call_finish_err(sg_rpc_call *call, const sg_err *err);

/* Sets the callback that runs once when the call is over. Set it in the handler. */
void sg_rpc_call_on_done(sg_rpc_call *call, sg_rpc_done_fn fn, void *user);

/* Reads the next message of a bidi call, decoded with desc; fn runs once. */
int sg_rpc_call_recv(sg_rpc_call *call, const ProtobufCMessageDescriptor *desc, sg_rpc_recv_fn fn,
                     void *user);

/* Peer address as gRPC reports it ("fd:12", "ipv4:127.0.0.1:40796"); owned by the call. */
const char *sg_rpc_call_peer(const sg_rpc_call *call);

/*
 * Finds request metadata key (lower case). On success *val and *len point into
 * the call's metadata (not NUL-terminated, valid for the call's lifetime).
 */
bool sg_rpc_call_metadata(const sg_rpc_call *call, const char *key, const char **val, size_t *len);

/*
 * The peer's leaf certificate (PEM) from the TLS auth context, or NULL when
 * the peer presented none or the transport is not TLS. Owned by the call.
 */
const char *sg_rpc_call_peer_cert_pem(sg_rpc_call *call);

/* Whether the call has been cancelled or finished. Thread-safe. */
bool sg_rpc_call_is_over(const sg_rpc_call *call);

/* Per-call user pointer for handlers that keep state. */
void sg_rpc_call_set_data(sg_rpc_call *call, void *data);
void *sg_rpc_call_get_data(const sg_rpc_call *call);

/* Maps SG_E* to a grpc status (the one table) and back. */
grpc_status_code sg_rpc_status_from_err(int code);
int sg_rpc_err_from_status(grpc_status_code status);

/* Static name of a grpc status ("PERMISSION_DENIED"). */
const char *sg_rpc_status_name(grpc_status_code status);

/* The same as Go's codes.Code prints it ("PermissionDenied"), for SPIRE-style
 * "rpc error: code = ... desc = ..." messages. */
const char *sg_rpc_status_go_name(grpc_status_code status);

/* ---------------------------------------------------------------- client */

/* One metadata pair for client calls. */
typedef struct sg_rpc_md {
    const char *key;
    const char *value;
} sg_rpc_md;

/* Result of a client call beyond the SG_E* code. */
typedef struct sg_rpc_status {
    grpc_status_code code;
    char details[256];
} sg_rpc_status;

/*
 * Blocking unary call on channel (borrowed). On success *resp is a new
 * message of resp_desc (free with protobuf_c_message_free_unpacked).
 * On failure returns the mapped SG_E*, err->msg is "STATUS_NAME: details"
 * and *status (may be NULL) holds the grpc status. timeout_ms <= 0: none.
 */
int sg_rpc_unary(grpc_channel *ch, const char *path, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *resp_desc, const sg_rpc_md *md, size_t nmd,
                 int64_t timeout_ms, ProtobufCMessage **resp, sg_rpc_status *status, sg_err *err);

/* A blocking client stream (server-streaming or bidi). */
typedef struct sg_rpc_stream sg_rpc_stream;

/*
 * Opens a stream call. For a server-streaming method pass the request as
 * first (it is sent and the client half-closes); for bidi pass first or
 * NULL and use sg_rpc_stream_send / sg_rpc_stream_close_send.
 */
int sg_rpc_stream_open(grpc_channel *ch, const char *path, const ProtobufCMessage *first, bool bidi,
                       const sg_rpc_md *md, size_t nmd, int64_t timeout_ms, sg_rpc_stream **out,
                       sg_err *err);

/* Sends one more message on a bidi stream. */
int sg_rpc_stream_send(sg_rpc_stream *s, const ProtobufCMessage *msg, sg_err *err);

/* Half-closes a bidi stream. */
int sg_rpc_stream_close_send(sg_rpc_stream *s, sg_err *err);

/*
 * Waits for the next message (up to the call deadline, or wait_ms when > 0:
 * then SG_ETIMEDOUT leaves the stream usable). Returns 1 with *msg set
 * (free with protobuf_c_message_free_unpacked), 0 at a clean end (status
 * OK), or a negative SG_E* with the status in *status and err.
 */
int sg_rpc_stream_next(sg_rpc_stream *s, const ProtobufCMessageDescriptor *desc, int64_t wait_ms,
                       ProtobufCMessage **msg, sg_rpc_status *status, sg_err *err);

/*
 * Cancels the call from any thread, so a thread blocked in
 * sg_rpc_stream_next returns (with SG_ECANCELLED). The owner still frees.
 */
void sg_rpc_stream_cancel(sg_rpc_stream *s);

/* Cancels if still open and frees. NULL-safe. */
void sg_rpc_stream_free(sg_rpc_stream *s);

#endif
