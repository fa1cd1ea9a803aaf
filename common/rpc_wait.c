/*
 * Blocking client waits: a polled completion queue, or a callback queue
 * and a condition variable while a server CQ thread drives the I/O (see
 * rpc_wait.h for why).
 */
#include "common/rpc_wait.h"

#include <grpc/support/time.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WAIT_SLICE_MS 1000 /* how often a sleeping waiter checks a driver is left */
#define WAIT_POLL_MS  10   /* one poll of a waiter that has to drive I/O itself */

static atomic_int g_drivers;

void sg_rpc_wait_drivers_add(int delta)
{
    atomic_fetch_add(&g_drivers, delta);
}

/* The poller role is shared only under the epoll engine; with another one
 * (GRPC_POLL_STRATEGY) each queue polls its own connections. */
static bool shared_poller(void)
{
    const char *s = getenv("GRPC_POLL_STRATEGY");
    return s == NULL || *s == '\0' || strncmp(s, "epoll1", 6) == 0 || strcmp(s, "all") == 0;
}

int64_t sg_rpc_wait_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_complete(grpc_completion_queue_functor *f, int ok)
{
    sg_rpc_wait_tag *t = (sg_rpc_wait_tag *)f;
    sg_rpc_wait *w = t->w;
    pthread_mutex_lock(&w->mu);
    w->done |= 1u << t->idx;
    w->ok[t->idx] = ok != 0;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void sg_rpc_wait_init(sg_rpc_wait *w)
{
    memset(w, 0, sizeof(*w));
    for (int i = 0; i <= SG_RPC_WAIT_MAX_TAGS; i++) {
        w->tags[i].f.functor_run = on_complete;
        w->tags[i].f.inlineable = 1; /* it only signals: fine on gRPC's thread */
        w->tags[i].w = w;
        w->tags[i].idx = i;
    }
    w->callback = atomic_load(&g_drivers) > 0 && shared_poller();
    if (!w->callback) {
        w->cq = grpc_completion_queue_create_for_next(NULL);
        return;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->mu, NULL);
    w->cq = grpc_completion_queue_create_for_callback(&w->tags[SG_RPC_WAIT_MAX_TAGS].f, NULL);
}

void *sg_rpc_wait_tag_of(sg_rpc_wait *w, int idx)
{
    return &w->tags[idx];
}

static gpr_timespec deadline_of(int64_t until_ms)
{
    if (until_ms < 0)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    int64_t left = until_ms - sg_rpc_wait_now_ms();
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis(left > 0 ? left : 0, GPR_TIMESPAN));
}

/* Takes one completion whose bit is set in w->done. mu held. */
static bool take_locked(sg_rpc_wait *w, unsigned mask, int *idx, bool *ok)
{
    unsigned ready = w->done & mask;
    if (ready == 0)
        return false;
    int i = __builtin_ctz(ready);
    w->done &= ~(1u << i);
    *idx = i;
    *ok = w->ok[i];
    return true;
}

/* Sleeps (or polls, with no driver left) until a bit of mask is done. */
static bool wait_bits(sg_rpc_wait *w, unsigned mask, int64_t until_ms, int *idx, bool *ok)
{
    pthread_mutex_lock(&w->mu);
    for (;;) {
        if (take_locked(w, mask, idx, ok)) {
            pthread_mutex_unlock(&w->mu);
            return true;
        }
        int64_t now = sg_rpc_wait_now_ms();
        if (until_ms >= 0 && now >= until_ms) {
            pthread_mutex_unlock(&w->mu);
            return false;
        }
        if (atomic_load(&g_drivers) > 0) {
            int64_t wake = now + WAIT_SLICE_MS;
            if (until_ms >= 0 && until_ms < wake)
                wake = until_ms;
            struct timespec ts = {.tv_sec = wake / 1000, .tv_nsec = (wake % 1000) * 1000000};
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
            continue;
        }
        /* No CQ thread polls any more: drive the I/O from here. */
        pthread_mutex_unlock(&w->mu);
        if (w->poll_cq == NULL)
            w->poll_cq = grpc_completion_queue_create_for_next(NULL);
        int64_t wake = sg_rpc_wait_now_ms() + WAIT_POLL_MS;
        if (until_ms >= 0 && until_ms < wake)
            wake = until_ms;
        (void)grpc_completion_queue_next(w->poll_cq, deadline_of(wake), NULL);
        pthread_mutex_lock(&w->mu);
    }
}

bool sg_rpc_wait_next(sg_rpc_wait *w, int64_t until_ms, int *idx, bool *ok)
{
    if (w->callback)
        return wait_bits(w, (1u << SG_RPC_WAIT_MAX_TAGS) - 1, until_ms, idx, ok);
    for (;;) {
        grpc_event e = grpc_completion_queue_next(w->cq, deadline_of(until_ms), NULL);
        if (e.type != GRPC_OP_COMPLETE)
            return false;
        sg_rpc_wait_tag *t = e.tag;
        if (t == NULL || t->w != w)
            continue;
        *idx = t->idx;
        *ok = e.success != 0;
        return true;
    }
}

/* Shuts down and frees a polled queue with nothing outstanding. */
static void destroy_polled(grpc_completion_queue *cq)
{
    gpr_timespec forever = gpr_inf_future(GPR_CLOCK_REALTIME);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, forever, NULL).type != GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
}

void sg_rpc_wait_destroy(sg_rpc_wait *w)
{
    if (w->callback) {
        int idx;
        bool ok;
        grpc_completion_queue_shutdown(w->cq);
        (void)wait_bits(w, 1u << SG_RPC_WAIT_MAX_TAGS, -1, &idx, &ok);
        grpc_completion_queue_destroy(w->cq);
    } else {
        destroy_polled(w->cq);
    }
    if (w->poll_cq != NULL)
        destroy_polled(w->poll_cq);
    if (w->callback) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
    }
}
