/*
 * Admin API methods for JWT-SVIDs and identities minted outside a node:
 * the local JWT authority (GetJWTAuthorities, Prepare/Activate/Taint/
 * RevokeJWTAuthority), MintJWTSVID and MintX509SVID, plus the JWT keys
 * GetBundle publishes. Handlers run on the admin completion-queue threads.
 */
#ifndef SG_SERVER_ADMIN_JWT_H
#define SG_SERVER_ADMIN_JWT_H

#include "common/err.h"
#include "common/rpc.h"
#include "server/server.h"
#include "sigil/admin/v1/admin.pb-c.h"

#include <stddef.h>

/* Registers the methods above on srv (before it starts). s must outlive srv. */
int sg_admin_jwt_register(sg_rpc_server *srv, sg_server *s, sg_err *err);

/* The JWT keys of a GetBundle reply; storage the message points into. */
typedef struct sg_admin_jwt_keys {
    Sigil__Admin__V1__JWTKey *items;
    Sigil__Admin__V1__JWTKey **ptrs;
    void *keys; /* sg_jwt_key array */
    size_t n;
} sg_admin_jwt_keys;

/*
 * Points b->jwt_authorities at the published JWT keys of s (held in k until
 * sg_admin_jwt_keys_cleanup). Leaves b unchanged on error.
 */
int sg_admin_jwt_bundle_keys(sg_server *s, Sigil__Admin__V1__Bundle *b, sg_admin_jwt_keys *k,
                             sg_err *err);
void sg_admin_jwt_keys_cleanup(sg_admin_jwt_keys *k);

#endif
