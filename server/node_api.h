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

/* Most X509SVIDParams one MintX509SVIDs call may carry. */
#define SG_NODE_MINT_MAX 1000

/*
 * Registers every method of sigil.node.v1.Node on srv (before it starts).
 * s must outlive srv.
 */
int sg_node_api_register(sg_rpc_server *srv, sg_server *s, sg_err *err);

/*
 * Server internals the node API uses (implemented in server.c).
 * sg_server_authz: the authorisation index; thread-safe.
 * sg_server_node_attestor: the configured node attestor named type and its
 * state, or NULL when the configuration does not enable it.
 */
sg_authz *sg_server_authz(sg_server *s);
const sg_node_attestor_server *sg_server_node_attestor(sg_server *s, const char *type,
                                                       void **state);

#endif
