/*
 * The admin API (proto/sigil/admin/v1/admin.proto): registration entries,
 * join tokens, agents, the bundle and health, for the sigil-server CLI over
 * the owner-only Unix socket. Handlers run on completion-queue threads and
 * use the server context's datastore and CA, which are thread-safe.
 */
#ifndef SG_SERVER_ADMIN_API_H
#define SG_SERVER_ADMIN_API_H

#include "common/err.h"
#include "common/rpc.h"
#include "server/server.h"

/* Default lifetime of a join token (seconds), as SPIRE. */
#define SG_ADMIN_TOKEN_TTL_DEFAULT 600

/*
 * Registers every method of sigil.admin.v1.Admin on srv (before it starts).
 * s is borrowed and must outlive srv.
 */
int sg_admin_api_register(sg_rpc_server *srv, sg_server *s, sg_err *err);

#endif
