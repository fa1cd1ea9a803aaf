/*
 * Admin API methods for JWT-SVIDs and identities minted outside a node:
 * the local JWT authority (GetJWTAuthorities, Prepare/Activate/Taint/
 * RevokeJWTAuthority), MintJWTSVID and MintX509SVID. Handlers run on the
 * admin completion-queue threads.
 */
#ifndef SG_SERVER_ADMIN_JWT_H
#define SG_SERVER_ADMIN_JWT_H

#include "common/err.h"
#include "common/rpc.h"
#include "server/server.h"

/* Registers the methods above on srv (before it starts). s must outlive srv. */
int sg_admin_jwt_register(sg_rpc_server *srv, sg_server *s, sg_err *err);

#endif
