/*
 * Attestor plugin interfaces. Each built-in attestor is one file that
 * fills one of these const vtables; attestors/registry.c lists them.
 *
 *  - workload attestors (agent): pid/uid/gid of a caller -> selectors
 *  - node attestors, agent half: produce the attestation payload and answer
 *    challenges
 *  - node attestors, server half: check the payload (may challenge) and
 *    decide the agent's SPIFFE ID and node selectors
 */
#ifndef SG_ATTESTORS_ATTESTOR_H
#define SG_ATTESTORS_ATTESTOR_H

#include "common/config.h"
#include "common/err.h"
#include "common/selector.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ------------------------------------------------------------ workload */

/* What the agent knows about a Workload API caller (SO_PEERCRED, SO_PEERGROUPS). */
typedef struct sg_workload_peer {
    pid_t pid;
    uid_t uid;
    gid_t gid;
    bool has_groups;     /* false: read the supplementary groups from /proc */
    const gid_t *groups; /* supplementary groups at connect, when has_groups */
    size_t ngroups;
} sg_workload_peer;

typedef struct sg_workload_attestor {
    const char *name; /* plugin name in the config, e.g. "unix" */
    /* Validates the plugin's settings in cfg and builds *state. */
    int (*configure)(const sg_agent_config *cfg, void **state, sg_err *err);
    /*
     * Adds the peer's selectors to out (types are prefixed by the plugin,
     * e.g. type "unix", value "uid:1000"). Runs on a worker thread and must
     * be reentrant on state. Slow results (binary hashes) may be cached.
     */
    int (*attest)(void *state, const sg_workload_peer *peer, sg_selector_set *out, sg_err *err);
    void (*destroy)(void *state);
    /*
     * Optional fast path, run under the agent's state lock (in the call's
     * path, so it may run beside attest on the pool): the same result as
     * attest, but it must never block. It returns SG_EUNAVAIL, adding
     * nothing, when it would have to (a name lookup or a binary hash that is
     * not cached yet); the agent then runs attest on the thread pool. NULL:
     * always use the pool.
     */
    int (*attest_cached)(void *state, const sg_workload_peer *peer, sg_selector_set *out,
                         sg_err *err);
} sg_workload_attestor;

/* ------------------------------------------------------------ node */

typedef struct sg_node_attestor_agent {
    const char *name; /* "join_token" */
    int (*configure)(const sg_agent_config *cfg, void **state, sg_err *err);
    /* The first attestation payload (malloc'd into *payload). */
    int (*payload)(void *state, uint8_t **payload, size_t *len, sg_err *err);
    /* Answers a server challenge (malloc'd into *resp). NULL when the attestor never challenges. */
    int (*challenge)(void *state, const uint8_t *chal, size_t chal_len, uint8_t **resp,
                     size_t *resp_len, sg_err *err);
    void (*destroy)(void *state);
} sg_node_attestor_agent;

/* What the server half may use (borrowed pointers owned by the server). */
typedef struct sg_node_attest_host {
    struct sg_datastore *ds;
    const char *trust_domain;
    int64_t now;
} sg_node_attest_host;

/* Sends chal to the agent and waits for its answer (malloc'd into *resp). */
typedef int (*sg_node_challenge_fn)(void *ctx, const uint8_t *chal, size_t chal_len, uint8_t **resp,
                                    size_t *resp_len, sg_err *err);

typedef struct sg_node_attest_result {
    char agent_id[2100];       /* spiffe://<td>/spire/agent/<type>/... */
    sg_selector_set selectors; /* node selectors (caller cleans up) */
    bool can_reattest;
} sg_node_attest_result;

typedef struct sg_node_attestor_server {
    const char *name;
    int (*configure)(const sg_server_config *cfg, void **state, sg_err *err);
    /* Checks payload; on success fills out. Errors are sent to the agent. */
    int (*attest)(void *state, const sg_node_attest_host *host, const uint8_t *payload, size_t len,
                  sg_node_challenge_fn challenge, void *challenge_ctx, sg_node_attest_result *out,
                  sg_err *err);
    void (*destroy)(void *state);
} sg_node_attestor_server;

/* The built-ins, one file each. */
extern const sg_workload_attestor sg_unix_workload_attestor;        /* workload/unix.c */
extern const sg_node_attestor_agent sg_join_token_agent_attestor;   /* node/join_token_agent.c */
extern const sg_node_attestor_server sg_join_token_server_attestor; /* node/join_token_server.c */

/* Built-ins by name; NULL when sigil has no such plugin. (attestors/registry.c) */
const sg_workload_attestor *sg_registry_workload(const char *name);
const sg_node_attestor_agent *sg_registry_node_agent(const char *name);
const sg_node_attestor_server *sg_registry_node_server(const char *name);

#endif
