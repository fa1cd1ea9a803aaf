/*
 * The sigil-agent daemon: one context owning the libuv loop and all agent
 * state (cache, peer table, Workload API, node client, timers). The loop
 * thread runs everything except blocking node calls, key generation and
 * workload attestation, which go to the thread pool.
 */
#ifndef SG_AGENT_AGENT_H
#define SG_AGENT_AGENT_H

#include "common/config.h"
#include "common/err.h"

typedef struct sg_agent sg_agent;

/*
 * Builds the agent from cfg (borrowed; must outlive the agent): node
 * client, workload attestors (at least one), cache. No sockets yet.
 * join_token (borrowed, may be NULL) overrides the config's token.
 */
int sg_agent_new(sg_agent **out, const sg_agent_config *cfg, const char *join_token, sg_err *err);

/*
 * Opens the Workload API socket and serves it, attests and keeps syncing
 * until SIGTERM or SIGINT. Returns 0 after a clean stop, 1 when the stop
 * deadline (5 s) forced the loop to end with work still running (the
 * caller should then exit without freeing), or a negative SG_E* when the
 * agent could not start.
 */
int sg_agent_run(sg_agent *a, sg_err *err);

/* Frees everything after sg_agent_run returned 0 or failed. NULL-safe. */
void sg_agent_free(sg_agent *a);

#endif
