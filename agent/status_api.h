/*
 * The agent's own health, served next to the Workload API on the same
 * socket: the standard grpc.health.v1 Health/Check and sigil's
 * AgentStatus/Get. Neither needs the Workload API security header, and
 * neither attests the caller: the socket is open to every local user, so
 * the answers carry no secret (no join token, no agent ID).
 *
 * sg_agent_status is agent state: updated on the loop thread and read by
 * the handlers, both under the agent's state lock.
 */
#ifndef SG_AGENT_STATUS_API_H
#define SG_AGENT_STATUS_API_H

#include "agent/cache.h"
#include "common/err.h"
#include "common/rpc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The service names Health/Check answers for ("" is the agent as a whole). */
#define SG_STATUS_SERVICE_NAME "sigil.agent"

/* What the agent knows about its identity and its link to the server. */
typedef struct sg_agent_status {
    bool attested;                   /* an agent SVID is held */
    int64_t agent_svid_expires_at;   /* its notAfter, unix seconds; 0 when none */
    bool server_reachable;           /* the last call to the server succeeded */
    int64_t last_server_contact;     /* last successful call, unix seconds; 0 if never */
    int64_t unreachable_since;       /* first failure of the current outage; 0 while reachable */
    char last_error[SG_ERR_MSG_LEN]; /* redacted reason of the last failure; "" while reachable */
    uint64_t bundle_sequence;        /* sequence of the bundle last stored */
} sg_agent_status;

/* Records a successful call to the server at now: reachable, error cleared. */
void sg_agent_status_contact(sg_agent_status *s, int64_t now);

/*
 * Records a failed call to the server at now. The outage start is kept
 * from its first failure; msg is stored through sg_status_redact.
 */
void sg_agent_status_failure(sg_agent_status *s, int64_t now, const char *msg,
                             const char *join_token);

/*
 * Copies msg into out (len bytes, always NUL-terminated, truncated when
 * needed) with every occurrence of join_token (may be NULL or empty)
 * replaced by "<join token>" and every SPIFFE ID ("spiffe://" up to a
 * space, quote, comma, semicolon or bracket) by "<spiffe id>": agent IDs
 * embed the join token.
 */
void sg_status_redact(char *out, size_t len, const char *msg, const char *join_token);

/* Whether the agent serves: it holds an unexpired agent SVID and a trust bundle. */
bool sg_agent_status_serving(const sg_agent_status *s, bool has_bundle, int64_t now);

/* What the handlers read; every pointer is borrowed and must outlive the rpc server. */
typedef struct sg_status_api_deps {
    const sg_agent_status *status;
    const sg_cache *cache;
} sg_status_api_deps;

/*
 * Registers grpc.health.v1.Health/Check and sigil.agent.v1.AgentStatus/Get
 * on srv (before it starts). deps itself is borrowed too.
 */
int sg_status_api_register(sg_rpc_server *srv, const sg_status_api_deps *deps, sg_err *err);

#endif
