/*
 * The sigil.node.v1.Node service (agent <-> server over TLS): AttestAgent,
 * RenewAgent, Sync and MintX509SVIDs. Handlers run on the node server's
 * completion-queue threads and take everything from the sg_server context.
 */
#ifndef SG_SERVER_NODE_API_H
#define SG_SERVER_NODE_API_H

#include "attestors/attestor.h"
#include "common/err.h"
#include "common/rpc.h"
#include "server/authorized.h"
#include "server/server.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most X509SVIDParams one MintX509SVIDs call may carry. */
#define SG_NODE_MINT_MAX 1000

/*
 * Registers every method of sigil.node.v1.Node on srv (before it starts).
 * s must outlive srv.
 */
int sg_node_api_register(sg_rpc_server *srv, sg_server *s, sg_err *err);

/* ------------------------------------------------------------ Sync push */

/*
 * Open Sync streams stay open: the first message is the full state, then a
 * new full state follows whenever what the agent can see changes, and a
 * full resync every resync_ms as a safety net. The hub keeps the registry
 * of open streams (keyed by agent ID, capped per agent and in total) and a
 * notifier thread that does every push after the first, so the admin call
 * that caused a change never waits for it. Changes are coalesced: a stream
 * gets at most one push per coalesce_ms, except for agent checks (evict,
 * ban), which run at once.
 */
typedef struct sg_sync_hub sg_sync_hub;

typedef struct sg_sync_hub_ops {
    /*
     * Sends the current full state on stream when it differs from what the
     * stream last got, or always when force. Runs on the notifier thread,
     * never twice at once for one stream. A negative return ends the stream
     * with err through end.
     */
    int (*push)(void *ctx, void *stream, bool force, sg_err *err);
    /* Ends stream with err (never blocks; the stream is removed later). */
    void (*end)(void *ctx, void *stream, const sg_err *err);
    /* Optional: whether shared state (the bundle) changed since the last
     * poll; runs on the notifier thread every poll_ms. */
    bool (*poll)(void *ctx);
    /* Optional: frees ctx when the hub is freed. */
    void (*ctx_free)(void *ctx);
} sg_sync_hub_ops;

typedef struct sg_sync_hub_options {
    int max_per_agent; /* default 4; a stream beyond ends the agent's oldest */
    int max_total;     /* default 4096; a stream beyond is refused */
    int coalesce_ms;   /* default 30; negative: no coalescing */
    int resync_ms;     /* default 30000 */
    int poll_ms;       /* default 1000 */
} sg_sync_hub_options;

/* Creates a hub (not started). ops is copied; opts may be NULL. */
int sg_sync_hub_new(sg_sync_hub **out, const sg_sync_hub_ops *ops, void *ctx,
                    const sg_sync_hub_options *opts, sg_err *err);

/* Starts the notifier thread. */
int sg_sync_hub_start(sg_sync_hub *h, sg_err *err);

/* Stops and joins the notifier thread; streams stay registered. Idempotent. */
void sg_sync_hub_stop(sg_sync_hub *h);

/* Frees the hub (stops it first). Every stream must have been removed. NULL-safe. */
void sg_sync_hub_free(sg_sync_hub *h);

/*
 * Change generation: read it before taking the snapshot a new stream's
 * first message is built from and pass it to sg_sync_hub_add, so a change
 * in between is pushed at once instead of missed.
 */
uint64_t sg_sync_hub_gen(sg_sync_hub *h);

/*
 * Registers stream for agent_id (copied) after its first message was sent.
 * When the agent already has max_per_agent streams, its oldest is ended
 * with SG_ETOOBIG. SG_ETOOBIG when the hub holds max_total streams.
 */
int sg_sync_hub_add(sg_sync_hub *h, const char *agent_id, void *stream, uint64_t gen, sg_err *err);

/*
 * Forgets stream (from its done callback, exactly once); waits while the
 * notifier is pushing on it, so once this returns the hub never touches it
 * again. Unknown streams are ignored.
 */
void sg_sync_hub_remove(sg_sync_hub *h, void *stream);

/*
 * Marks the streams of agent_id (NULL: all) for a push. urgent skips the
 * coalescing delay. Thread-safe, never blocks on a push.
 */
void sg_sync_hub_changed(sg_sync_hub *h, const char *agent_id, bool urgent);

/* Registered streams of agent_id (NULL: all) that are not ending. */
size_t sg_sync_hub_count(sg_sync_hub *h, const char *agent_id);

/*
 * The hub for sg_server s, wired to the node API's Sync streams (pushes
 * full state, checks for evicted or banned agents, polls the bundle
 * sequence). Called by server.c.
 */
int sg_node_sync_hub_new(sg_sync_hub **out, sg_server *s, sg_err *err);

/*
 * Server internals the node API uses (implemented in server.c).
 * sg_server_authz: the authorisation index; thread-safe.
 * sg_server_node_attestor: the configured node attestor named type and its
 * state, or NULL when the configuration does not enable it.
 */
sg_authz *sg_server_authz(sg_server *s);
const sg_node_attestor_server *sg_server_node_attestor(sg_server *s, const char *type,
                                                       void **state);
/* The Sync push hub, or NULL when streams are not pushed (finish after one message). */
sg_sync_hub *sg_server_sync_hub(sg_server *s);

#endif
