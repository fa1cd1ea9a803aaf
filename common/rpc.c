/*
 * gRPC core glue: a completion-queue server driven by protoc-c service
 * descriptors, and blocking client calls.
 *
 * Every operation the server starts carries an sg_rpc_event as its tag. A
 * CQ thread fills in the outcome and either runs the event at once or hands
 * it to the owner's dispatcher, so all handlers and call callbacks run in
 * sg_rpc_event_run. A new call is accepted on the CQ thread (slot re-armed,
 * close armed, request decoded) and only its handler, as the call's arrive
 * event, goes to the dispatcher. A call holds one event per kind of batch
 * it can have in flight (close, send, recv): gRPC allows one batch of each
 * kind at a time, so an embedded event is never reused before it completes.
 *
 * Call lifetime: RECV_CLOSE_ON_SERVER is armed as soon as the call arrives
 * and completes when the call is over. The done callback runs once that has
 * happened and no other batch is outstanding; the call is freed after it.
 */
#include "common/rpc.h"

#include "common/log.h"
#include "common/rpc_wait.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_posix.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SG_RPC_PENDING_PER_METHOD 16 /* requested calls kept armed per method */
#define SG_RPC_PENDING_GENERIC    4  /* requested calls for unknown methods */

/* ------------------------------------------------------------- events */

struct sg_rpc_event {
    void (*run)(sg_rpc_event *ev, bool ok);
    bool ok;
};

void sg_rpc_event_run(sg_rpc_event *ev)
{
    ev->run(ev, ev->ok);
}

#define SG_CONTAINER(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ------------------------------------------------------------- server types */

typedef struct sg_rpc_method {
    char *path;
    void *handle; /* from grpc_server_register_method */
    sg_rpc_kind kind;
    const ProtobufCMessageDescriptor *input;
    sg_rpc_handler handler;
    void *user;
} sg_rpc_method;

/* One requested call: registered (method != NULL) or generic. */
typedef struct sg_rpc_slot {
    sg_rpc_event ev;
    sg_rpc_server *srv;
    sg_rpc_method *method;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_call_details details; /* generic only */
} sg_rpc_slot;

struct sg_rpc_server {
    grpc_server *gs;
    grpc_completion_queue *cq;
    sg_rpc_server_options opts;
    sg_rpc_method *methods;
    size_t nmethods;
    sg_rpc_slot *slots;
    size_t nslots;
    pthread_t *threads;
    int nthreads; /* started */
    bool joined;
    sg_rpc_event shutdown_ev;

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;
    bool started;
    bool shutting_down;
    bool notified;  /* shutdown_and_notify completed */
    bool cq_shut;   /* grpc_completion_queue_shutdown called */
    size_t pending; /* requested calls outstanding */
    size_t live;    /* calls not yet freed */
    int exited;     /* CQ threads that have returned */
};

typedef struct sg_rpc_sendq {
    struct sg_rpc_sendq *next;
    grpc_byte_buffer *bb;
} sg_rpc_sendq;

struct sg_rpc_call {
    sg_rpc_event close_ev;
    sg_rpc_event send_ev;
    sg_rpc_event recv_ev;
    sg_rpc_event arrive_ev; /* runs the handler */
    sg_rpc_method *method;  /* the handler's method, until it has run */
    ProtobufCMessage *req;  /* decoded first request, until the handler has run */
    sg_rpc_server *srv;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    char *peer;
    void *data;
    sg_rpc_done_fn done_fn;
    void *done_user;

    pthread_mutex_t mu;  /* guards everything below */
    int close_cancelled; /* written by gRPC */
    bool closed;         /* RECV_CLOSE_ON_SERVER completed */
    bool failed;         /* a batch failed: the call is dead */
    bool md_sent;
    bool send_busy;
    bool finish_req;
    bool status_started;
    bool done_fired;
    int refs; /* batches in flight other than the close */
    sg_rpc_sendq *qhead, *qtail;
    grpc_byte_buffer *sending;
    grpc_status_code status;
    grpc_slice status_details;
    bool has_details;
    /* bidi receive */
    grpc_byte_buffer *recv_bb;
    const ProtobufCMessageDescriptor *recv_desc;
    sg_rpc_recv_fn recv_fn;
    void *recv_user;
    bool recv_busy;
    /* peer certificate, read lazily */
    bool cert_loaded;
    char *cert_pem;
    /* generic (unknown method) call */
    bool generic;
};

/* ------------------------------------------------------------- status table */

grpc_status_code sg_rpc_status_from_err(int code)
{
    switch (code) {
    case SG_OK:
        return GRPC_STATUS_OK;
    case SG_EINVAL:
        return GRPC_STATUS_INVALID_ARGUMENT;
    case SG_EPERM:
        return GRPC_STATUS_PERMISSION_DENIED;
    case SG_ENOENT:
        return GRPC_STATUS_NOT_FOUND;
    case SG_EEXIST:
        return GRPC_STATUS_ALREADY_EXISTS;
    /* An untrusted certificate is a failure to authenticate the peer, the
     * same as an expired one or none at all. */
    case SG_EEXPIRED:
    case SG_EUNAUTH:
    case SG_EUNTRUSTED:
        return GRPC_STATUS_UNAUTHENTICATED;
    case SG_EUNAVAIL:
        return GRPC_STATUS_UNAVAILABLE;
    case SG_ETIMEDOUT:
        return GRPC_STATUS_DEADLINE_EXCEEDED;
    case SG_ETOOBIG:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case SG_EUNSUPPORTED:
        return GRPC_STATUS_UNIMPLEMENTED;
    case SG_ECANCELLED:
        return GRPC_STATUS_CANCELLED;
    default:
        return GRPC_STATUS_INTERNAL;
    }
}

int sg_rpc_err_from_status(grpc_status_code status)
{
    switch (status) {
    case GRPC_STATUS_OK:
        return SG_OK;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_OUT_OF_RANGE:
    case GRPC_STATUS_FAILED_PRECONDITION:
        return SG_EINVAL;
    case GRPC_STATUS_PERMISSION_DENIED:
        return SG_EPERM;
    case GRPC_STATUS_NOT_FOUND:
        return SG_ENOENT;
    case GRPC_STATUS_ALREADY_EXISTS:
        return SG_EEXIST;
    case GRPC_STATUS_UNAUTHENTICATED:
        return SG_EUNAUTH;
    case GRPC_STATUS_UNAVAILABLE:
        return SG_EUNAVAIL;
    case GRPC_STATUS_DEADLINE_EXCEEDED:
        return SG_ETIMEDOUT;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
        return SG_ETOOBIG;
    case GRPC_STATUS_UNIMPLEMENTED:
        return SG_EUNSUPPORTED;
    case GRPC_STATUS_CANCELLED:
        return SG_ECANCELLED;
    default:
        return SG_EPROTO;
    }
}

const char *sg_rpc_status_name(grpc_status_code status)
{
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if ((int)status >= 0 && (size_t)status < sizeof names / sizeof names[0])
        return names[status];
    return "UNKNOWN";
}

/* ------------------------------------------------------------- messages */

/* Packs msg into a new byte buffer, or NULL when out of memory. */
static grpc_byte_buffer *pack_message(const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice slice = grpc_slice_malloc(len);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return bb;
}

/* Decodes bb with desc; NULL when the bytes are not a valid message. */
static ProtobufCMessage *unpack_message(const ProtobufCMessageDescriptor *desc,
                                        grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader rd;
    if (!grpc_byte_buffer_reader_init(&rd, bb))
        return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    ProtobufCMessage *msg =
        protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    return msg;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p != NULL)
        memcpy(p, s, n);
    return p;
}

/* ------------------------------------------------------------- server core */

/* Shuts the CQ down once the server is stopped and nothing is left. mu held. */
static void maybe_finalize_locked(sg_rpc_server *srv)
{
    if (srv->notified && srv->pending == 0 && srv->live == 0 && !srv->cq_shut) {
        srv->cq_shut = true;
        grpc_completion_queue_shutdown(srv->cq);
    }
}

static void call_send_run(sg_rpc_event *ev, bool ok);
static bool call_send_settle(sg_rpc_event *ev, bool ok);
static void slot_run(sg_rpc_event *ev, bool ok);

static void *cq_thread(void *arg)
{
    sg_rpc_server *srv = arg;
    for (;;) {
        grpc_event e =
            grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (e.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (e.type != GRPC_OP_COMPLETE)
            continue;
        sg_rpc_event *ev = e.tag;
        ev->ok = e.success != 0;
        /* A new call is set up here (request re-armed, close armed, request
         * decoded) and only its handler goes to the owner. */
        if (srv->opts.dispatch == NULL || ev->run == slot_run)
            sg_rpc_event_run(ev);
        else if (ev->run != call_send_run || !call_send_settle(ev, ev->ok))
            srv->opts.dispatch(ev, srv->opts.dispatch_ctx);
    }
    if (srv->opts.drive_client_io)
        sg_rpc_wait_drivers_add(-1); /* counted when the thread was started */
    pthread_mutex_lock(&srv->mu);
    srv->exited++;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
    return NULL;
}

/* Asks gRPC for the next call on slot. */
static void slot_arm(sg_rpc_slot *slot)
{
    sg_rpc_server *srv = slot->srv;
    grpc_call_error rc;
    slot->call = NULL;
    slot->payload = NULL;
    grpc_metadata_array_init(&slot->md);
    slot->ev.run = slot_run;
    if (slot->method != NULL) {
        rc = grpc_server_request_registered_call(
            srv->gs, slot->method->handle, &slot->call, &slot->deadline, &slot->md,
            slot->method->kind == SG_RPC_BIDI_STREAM ? NULL : &slot->payload, srv->cq, srv->cq,
            &slot->ev);
    } else {
        grpc_call_details_init(&slot->details);
        rc = grpc_server_request_call(srv->gs, &slot->call, &slot->details, &slot->md, srv->cq,
                                      srv->cq, &slot->ev);
    }
    if (rc != GRPC_CALL_OK) {
        sg_log_error("rpc: requesting a call failed (grpc_call_error %d)", (int)rc);
        grpc_metadata_array_destroy(&slot->md);
        if (slot->method == NULL)
            grpc_call_details_destroy(&slot->details);
        pthread_mutex_lock(&srv->mu);
        srv->pending--;
        maybe_finalize_locked(srv);
        pthread_mutex_unlock(&srv->mu);
    }
}

static void call_close_run(sg_rpc_event *ev, bool ok);
static void call_recv_run(sg_rpc_event *ev, bool ok);

static void call_free(sg_rpc_call *c)
{
    sg_rpc_server *srv = c->srv;
    while (c->qhead != NULL) {
        sg_rpc_sendq *q = c->qhead;
        c->qhead = q->next;
        grpc_byte_buffer_destroy(q->bb);
        free(q);
    }
    if (c->sending != NULL)
        grpc_byte_buffer_destroy(c->sending);
    if (c->recv_bb != NULL)
        grpc_byte_buffer_destroy(c->recv_bb);
    if (c->req != NULL)
        protobuf_c_message_free_unpacked(c->req, NULL);
    if (c->has_details)
        grpc_slice_unref(c->status_details);
    grpc_metadata_array_destroy(&c->md);
    if (c->call != NULL)
        grpc_call_unref(c->call);
    free(c->peer);
    free(c->cert_pem);
    pthread_mutex_destroy(&c->mu);
    free(c);

    pthread_mutex_lock(&srv->mu);
    srv->live--;
    maybe_finalize_locked(srv);
    pthread_mutex_unlock(&srv->mu);
}

/*
 * Runs the done callback and frees the call when it is over and nothing
 * is in flight. Called with c->mu held; releases it.
 */
static void call_check_done_unlock(sg_rpc_call *c)
{
    if (!c->closed || c->refs > 0 || c->done_fired) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    c->done_fired = true;
    bool cancelled = c->close_cancelled != 0 || (c->failed && !c->status_started);
    pthread_mutex_unlock(&c->mu);
    if (c->done_fn != NULL)
        c->done_fn(c, cancelled, c->done_user);
    call_free(c);
}

/* Starts the next send batch if none is in flight. c->mu held. */
static void call_pump_locked(sg_rpc_call *c)
{
    grpc_op ops[3];
    size_t n = 0;

    if (c->send_busy || c->status_started || c->closed || c->failed)
        return;
    if (c->qhead == NULL && !c->finish_req)
        return;
    memset(ops, 0, sizeof ops);
    if (!c->md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
    }
    if (c->qhead != NULL) {
        sg_rpc_sendq *q = c->qhead;
        c->qhead = q->next;
        if (c->qhead == NULL)
            c->qtail = NULL;
        c->sending = q->bb;
        free(q);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->sending;
        n++;
    }
    if (c->finish_req && c->qhead == NULL) {
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = c->status;
        ops[n].data.send_status_from_server.status_details =
            c->has_details ? &c->status_details : NULL;
        n++;
        c->status_started = true;
    }
    c->send_busy = true;
    c->refs++;
    c->send_ev.run = call_send_run;
    grpc_call_error rc = grpc_call_start_batch(c->call, ops, n, &c->send_ev, NULL);
    if (rc != GRPC_CALL_OK) {
        sg_log_error("rpc: starting a send batch failed (grpc_call_error %d)", (int)rc);
        c->send_busy = false;
        c->refs--;
        c->failed = true;
        grpc_call_cancel(c->call, NULL);
        return;
    }
    c->md_sent = true;
}

static void call_send_run(sg_rpc_event *ev, bool ok)
{
    sg_rpc_call *c = SG_CONTAINER(ev, sg_rpc_call, send_ev);
    pthread_mutex_lock(&c->mu);
    c->send_busy = false;
    c->refs--;
    if (c->sending != NULL) {
        grpc_byte_buffer_destroy(c->sending);
        c->sending = NULL;
    }
    if (!ok)
        c->failed = true;
    else
        call_pump_locked(c);
    call_check_done_unlock(c);
}

/*
 * On a CQ thread of a server with a dispatcher: settles a completed send
 * batch there when it leaves the owner nothing to do, which saves waking
 * the owner once per message. That is the case when the batch succeeded,
 * the call is not over and no further batch is due (queue empty and no
 * status requested, or the status already went out). Otherwise returns
 * false and the event goes to the owner, which starts the next batch or
 * runs the done callback.
 */
static bool call_send_settle(sg_rpc_event *ev, bool ok)
{
    sg_rpc_call *c = SG_CONTAINER(ev, sg_rpc_call, send_ev);
    if (!ok)
        return false;
    pthread_mutex_lock(&c->mu);
    bool idle =
        !c->closed && !c->failed && (c->status_started || (c->qhead == NULL && !c->finish_req));
    if (!idle) {
        pthread_mutex_unlock(&c->mu);
        return false;
    }
    /* The close has not completed, so this cannot be the last reference. */
    c->send_busy = false;
    c->refs--;
    grpc_byte_buffer *done = c->sending;
    c->sending = NULL;
    pthread_mutex_unlock(&c->mu);
    if (done != NULL)
        grpc_byte_buffer_destroy(done);
    return true;
}

static void call_close_run(sg_rpc_event *ev, bool ok)
{
    sg_rpc_call *c = SG_CONTAINER(ev, sg_rpc_call, close_ev);
    (void)ok;
    pthread_mutex_lock(&c->mu);
    c->closed = true;
    call_check_done_unlock(c);
}

/* Creates the call state for an arrived call; takes raw and md on success. */
static sg_rpc_call *call_new(sg_rpc_server *srv, grpc_call *raw, const grpc_metadata_array *md,
                             gpr_timespec deadline, bool generic)
{
    sg_rpc_call *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    char *peer = grpc_call_get_peer(raw);
    c->peer = dup_str(peer != NULL ? peer : "");
    gpr_free(peer);
    if (c->peer == NULL) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    c->srv = srv;
    c->call = raw;
    c->deadline = deadline;
    c->md = *md;
    c->generic = generic;
    c->refs = 1; /* held while the arrival is being handled */
    return c;
}

/* Arms RECV_CLOSE_ON_SERVER; false when gRPC refused (the call is then dead). */
static bool call_arm_close(sg_rpc_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    c->close_ev.run = call_close_run;
    return grpc_call_start_batch(c->call, &op, 1, &c->close_ev, NULL) == GRPC_CALL_OK;
}

/* Runs the handler of an arrived call (on the owner's thread with a dispatcher). */
static void call_arrive_run(sg_rpc_event *ev, bool ok)
{
    sg_rpc_call *c = SG_CONTAINER(ev, sg_rpc_call, arrive_ev);
    sg_rpc_server *srv = c->srv;
    sg_rpc_method *m = c->method;
    ProtobufCMessage *req = c->req;
    (void)ok;
    c->method = NULL;
    c->req = NULL;
    pthread_mutex_lock(&srv->mu);
    bool stopping = srv->shutting_down;
    pthread_mutex_unlock(&srv->mu);
    if (stopping) {
        /* The server began to stop after the call was accepted: as for a
         * call that arrives while stopping, no handler runs. */
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_UNAVAILABLE, "server shutting down",
                                     NULL);
    } else {
        m->handler(c, req, m->user);
    }
    if (req != NULL)
        protobuf_c_message_free_unpacked(req, NULL);
    pthread_mutex_lock(&c->mu);
    c->refs--; /* the arrival reference */
    call_check_done_unlock(c);
}

/*
 * Decodes the request of an arrived call (takes payload). True when the
 * handler is due: then c->method and c->req are set. Otherwise the call
 * has been answered here (unknown method, missing or malformed request).
 */
static bool call_prepare(sg_rpc_call *c, sg_rpc_method *m, const char *unknown,
                         grpc_byte_buffer *payload)
{
    char details[300];
    bool run = false;

    if (m == NULL) {
        snprintf(details, sizeof details, "unknown method %.256s", unknown ? unknown : "?");
        sg_rpc_call_finish(c, GRPC_STATUS_UNIMPLEMENTED, details);
    } else if (m->kind == SG_RPC_BIDI_STREAM) {
        run = true;
    } else if (payload == NULL) {
        snprintf(details, sizeof details, "missing %s request", m->input->name);
        sg_rpc_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, details);
    } else {
        c->req = unpack_message(m->input, payload);
        if (c->req == NULL) {
            snprintf(details, sizeof details, "malformed %s request", m->input->name);
            sg_rpc_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, details);
        } else {
            run = true;
        }
    }
    if (payload != NULL)
        grpc_byte_buffer_destroy(payload);
    if (run)
        c->method = m;
    return run;
}

static void slot_run(sg_rpc_event *ev, bool ok)
{
    sg_rpc_slot *slot = SG_CONTAINER(ev, sg_rpc_slot, ev);
    sg_rpc_server *srv = slot->srv;
    sg_rpc_method *m = slot->method;

    if (!ok) {
        /* The server is shutting down: this request is gone. */
        if (slot->call != NULL)
            grpc_call_unref(slot->call);
        if (slot->payload != NULL)
            grpc_byte_buffer_destroy(slot->payload);
        grpc_metadata_array_destroy(&slot->md);
        if (m == NULL)
            grpc_call_details_destroy(&slot->details);
        pthread_mutex_lock(&srv->mu);
        srv->pending--;
        maybe_finalize_locked(srv);
        pthread_mutex_unlock(&srv->mu);
        return;
    }

    grpc_byte_buffer *payload = slot->payload;
    char *unknown = NULL;
    if (m == NULL) {
        size_t n = GRPC_SLICE_LENGTH(slot->details.method);
        unknown = malloc(n + 1);
        if (unknown != NULL) {
            memcpy(unknown, GRPC_SLICE_START_PTR(slot->details.method), n);
            unknown[n] = '\0';
        }
        grpc_call_details_destroy(&slot->details);
    }
    grpc_call *raw = slot->call;
    grpc_metadata_array md = slot->md;
    sg_rpc_call *c = call_new(srv, raw, &md, slot->deadline, m == NULL);

    /* Re-arm the slot at once so the method keeps accepting calls. */
    pthread_mutex_lock(&srv->mu);
    bool rearm = !srv->shutting_down;
    if (!rearm)
        srv->pending--;
    if (c != NULL)
        srv->live++;
    pthread_mutex_unlock(&srv->mu);
    if (rearm)
        slot_arm(slot);

    if (c == NULL) {
        sg_log_error("rpc: out of memory accepting a call");
        grpc_call_cancel_with_status(raw, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        grpc_call_unref(raw);
        if (payload != NULL)
            grpc_byte_buffer_destroy(payload);
        free(unknown);
        grpc_metadata_array_destroy(&md);
        return;
    }
    if (!call_arm_close(c)) {
        grpc_call_cancel(c->call, NULL);
        pthread_mutex_lock(&c->mu);
        c->closed = true;
        c->failed = true;
        pthread_mutex_unlock(&c->mu);
    } else if (!rearm) {
        /* Arrived while stopping: refuse it without running the handler. */
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_UNAVAILABLE, "server shutting down",
                                     NULL);
    } else {
        bool run = call_prepare(c, m, unknown, payload);
        payload = NULL;
        free(unknown);
        unknown = NULL;
        if (run) {
            /* The arrival reference passes to the handler's event. */
            c->arrive_ev.run = call_arrive_run;
            c->arrive_ev.ok = true;
            if (srv->opts.dispatch != NULL)
                srv->opts.dispatch(&c->arrive_ev, srv->opts.dispatch_ctx);
            else
                sg_rpc_event_run(&c->arrive_ev);
            return;
        }
    }
    if (payload != NULL)
        grpc_byte_buffer_destroy(payload);
    free(unknown);
    pthread_mutex_lock(&c->mu);
    c->refs--; /* the arrival reference */
    call_check_done_unlock(c);
}

static void shutdown_run(sg_rpc_event *ev, bool ok)
{
    sg_rpc_server *srv = SG_CONTAINER(ev, sg_rpc_server, shutdown_ev);
    (void)ok;
    pthread_mutex_lock(&srv->mu);
    srv->notified = true;
    maybe_finalize_locked(srv);
    pthread_mutex_unlock(&srv->mu);
}

/* ------------------------------------------------------------- server API */

int sg_rpc_server_new(sg_rpc_server **out, const sg_rpc_server_options *opts, sg_err *err)
{
    sg_rpc_server *srv = calloc(1, sizeof *srv);
    if (srv == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory creating the rpc server");
    if (opts != NULL)
        srv->opts = *opts;
    if (srv->opts.cq_threads <= 0)
        srv->opts.cq_threads = 1;
    if (srv->opts.cq_threads > 64) {
        free(srv);
        return sg_err_set(err, SG_EINVAL, "cq_threads %d is out of range (1-64)", opts->cq_threads);
    }
    if (srv->opts.max_message_bytes <= 0)
        srv->opts.max_message_bytes = SG_RPC_DEFAULT_MAX_MESSAGE;
    if (srv->opts.max_connection_age_ms < 0) {
        free(srv);
        return sg_err_set(err, SG_EINVAL, "max_connection_age_ms %lld is negative",
                          (long long)opts->max_connection_age_ms);
    }

    grpc_arg args[4];
    size_t nargs = 0;
    memset(args, 0, sizeof args);
    args[nargs].type = GRPC_ARG_INTEGER;
    args[nargs].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[nargs].value.integer = srv->opts.max_message_bytes;
    nargs++;
    /* Without this gRPC binds with SO_REUSEPORT and a second daemon on the
     * same port would silently share it. */
    args[nargs].type = GRPC_ARG_INTEGER;
    args[nargs].key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
    args[nargs].value.integer = 0;
    nargs++;
    if (srv->opts.max_connection_age_ms > 0) {
        int64_t age = srv->opts.max_connection_age_ms;
        args[nargs].type = GRPC_ARG_INTEGER;
        args[nargs].key = (char *)GRPC_ARG_MAX_CONNECTION_AGE_MS;
        args[nargs].value.integer = age > INT32_MAX ? INT32_MAX : (int)age;
        nargs++;
        args[nargs].type = GRPC_ARG_INTEGER;
        args[nargs].key = (char *)GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS;
        args[nargs].value.integer = age > INT32_MAX ? INT32_MAX : (int)age;
        nargs++;
    }
    grpc_channel_args ca = {.num_args = nargs, .args = args};
    srv->gs = grpc_server_create(&ca, NULL);
    srv->cq = grpc_completion_queue_create_for_next(NULL);
    if (srv->gs == NULL || srv->cq == NULL) {
        if (srv->gs != NULL)
            grpc_server_destroy(srv->gs);
        if (srv->cq != NULL)
            grpc_completion_queue_destroy(srv->cq);
        free(srv);
        return sg_err_set(err, SG_ENOMEM, "creating the grpc server failed");
    }
    grpc_server_register_completion_queue(srv->gs, srv->cq, NULL);
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->cv, NULL);
    srv->shutdown_ev.run = shutdown_run;
    *out = srv;
    return 0;
}

int sg_rpc_server_add_method(sg_rpc_server *srv, const ProtobufCServiceDescriptor *service,
                             const char *method, sg_rpc_kind kind, sg_rpc_handler handler,
                             void *user, sg_err *err)
{
    const ProtobufCMethodDescriptor *md = NULL;

    if (srv->started)
        return sg_err_set(err, SG_EINVAL, "method %s added after the server started", method);
    if (handler == NULL)
        return sg_err_set(err, SG_EINVAL, "method %s has no handler", method);
    if (kind != SG_RPC_UNARY && kind != SG_RPC_SERVER_STREAM && kind != SG_RPC_BIDI_STREAM)
        return sg_err_set(err, SG_EINVAL, "method %s has an unknown kind %d", method, (int)kind);
    for (unsigned i = 0; i < service->n_methods; i++) {
        if (strcmp(service->methods[i].name, method) == 0) {
            md = &service->methods[i];
            break;
        }
    }
    if (md == NULL)
        return sg_err_set(err, SG_ENOENT, "service %s has no method \"%.64s\"", service->name,
                          method);

    size_t plen = strlen(service->name) + strlen(method) + 3;
    char *path = malloc(plen);
    if (path == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory adding method %s", method);
    snprintf(path, plen, "/%s/%s", service->name, method);
    for (size_t i = 0; i < srv->nmethods; i++) {
        if (strcmp(srv->methods[i].path, path) == 0) {
            sg_err_set(err, SG_EEXIST, "method %s is already registered", path);
            free(path);
            return SG_EEXIST;
        }
    }
    sg_rpc_method *ms = realloc(srv->methods, (srv->nmethods + 1) * sizeof *ms);
    if (ms == NULL) {
        free(path);
        return sg_err_set(err, SG_ENOMEM, "out of memory adding method %s", method);
    }
    srv->methods = ms;
    void *handle = grpc_server_register_method(srv->gs, path, NULL,
                                               kind == SG_RPC_BIDI_STREAM
                                                   ? GRPC_SRM_PAYLOAD_NONE
                                                   : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
                                               0);
    if (handle == NULL) {
        sg_err_set(err, SG_EINVAL, "grpc refused to register method %s", path);
        free(path);
        return SG_EINVAL;
    }
    sg_rpc_method *m = &srv->methods[srv->nmethods++];
    m->path = path;
    m->handle = handle;
    m->kind = kind;
    m->input = md->input;
    m->handler = handler;
    m->user = user;
    return 0;
}

int sg_rpc_server_add_port(sg_rpc_server *srv, const char *addr, grpc_server_credentials *creds,
                           sg_err *err)
{
    if (srv->started)
        return sg_err_set(err, SG_EINVAL, "port %.128s added after the server started", addr);
    grpc_server_credentials *own = NULL;
    if (creds == NULL)
        creds = own = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(srv->gs, addr, creds);
    if (own != NULL)
        grpc_server_credentials_release(own);
    if (port == 0)
        return sg_err_set(err, SG_EUNAVAIL, "cannot listen on \"%.128s\"", addr);
    return 0;
}

int sg_rpc_server_start(sg_rpc_server *srv, sg_err *err)
{
    if (srv->started)
        return sg_err_set(err, SG_EINVAL, "rpc server already started");
    size_t nslots = srv->nmethods * SG_RPC_PENDING_PER_METHOD + SG_RPC_PENDING_GENERIC;
    srv->slots = calloc(nslots, sizeof *srv->slots);
    srv->threads = calloc((size_t)srv->opts.cq_threads, sizeof *srv->threads);
    if (srv->slots == NULL || srv->threads == NULL) {
        free(srv->slots);
        free(srv->threads);
        srv->slots = NULL;
        srv->threads = NULL;
        return sg_err_set(err, SG_ENOMEM, "out of memory starting the rpc server");
    }
    srv->nslots = nslots;
    grpc_server_start(srv->gs);
    srv->started = true;

    size_t k = 0;
    for (size_t i = 0; i < srv->nmethods; i++)
        for (int j = 0; j < SG_RPC_PENDING_PER_METHOD; j++)
            srv->slots[k++].method = &srv->methods[i];
    pthread_mutex_lock(&srv->mu);
    srv->pending = nslots;
    pthread_mutex_unlock(&srv->mu);
    for (size_t i = 0; i < nslots; i++) {
        srv->slots[i].srv = srv;
        slot_arm(&srv->slots[i]);
    }
    for (int i = 0; i < srv->opts.cq_threads; i++) {
        if (pthread_create(&srv->threads[i], NULL, cq_thread, srv) != 0) {
            /* Serve with the threads we have; none at all is fatal. */
            if (i == 0) {
                sg_log_error("rpc: cannot start any completion-queue thread");
                abort();
            }
            sg_log_warn("rpc: started only %d of %d completion-queue threads", i,
                        srv->opts.cq_threads);
            break;
        }
        srv->nthreads++;
        if (srv->opts.drive_client_io)
            sg_rpc_wait_drivers_add(1);
    }
    return 0;
}

int sg_rpc_server_add_fd(sg_rpc_server *srv, int fd, sg_err *err)
{
    if (!srv->started)
        return sg_err_set(err, SG_EINVAL, "fd %d handed over before the server started", fd);
    if (fd < 0)
        return sg_err_set(err, SG_EINVAL, "invalid fd %d", fd);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    grpc_server_add_channel_from_fd(srv->gs, fd, creds);
    grpc_server_credentials_release(creds);
    return 0;
}

void sg_rpc_server_shutdown(sg_rpc_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    if (srv->shutting_down) {
        pthread_mutex_unlock(&srv->mu);
    } else {
        srv->shutting_down = true;
        bool started = srv->started;
        if (!started) {
            srv->notified = true;
            maybe_finalize_locked(srv);
        }
        pthread_mutex_unlock(&srv->mu);
        if (started) {
            grpc_server_shutdown_and_notify(srv->gs, srv->cq, &srv->shutdown_ev);
            grpc_server_cancel_all_calls(srv->gs);
        }
    }
    if (srv->opts.dispatch != NULL)
        return;
    pthread_mutex_lock(&srv->mu);
    while (srv->exited < srv->nthreads)
        pthread_cond_wait(&srv->cv, &srv->mu);
    pthread_mutex_unlock(&srv->mu);
    if (!srv->joined) {
        for (int i = 0; i < srv->nthreads; i++)
            pthread_join(srv->threads[i], NULL);
        srv->joined = true;
    }
}

bool sg_rpc_server_shutdown_done(sg_rpc_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    bool done = srv->shutting_down && srv->cq_shut && srv->exited >= srv->nthreads;
    pthread_mutex_unlock(&srv->mu);
    return done;
}

void sg_rpc_server_free(sg_rpc_server *srv)
{
    if (srv == NULL)
        return;
    if (!srv->shutting_down && srv->opts.dispatch == NULL)
        sg_rpc_server_shutdown(srv);
    if (!srv->joined) {
        for (int i = 0; i < srv->nthreads; i++)
            pthread_join(srv->threads[i], NULL);
        srv->joined = true;
    }
    grpc_server_destroy(srv->gs);
    if (!srv->cq_shut) {
        /* Never started: nothing can be on the queue. */
        grpc_completion_queue_shutdown(srv->cq);
        grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    }
    grpc_completion_queue_destroy(srv->cq);
    for (size_t i = 0; i < srv->nmethods; i++)
        free(srv->methods[i].path);
    free(srv->methods);
    free(srv->slots);
    free(srv->threads);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cv);
    free(srv);
}

/* ------------------------------------------------------------- call API */

int sg_rpc_call_send(sg_rpc_call *call, const ProtobufCMessage *msg)
{
    sg_rpc_sendq *q = malloc(sizeof *q);
    if (q == NULL)
        return SG_ENOMEM;
    q->next = NULL;
    q->bb = pack_message(msg);
    pthread_mutex_lock(&call->mu);
    if (call->closed || call->failed || call->finish_req) {
        pthread_mutex_unlock(&call->mu);
        grpc_byte_buffer_destroy(q->bb);
        free(q);
        return SG_ECANCELLED;
    }
    if (call->qtail != NULL)
        call->qtail->next = q;
    else
        call->qhead = q;
    call->qtail = q;
    call_pump_locked(call);
    pthread_mutex_unlock(&call->mu);
    return 0;
}

void sg_rpc_call_finish(sg_rpc_call *call, grpc_status_code status, const char *details)
{
    pthread_mutex_lock(&call->mu);
    if (call->finish_req || call->closed || call->failed) {
        pthread_mutex_unlock(&call->mu);
        return;
    }
    call->finish_req = true;
    call->status = status;
    if (details != NULL && details[0] != '\0') {
        call->status_details = grpc_slice_from_copied_string(details);
        call->has_details = true;
    }
    call_pump_locked(call);
    pthread_mutex_unlock(&call->mu);
}

void sg_rpc_call_finish_err(sg_rpc_call *call, const sg_err *err)
{
    int code = err != NULL && err->code != 0 ? err->code : SG_EIO;
    const char *msg = err != NULL && err->msg[0] != '\0' ? err->msg : sg_strerror(code);
    sg_rpc_call_finish(call, sg_rpc_status_from_err(code), msg);
}

void sg_rpc_call_on_done(sg_rpc_call *call, sg_rpc_done_fn fn, void *user)
{
    pthread_mutex_lock(&call->mu);
    call->done_fn = fn;
    call->done_user = user;
    pthread_mutex_unlock(&call->mu);
}

static void call_recv_run(sg_rpc_event *ev, bool ok)
{
    sg_rpc_call *c = SG_CONTAINER(ev, sg_rpc_call, recv_ev);
    ProtobufCMessage *msg = NULL;

    pthread_mutex_lock(&c->mu);
    grpc_byte_buffer *bb = c->recv_bb;
    c->recv_bb = NULL;
    c->recv_busy = false;
    sg_rpc_recv_fn fn = c->recv_fn;
    void *user = c->recv_user;
    const ProtobufCMessageDescriptor *desc = c->recv_desc;
    pthread_mutex_unlock(&c->mu);

    if (ok && bb != NULL) {
        msg = unpack_message(desc, bb);
        if (msg == NULL) {
            char details[300];
            snprintf(details, sizeof details, "malformed %s request", desc->name);
            sg_rpc_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, details);
        }
    }
    if (bb != NULL)
        grpc_byte_buffer_destroy(bb);
    fn(c, msg, user); /* the recv reference keeps c alive here */
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
    pthread_mutex_lock(&c->mu);
    c->refs--;
    call_check_done_unlock(c);
}

int sg_rpc_call_recv(sg_rpc_call *call, const ProtobufCMessageDescriptor *desc, sg_rpc_recv_fn fn,
                     void *user)
{
    grpc_op op;

    if (desc == NULL || fn == NULL)
        return SG_EINVAL;
    pthread_mutex_lock(&call->mu);
    if (call->recv_busy) {
        pthread_mutex_unlock(&call->mu);
        return SG_EINVAL;
    }
    if (call->closed || call->failed) {
        pthread_mutex_unlock(&call->mu);
        return SG_ECANCELLED;
    }
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &call->recv_bb;
    call->recv_desc = desc;
    call->recv_fn = fn;
    call->recv_user = user;
    call->recv_busy = true;
    call->refs++;
    call->recv_ev.run = call_recv_run;
    if (grpc_call_start_batch(call->call, &op, 1, &call->recv_ev, NULL) != GRPC_CALL_OK) {
        call->recv_busy = false;
        call->refs--;
        pthread_mutex_unlock(&call->mu);
        return SG_ECANCELLED;
    }
    pthread_mutex_unlock(&call->mu);
    return 0;
}

const char *sg_rpc_call_peer(const sg_rpc_call *call)
{
    return call->peer;
}

bool sg_rpc_call_metadata(const sg_rpc_call *call, const char *key, const char **val, size_t *len)
{
    size_t klen = strlen(key);
    for (size_t i = 0; i < call->md.count; i++) {
        const grpc_metadata *m = &call->md.metadata[i];
        if (GRPC_SLICE_LENGTH(m->key) == klen &&
            memcmp(GRPC_SLICE_START_PTR(m->key), key, klen) == 0) {
            *val = (const char *)GRPC_SLICE_START_PTR(m->value);
            *len = GRPC_SLICE_LENGTH(m->value);
            return true;
        }
    }
    return false;
}

const char *sg_rpc_call_peer_cert_pem(sg_rpc_call *call)
{
    pthread_mutex_lock(&call->mu);
    if (!call->cert_loaded) {
        call->cert_loaded = true;
        grpc_auth_context *ctx = grpc_call_auth_context(call->call);
        if (ctx != NULL) {
            grpc_auth_property_iterator it =
                grpc_auth_context_find_properties_by_name(ctx, GRPC_X509_PEM_CERT_PROPERTY_NAME);
            const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);
            if (p != NULL && p->value != NULL && p->value_length > 0) {
                call->cert_pem = malloc(p->value_length + 1);
                if (call->cert_pem != NULL) {
                    memcpy(call->cert_pem, p->value, p->value_length);
                    call->cert_pem[p->value_length] = '\0';
                }
            }
            grpc_auth_context_release(ctx);
        }
    }
    const char *pem = call->cert_pem;
    pthread_mutex_unlock(&call->mu);
    return pem;
}

bool sg_rpc_call_is_over(const sg_rpc_call *call)
{
    sg_rpc_call *c = (sg_rpc_call *)(uintptr_t)call; /* the mutex is not part of the value */
    pthread_mutex_lock(&c->mu);
    bool over = c->closed || c->failed || c->finish_req;
    pthread_mutex_unlock(&c->mu);
    return over;
}

void sg_rpc_call_set_data(sg_rpc_call *call, void *data)
{
    call->data = data;
}

void *sg_rpc_call_get_data(const sg_rpc_call *call)
{
    return call->data;
}

/* ------------------------------------------------------------- client */

static gpr_timespec deadline_after(int64_t ms)
{
    if (ms <= 0)
        return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* Builds the metadata array for a client call; keys and values are copied. */
static grpc_metadata *make_md(const sg_rpc_md *md, size_t nmd)
{
    if (nmd == 0)
        return NULL;
    grpc_metadata *out = calloc(nmd, sizeof *out);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < nmd; i++) {
        out[i].key = grpc_slice_from_copied_string(md[i].key);
        out[i].value = grpc_slice_from_copied_string(md[i].value);
    }
    return out;
}

static void free_md(grpc_metadata *md, size_t nmd)
{
    if (md == NULL)
        return;
    for (size_t i = 0; i < nmd; i++) {
        grpc_slice_unref(md[i].key);
        grpc_slice_unref(md[i].value);
    }
    free(md);
}

/* Records a non-OK status in *status and err; returns the mapped SG_E*. */
static int status_error(grpc_status_code code, grpc_slice details, sg_rpc_status *status,
                        sg_err *err)
{
    char buf[sizeof status->details];
    size_t n = GRPC_SLICE_LENGTH(details);
    if (n >= sizeof buf)
        n = sizeof buf - 1;
    memcpy(buf, GRPC_SLICE_START_PTR(details), n);
    buf[n] = '\0';
    if (status != NULL) {
        status->code = code;
        memcpy(status->details, buf, n + 1);
    }
    int rc = sg_rpc_err_from_status(code);
    if (rc == 0)
        rc = SG_EPROTO;
    return sg_err_set(err, rc, "%s: %s", sg_rpc_status_name(code), buf);
}

static void set_ok_status(sg_rpc_status *status)
{
    if (status != NULL) {
        status->code = GRPC_STATUS_OK;
        status->details[0] = '\0';
    }
}

/* The monotonic ms wait_ms from now, or -1 (no limit) for wait_ms <= 0. */
static int64_t until_after(int64_t wait_ms)
{
    return wait_ms <= 0 ? -1 : sg_rpc_wait_now_ms() + wait_ms;
}

int sg_rpc_unary(grpc_channel *ch, const char *path, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *resp_desc, const sg_rpc_md *md, size_t nmd,
                 int64_t timeout_ms, ProtobufCMessage **resp, sg_rpc_status *status, sg_err *err)
{
    grpc_metadata *gmd = make_md(md, nmd);
    if (nmd > 0 && gmd == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory calling %s", path);
    sg_rpc_wait wait;
    sg_rpc_wait_init(&wait);
    grpc_slice method = grpc_slice_from_copied_string(path);
    grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, wait.cq, method,
                                               NULL, deadline_after(timeout_ms), NULL);
    grpc_slice_unref(method);
    if (call == NULL) {
        free_md(gmd, nmd);
        sg_rpc_wait_destroy(&wait);
        return sg_err_set(err, SG_EINVAL, "cannot create a call to %s", path);
    }

    grpc_byte_buffer *send_bb = pack_message(req);
    grpc_byte_buffer *recv_bb = NULL;
    grpc_metadata_array init_md, trail_md;
    grpc_metadata_array_init(&init_md);
    grpc_metadata_array_init(&trail_md);
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    const char *error_string = NULL;

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = nmd;
    ops[0].data.send_initial_metadata.metadata = gmd;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv_bb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
    ops[5].data.recv_status_on_client.status = &code;
    ops[5].data.recv_status_on_client.status_details = &details;
    ops[5].data.recv_status_on_client.error_string = &error_string;

    int rc = 0;
    if (grpc_call_start_batch(call, ops, 6, sg_rpc_wait_tag_of(&wait, 0), NULL) != GRPC_CALL_OK) {
        rc = sg_err_set(err, SG_EIO, "cannot start the call to %s", path);
    } else {
        int idx;
        bool ok;
        /* The call's deadline ends it, so this wait ends too. */
        (void)sg_rpc_wait_next(&wait, -1, &idx, &ok);
        if (code != GRPC_STATUS_OK) {
            rc = status_error(code, details, status, err);
        } else if (recv_bb == NULL) {
            set_ok_status(status);
            rc = sg_err_set(err, SG_EPROTO, "%s returned no response message", path);
        } else {
            ProtobufCMessage *m = unpack_message(resp_desc, recv_bb);
            set_ok_status(status);
            if (m == NULL)
                rc = sg_err_set(err, SG_EPROTO, "malformed %s response from %s", resp_desc->name,
                                path);
            else
                *resp = m;
        }
    }
    gpr_free((void *)(uintptr_t)error_string);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&init_md);
    grpc_metadata_array_destroy(&trail_md);
    grpc_byte_buffer_destroy(send_bb);
    if (recv_bb != NULL)
        grpc_byte_buffer_destroy(recv_bb);
    grpc_call_unref(call);
    free_md(gmd, nmd);
    sg_rpc_wait_destroy(&wait);
    return rc;
}

/* Operations a stream can have in flight; each is its own tag. */
enum { ST_START, ST_SEND, ST_CLOSE, ST_RECV, ST_STATUS, ST_NTAGS };

struct sg_rpc_stream {
    sg_rpc_wait wait; /* each op's tag is its index */
    grpc_call *call;
    bool busy[ST_NTAGS]; /* started, not yet completed */
    bool okv[ST_NTAGS];  /* success of the last completion */
    grpc_metadata *gmd;
    size_t nmd;
    grpc_byte_buffer *first_bb;
    grpc_byte_buffer *send_bb;
    grpc_byte_buffer *recv_bb;
    grpc_metadata_array init_md, trail_md;
    grpc_status_code code;
    grpc_slice details;
    const char *error_string;
    bool half_closed;
    bool ended; /* the stream returned its end (0 or error) */
};

/*
 * Processes completions until op `which` is no longer busy, or the wait
 * deadline passes (returns false then).
 */
static bool stream_wait(sg_rpc_stream *s, int which, int64_t until_ms)
{
    while (s->busy[which]) {
        int idx;
        bool ok;
        if (!sg_rpc_wait_next(&s->wait, until_ms, &idx, &ok))
            return false;
        if (idx >= 0 && idx < ST_NTAGS) {
            s->busy[idx] = false;
            s->okv[idx] = ok;
        }
    }
    return true;
}

static int stream_start(sg_rpc_stream *s, int which, grpc_op *ops, size_t n)
{
    s->busy[which] = true;
    if (grpc_call_start_batch(s->call, ops, n, sg_rpc_wait_tag_of(&s->wait, which), NULL) !=
        GRPC_CALL_OK) {
        s->busy[which] = false;
        return -1;
    }
    return 0;
}

int sg_rpc_stream_open(grpc_channel *ch, const char *path, const ProtobufCMessage *first, bool bidi,
                       const sg_rpc_md *md, size_t nmd, int64_t timeout_ms, sg_rpc_stream **out,
                       sg_err *err)
{
    if (!bidi && first == NULL)
        return sg_err_set(err, SG_EINVAL, "server stream %s needs a request", path);
    sg_rpc_stream *s = calloc(1, sizeof *s);
    if (s == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory opening %s", path);
    s->gmd = make_md(md, nmd);
    s->nmd = nmd;
    if (nmd > 0 && s->gmd == NULL) {
        free(s);
        return sg_err_set(err, SG_ENOMEM, "out of memory opening %s", path);
    }
    sg_rpc_wait_init(&s->wait);
    grpc_slice method = grpc_slice_from_copied_string(path);
    s->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->wait.cq, method, NULL,
                                       deadline_after(timeout_ms), NULL);
    grpc_slice_unref(method);
    grpc_metadata_array_init(&s->init_md);
    grpc_metadata_array_init(&s->trail_md);
    s->details = grpc_empty_slice();
    if (s->call == NULL) {
        sg_rpc_stream_free(s);
        return sg_err_set(err, SG_EINVAL, "cannot create a call to %s", path);
    }

    grpc_op ops[4];
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = nmd;
    ops[n].data.send_initial_metadata.metadata = s->gmd;
    n++;
    if (first != NULL) {
        s->first_bb = pack_message(first);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = s->first_bb;
        n++;
    }
    if (!bidi) {
        ops[n].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        n++;
        s->half_closed = true;
    }
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
    n++;
    if (stream_start(s, ST_START, ops, n) != 0) {
        sg_rpc_stream_free(s);
        return sg_err_set(err, SG_EIO, "cannot start the call to %s", path);
    }
    grpc_op st;
    memset(&st, 0, sizeof st);
    st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    st.data.recv_status_on_client.trailing_metadata = &s->trail_md;
    st.data.recv_status_on_client.status = &s->code;
    st.data.recv_status_on_client.status_details = &s->details;
    st.data.recv_status_on_client.error_string = &s->error_string;
    if (stream_start(s, ST_STATUS, &st, 1) != 0) {
        sg_rpc_stream_free(s);
        return sg_err_set(err, SG_EIO, "cannot start the call to %s", path);
    }
    *out = s;
    return 0;
}

int sg_rpc_stream_send(sg_rpc_stream *s, const ProtobufCMessage *msg, sg_err *err)
{
    if (s->half_closed || s->ended || !s->busy[ST_STATUS])
        return sg_err_set(err, SG_ECANCELLED, "stream is closed for sending");
    grpc_op op;
    memset(&op, 0, sizeof op);
    s->send_bb = pack_message(msg);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = s->send_bb;
    int rc = stream_start(s, ST_SEND, &op, 1);
    if (rc == 0)
        stream_wait(s, ST_SEND, -1);
    grpc_byte_buffer_destroy(s->send_bb);
    s->send_bb = NULL;
    if (rc != 0 || !s->okv[ST_SEND])
        return sg_err_set(err, SG_ECANCELLED, "sending on the stream failed: the call is over");
    return 0;
}

int sg_rpc_stream_close_send(sg_rpc_stream *s, sg_err *err)
{
    if (s->half_closed)
        return 0;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    s->half_closed = true;
    if (stream_start(s, ST_CLOSE, &op, 1) != 0)
        return sg_err_set(err, SG_ECANCELLED, "half-closing the stream failed");
    return 0;
}

int sg_rpc_stream_next(sg_rpc_stream *s, const ProtobufCMessageDescriptor *desc, int64_t wait_ms,
                       ProtobufCMessage **msg, sg_rpc_status *status, sg_err *err)
{
    if (s->ended) {
        if (s->code == GRPC_STATUS_OK) {
            set_ok_status(status);
            return 0;
        }
        return status_error(s->code, s->details, status, err);
    }
    if (!s->busy[ST_RECV]) {
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &s->recv_bb;
        s->recv_bb = NULL;
        if (stream_start(s, ST_RECV, &op, 1) != 0)
            return sg_err_set(err, SG_EIO, "cannot read from the stream");
    }
    if (!stream_wait(s, ST_RECV, until_after(wait_ms)))
        return sg_err_set(err, SG_ETIMEDOUT, "no stream message within %lld ms",
                          (long long)wait_ms);
    if (s->recv_bb != NULL) {
        grpc_byte_buffer *bb = s->recv_bb;
        s->recv_bb = NULL;
        ProtobufCMessage *m = unpack_message(desc, bb);
        grpc_byte_buffer_destroy(bb);
        if (m == NULL) {
            grpc_call_cancel(s->call, NULL);
            return sg_err_set(err, SG_EPROTO, "malformed %s message on the stream", desc->name);
        }
        *msg = m;
        return 1;
    }
    /* No message: the stream is over; its status tells how. */
    stream_wait(s, ST_STATUS, -1);
    s->ended = true;
    if (s->code == GRPC_STATUS_OK) {
        set_ok_status(status);
        return 0;
    }
    return status_error(s->code, s->details, status, err);
}

void sg_rpc_stream_cancel(sg_rpc_stream *s)
{
    if (s != NULL && s->call != NULL)
        grpc_call_cancel(s->call, NULL);
}

void sg_rpc_stream_free(sg_rpc_stream *s)
{
    if (s == NULL)
        return;
    if (s->call != NULL) {
        if (s->busy[ST_STATUS])
            grpc_call_cancel(s->call, NULL);
        for (int i = 0; i < ST_NTAGS; i++)
            stream_wait(s, i, -1);
        grpc_call_unref(s->call);
    }
    if (s->first_bb != NULL)
        grpc_byte_buffer_destroy(s->first_bb);
    if (s->recv_bb != NULL)
        grpc_byte_buffer_destroy(s->recv_bb);
    gpr_free((void *)(uintptr_t)s->error_string);
    grpc_slice_unref(s->details);
    grpc_metadata_array_destroy(&s->init_md);
    grpc_metadata_array_destroy(&s->trail_md);
    free_md(s->gmd, s->nmd);
    sg_rpc_wait_destroy(&s->wait);
    free(s);
}

const char *sg_rpc_status_go_name(grpc_status_code status)
{
    static const char *const names[] = {
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    };

    if ((int)status < 0 || (size_t)status >= sizeof names / sizeof names[0])
        return "Unknown";
    return names[status];
}
