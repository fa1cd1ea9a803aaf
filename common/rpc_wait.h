/*
 * How a blocking gRPC client call waits for its completions (internal to
 * the rpc layer).
 *
 * By default a call gets a completion queue of its own, which the waiting
 * thread polls. gRPC's epoll engine keeps every connection of the process
 * in one epoll set, though, and any thread polling any queue serves all of
 * them: when a server's completion-queue thread is always polling, a
 * client thread polling too only takes the poller role back and forth with
 * it, and each hand-over is a wake-up and a context switch on the server's
 * busiest path. So while a server that opted in (drive_client_io) has a
 * live CQ thread, a client call gets a callback queue instead and its
 * thread sleeps on a condition variable; the CQ thread does the I/O. Should
 * the last such thread exit mid-call, the waiter goes back to polling.
 */
#ifndef SG_COMMON_RPC_WAIT_H
#define SG_COMMON_RPC_WAIT_H

#include <grpc/grpc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define SG_RPC_WAIT_MAX_TAGS 5

typedef struct sg_rpc_wait sg_rpc_wait;

typedef struct sg_rpc_wait_tag {
    grpc_completion_queue_functor f; /* first: gRPC hands back its address */
    sg_rpc_wait *w;
    int idx;
} sg_rpc_wait_tag;

struct sg_rpc_wait {
    grpc_completion_queue *cq; /* the queue to create calls on */
    bool callback;             /* callback queue: sleep, another thread does the I/O */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned done; /* completed tags not yet taken, one bit each (mu) */
    bool ok[SG_RPC_WAIT_MAX_TAGS + 1];
    sg_rpc_wait_tag tags[SG_RPC_WAIT_MAX_TAGS + 1]; /* the last one: queue shutdown */
    grpc_completion_queue *poll_cq; /* polled when no CQ thread is left to drive I/O */
};

/* Sets w up; a callback queue when a driving CQ thread is live. */
void sg_rpc_wait_init(sg_rpc_wait *w);

/* The tag for operation idx (< SG_RPC_WAIT_MAX_TAGS). */
void *sg_rpc_wait_tag_of(sg_rpc_wait *w, int idx);

/*
 * Waits until some operation completes and reports which (*idx) and how
 * (*ok). until_ms is a CLOCK_MONOTONIC time in ms, or -1 for no limit.
 * False when the time passed first.
 */
bool sg_rpc_wait_next(sg_rpc_wait *w, int64_t until_ms, int *idx, bool *ok);

/* Shuts the queue down and frees it; nothing may be outstanding. */
void sg_rpc_wait_destroy(sg_rpc_wait *w);

/* A CQ thread that drives every connection's I/O starts (+1) or exits (-1). */
void sg_rpc_wait_drivers_add(int delta);

/* CLOCK_MONOTONIC now in ms. */
int64_t sg_rpc_wait_now_ms(void);

#endif
