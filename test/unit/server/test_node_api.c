/*
 * Unit tests for the Sync push hub (server/node_api.c): coalescing of
 * change bursts, per-agent targeting, urgent agent checks that end
 * streams, per-agent and total caps, periodic resync, the change
 * generation for new streams, and remove waiting for a push in progress.
 * The hub runs with fake push/end operations; no gRPC is involved.
 */
#include "server/node_api.h"
#include "test/runner.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define A "spiffe://example.org/spire/agent/join_token/a"
#define B "spiffe://example.org/spire/agent/join_token/b"
#define C "spiffe://example.org/spire/agent/join_token/c"

typedef struct fake_stream {
    const char *agent;
    atomic_int pushes;
    atomic_int forced;
    atomic_int ended;    /* number of end calls */
    atomic_int end_code; /* SG_E* of the last end */
    atomic_int fail;     /* push returns SG_EPERM */
    atomic_int slow_ms;  /* push sleeps this long */
    atomic_int in_push;
    atomic_int push_done;
    char end_msg[SG_ERR_MSG_LEN];
} fake_stream;

typedef struct fake_ctx {
    atomic_int poll_changed; /* the next poll reports a change */
    atomic_int polls;
} fake_ctx;

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int fake_push(void *ctx, void *stream, bool force, sg_err *err)
{
    (void)ctx;
    fake_stream *fs = stream;
    atomic_store(&fs->in_push, 1);
    int slow = atomic_load(&fs->slow_ms);
    if (slow > 0)
        sleep_ms(slow);
    atomic_fetch_add(&fs->pushes, 1);
    if (force)
        atomic_fetch_add(&fs->forced, 1);
    atomic_store(&fs->in_push, 0);
    atomic_store(&fs->push_done, 1);
    if (atomic_load(&fs->fail))
        return sg_err_set(err, SG_EPERM, "agent was evicted");
    return 0;
}

static void fake_end(void *ctx, void *stream, const sg_err *err)
{
    (void)ctx;
    fake_stream *fs = stream;
    snprintf(fs->end_msg, sizeof(fs->end_msg), "%s", err->msg);
    atomic_store(&fs->end_code, err->code);
    atomic_fetch_add(&fs->ended, 1);
}

static bool fake_poll(void *ctx)
{
    fake_ctx *c = ctx;
    atomic_fetch_add(&c->polls, 1);
    return atomic_exchange(&c->poll_changed, 0) != 0;
}

static sg_sync_hub *mkhub(fake_ctx *c, int coalesce_ms, int resync_ms, int per_agent, int total)
{
    sg_sync_hub_ops ops = {.push = fake_push, .end = fake_end, .poll = fake_poll};
    sg_sync_hub_options o = {.max_per_agent = per_agent,
                             .max_total = total,
                             .coalesce_ms = coalesce_ms,
                             .resync_ms = resync_ms,
                             .poll_ms = 20};
    sg_sync_hub *h = NULL;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_sync_hub_new(&h, &ops, c, &o, &err));
    ASSERT_OK(sg_sync_hub_start(h, &err));
    return h;
}

static void add(sg_sync_hub *h, fake_stream *fs)
{
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_sync_hub_add(h, fs->agent, fs, sg_sync_hub_gen(h), &err));
}

/* Waits up to ms for *v to reach at least want. */
static int wait_for(atomic_int *v, int want, int ms)
{
    for (int i = 0; i < ms && atomic_load(v) < want; i++)
        sleep_ms(1);
    return atomic_load(v);
}

TEST(node_api_hub_coalesces_bursts)
{
    fake_ctx c = {0};
    fake_stream s = {.agent = A};
    sg_sync_hub *h = mkhub(&c, 50, 60000, 0, 0);
    add(h, &s);
    for (int i = 0; i < 200; i++)
        sg_sync_hub_changed(h, NULL, false);
    ASSERT_EQ(wait_for(&s.pushes, 1, 1000), 1);
    sleep_ms(200);
    /* A burst in one coalescing window is one push. */
    ASSERT_EQ(atomic_load(&s.pushes), 1);
    ASSERT_EQ(atomic_load(&s.forced), 0);
    /* A later change is pushed again, no sooner than the window allows. */
    sg_sync_hub_changed(h, A, false);
    ASSERT_EQ(wait_for(&s.pushes, 2, 1000), 2);
    sg_sync_hub_remove(h, &s);
    sg_sync_hub_free(h);
}

TEST(node_api_hub_pushes_only_the_changed_agent)
{
    fake_ctx c = {0};
    fake_stream a = {.agent = A}, b = {.agent = B};
    sg_sync_hub *h = mkhub(&c, 1, 60000, 0, 0);
    add(h, &a);
    add(h, &b);
    sg_sync_hub_changed(h, A, false);
    ASSERT_EQ(wait_for(&a.pushes, 1, 1000), 1);
    sleep_ms(50);
    ASSERT_EQ(atomic_load(&b.pushes), 0);
    sg_sync_hub_changed(h, NULL, false);
    ASSERT_EQ(wait_for(&b.pushes, 1, 1000), 1);
    ASSERT_EQ(wait_for(&a.pushes, 2, 1000), 2);
    sg_sync_hub_remove(h, &a);
    sg_sync_hub_remove(h, &b);
    ASSERT_EQ(sg_sync_hub_count(h, NULL), 0);
    sg_sync_hub_free(h);
}

TEST(node_api_hub_urgent_check_ends_refused_stream)
{
    fake_ctx c = {0};
    fake_stream a = {.agent = A}, b = {.agent = B};
    /* A long coalescing window: only an urgent mark is pushed at once. */
    sg_sync_hub *h = mkhub(&c, 5000, 60000, 0, 0);
    add(h, &a);
    add(h, &b);
    atomic_store(&b.fail, 1);
    sg_sync_hub_changed(h, B, true);
    ASSERT_EQ(wait_for(&b.ended, 1, 500), 1);
    ASSERT_EQ(atomic_load(&b.end_code), SG_EPERM);
    ASSERT_STREQ(b.end_msg, "agent was evicted");
    ASSERT_EQ(sg_sync_hub_count(h, B), 0);
    ASSERT_EQ(sg_sync_hub_count(h, A), 1);
    ASSERT_EQ(atomic_load(&a.pushes), 0);
    /* An ended stream is never pushed again, however often it changes. */
    sg_sync_hub_changed(h, B, true);
    sleep_ms(50);
    ASSERT_EQ(atomic_load(&b.pushes), 1);
    ASSERT_EQ(atomic_load(&b.ended), 1);
    sg_sync_hub_remove(h, &a);
    sg_sync_hub_remove(h, &b);
    sg_sync_hub_free(h);
}

TEST(node_api_hub_caps_streams_per_agent_and_in_total)
{
    fake_ctx c = {0};
    fake_stream a1 = {.agent = A}, a2 = {.agent = A}, a3 = {.agent = A}, b = {.agent = B},
                cc = {.agent = C};
    sg_sync_hub *h = mkhub(&c, 1, 60000, 2, 3);
    add(h, &a1);
    add(h, &a2);
    add(h, &a3);
    /* The oldest of the agent's streams gives way. */
    ASSERT_EQ(atomic_load(&a1.ended), 1);
    ASSERT_EQ(atomic_load(&a1.end_code), SG_ETOOBIG);
    ASSERT(strstr(a1.end_msg, A) != NULL);
    ASSERT_EQ(atomic_load(&a2.ended), 0);
    ASSERT_EQ(sg_sync_hub_count(h, A), 2);
    add(h, &b);
    ASSERT_EQ(sg_sync_hub_count(h, NULL), 3);
    sg_err err;
    sg_err_clear(&err);
    ASSERT_EQ(sg_sync_hub_add(h, C, &cc, sg_sync_hub_gen(h), &err), SG_ETOOBIG);
    ASSERT(strstr(err.msg, "too many open Sync streams") != NULL);
    /* The refused stream is unknown to the hub: removing it is harmless. */
    sg_sync_hub_remove(h, &cc);
    sg_sync_hub_remove(h, &a1);
    sg_sync_hub_remove(h, &a2);
    sg_sync_hub_remove(h, &a3);
    sg_sync_hub_remove(h, &b);
    ASSERT_EQ(sg_sync_hub_count(h, NULL), 0);
    sg_sync_hub_free(h);
}

TEST(node_api_hub_resyncs_periodically)
{
    fake_ctx c = {0};
    fake_stream s = {.agent = A};
    sg_sync_hub *h = mkhub(&c, 1, 100, 0, 0);
    add(h, &s);
    ASSERT(wait_for(&s.forced, 2, 1000) >= 2);
    ASSERT_EQ(atomic_load(&s.pushes), atomic_load(&s.forced));
    sg_sync_hub_remove(h, &s);
    sg_sync_hub_free(h);
}

TEST(node_api_hub_new_stream_gets_changes_since_its_snapshot)
{
    fake_ctx c = {0};
    fake_stream s = {.agent = A}, t = {.agent = B};
    sg_sync_hub *h = mkhub(&c, 5000, 60000, 0, 0);
    uint64_t gen = sg_sync_hub_gen(h);
    sg_sync_hub_changed(h, NULL, false); /* between snapshot and add */
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_sync_hub_add(h, A, &s, gen, &err));
    ASSERT_EQ(wait_for(&s.pushes, 1, 500), 1);
    /* With an up-to-date generation nothing is pushed. */
    ASSERT_OK(sg_sync_hub_add(h, B, &t, sg_sync_hub_gen(h), &err));
    sleep_ms(100);
    ASSERT_EQ(atomic_load(&t.pushes), 0);
    sg_sync_hub_remove(h, &s);
    sg_sync_hub_remove(h, &t);
    sg_sync_hub_free(h);
}

TEST(node_api_hub_remove_waits_for_push_in_progress)
{
    fake_ctx c = {0};
    fake_stream s = {.agent = A};
    sg_sync_hub *h = mkhub(&c, 1, 60000, 0, 0);
    add(h, &s);
    atomic_store(&s.slow_ms, 200);
    sg_sync_hub_changed(h, A, true);
    ASSERT_EQ(wait_for(&s.in_push, 1, 1000), 1);
    sg_sync_hub_remove(h, &s);
    /* remove returned only after the push let go of the stream. */
    ASSERT_EQ(atomic_load(&s.push_done), 1);
    ASSERT_EQ(atomic_load(&s.in_push), 0);
    ASSERT_EQ(sg_sync_hub_count(h, NULL), 0);
    sg_sync_hub_free(h);
}

TEST(node_api_hub_poll_change_marks_every_stream)
{
    fake_ctx c = {0};
    fake_stream a = {.agent = A}, b = {.agent = B};
    sg_sync_hub *h = mkhub(&c, 1, 60000, 0, 0);
    add(h, &a);
    add(h, &b);
    ASSERT(wait_for(&c.polls, 2, 1000) >= 2);
    ASSERT_EQ(atomic_load(&a.pushes), 0);
    atomic_store(&c.poll_changed, 1);
    ASSERT_EQ(wait_for(&a.pushes, 1, 1000), 1);
    ASSERT_EQ(wait_for(&b.pushes, 1, 1000), 1);
    sg_sync_hub_remove(h, &a);
    sg_sync_hub_remove(h, &b);
    sg_sync_hub_free(h);
}

TEST(node_api_hub_refuses_missing_operations)
{
    sg_sync_hub_ops ops = {.push = fake_push};
    sg_sync_hub *h = NULL;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_EQ(sg_sync_hub_new(&h, &ops, NULL, NULL, &err), SG_EINVAL);
    ASSERT(h == NULL);
    ASSERT(strstr(err.msg, "push and end") != NULL);
}
