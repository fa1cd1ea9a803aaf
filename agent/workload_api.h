/*
 * The SPIFFE Workload API served by the agent: all seven RPCs of
 * spiffe/workload.proto (JWT parts in workload_jwt.c), the security header check, caller
 * attestation on the thread pool and the X.509 streams fed from the cache. Everything here runs
 * under the agent's state lock: on the rpc server's CQ thread, or on the loop thread for
 * thread-pool results and cache changes.
 */
#ifndef SG_AGENT_WORKLOAD_API_H
#define SG_AGENT_WORKLOAD_API_H

#include "agent/cache.h"
#include "agent/jwt_cache.h"
#include "agent/node_client.h"
#include "agent/peer.h"
#include "attestors/attestor.h"
#include "common/err.h"
#include "common/rpc.h"

#include <stddef.h>
#include <uv.h>

typedef struct sg_workload_api sg_workload_api;

/*
 * The answer to one JWT-SVID mint, under the state lock: rc 0 with svid
 * (borrowed for the call), or a negative SG_E* with err.
 */
typedef void (*sg_jwt_mint_cb)(void *user, int rc, const sg_err *err, const sg_node_jwt_svid *svid);

/*
 * Asks the server for a JWT-SVID for entry_id and aud[0..naud) (borrowed,
 * copied) without blocking. cb runs exactly once under the state lock,
 * unless this returns an error (then never).
 */
typedef int (*sg_jwt_mint_fn)(void *ctx, const char *entry_id, const char *const *aud, size_t naud,
                              sg_jwt_mint_cb cb, void *user, sg_err *err);

/* What the API works with; every pointer is borrowed and must outlive the API. */
typedef struct sg_workload_api_deps {
    uv_loop_t *loop;
    sg_cache *cache;
    sg_peer_table *peers;
    const sg_workload_attestor *const *attestors; /* at least one */
    void *const *states;                          /* states[i] from attestors[i]->configure */
    size_t nattestors;
    sg_jwt_cache *jwt_cache; /* JWT-SVIDs by entry and audience set */
    sg_jwt_mint_fn mint_jwt; /* NULL: every FetchJWTSVID miss is Unavailable */
    void *mint_ctx;
} sg_workload_api_deps;

int sg_workload_api_new(sg_workload_api **out, const sg_workload_api_deps *deps, sg_err *err);

/* Registers the seven methods of SpiffeWorkloadAPI on srv (before it starts). */
int sg_workload_api_register(sg_workload_api *api, sg_rpc_server *srv, sg_err *err);

/* Attestations still running on the thread pool. */
size_t sg_workload_api_pending(const sg_workload_api *api);

/* Frees the API once the rpc server has shut down and nothing is pending. NULL-safe. */
void sg_workload_api_free(sg_workload_api *api);

#endif
