/*
 * Admin API methods for federation: federated bundles (`bundle
 * set|list|delete`) and federation relationships (`federation
 * create|list|show|update|delete|refresh`).
 */
#ifndef SG_SERVER_ADMIN_FEDERATION_H
#define SG_SERVER_ADMIN_FEDERATION_H

#include "common/err.h"
#include "common/rpc.h"
#include "server/server.h"

/* Registers the federation methods of sigil.admin.v1.Admin on srv. s must outlive srv. */
int sg_admin_federation_register(sg_rpc_server *srv, sg_server *s, sg_err *err);

/*
 * Entries' federates_with as SPIRE checks them: each a valid trust domain
 * ("td" or "spiffe://td") other than own_td. Errors quote the value.
 */
int sg_admin_federates_with_check(char *const *v, size_t n, const char *own_td, sg_err *err);

/* Copies checked values as "spiffe://<td>" into *out (malloc'd); SG_ENOMEM. */
int sg_admin_federates_with_copy(char *const *v, size_t n, char ***out, size_t *nout);

#endif
