/*
 * What the admin API handlers and the sigil-server CLI share about admin
 * messages: finishing a handler's call with its reply or an sg_err,
 * registering a table of handlers, and converting bundles between
 * sigil.admin.v1.Bundle and sg_bundle in either direction.
 */
#ifndef SG_SERVER_ADMIN_PB_H
#define SG_SERVER_ADMIN_PB_H

#include "common/bundle.h"
#include "common/err.h"
#include "common/rpc.h"
#include "common/spiffeid.h"
#include "server/server.h"
#include "sigil/admin/v1/admin.pb-c.h"

#include <stddef.h>

/* Sends msg (borrowed) and finishes the call OK, or CANCELLED when the peer is gone. */
void sg_admin_pb_reply(sg_rpc_call *call, const ProtobufCMessage *msg);

/* Finishes the call with err's status and text; when err holds no error, with rc's. */
void sg_admin_pb_fail(sg_rpc_call *call, sg_err *err, int rc);

/* The CA of s, or NULL after finishing the call UNAVAILABLE. */
sg_ca *sg_admin_pb_ready_ca(sg_rpc_call *call, sg_server *s);

/* One row of a handler table: an Admin method and its unary handler. */
typedef struct sg_admin_pb_method {
    const char *method;
    sg_rpc_handler handler;
} sg_admin_pb_method;

/* Registers the n methods of m (borrowed) on srv, each with user data s. */
int sg_admin_pb_register(sg_rpc_server *srv, sg_server *s, const sg_admin_pb_method *m, size_t n,
                         sg_err *err);

/* A Bundle message that borrows an sg_bundle's data; trust_domain is "spiffe://<td>". */
typedef struct sg_admin_pb_bundle {
    Sigil__Admin__V1__Bundle msg;
    char td_id[SG_TRUST_DOMAIN_MAX + 16];
    ProtobufCBinaryData *x509;
    Sigil__Admin__V1__JWTKey *keys;
    Sigil__Admin__V1__JWTKey **keyp;
} sg_admin_pb_bundle;

/* Points p->msg at b, which must outlive p. SG_ENOMEM; p needs no cleanup then. */
int sg_admin_pb_bundle_init(sg_admin_pb_bundle *p, const sg_bundle *b);
void sg_admin_pb_bundle_cleanup(sg_admin_pb_bundle *p);

/*
 * The reverse: *out borrows m's data and td (the trust domain name) and is
 * freed only with sg_admin_pb_bundle_view_cleanup, never sg_bundle_cleanup.
 */
int sg_admin_pb_bundle_view(const Sigil__Admin__V1__Bundle *m, const char *td, sg_bundle *out,
                            sg_err *err);
void sg_admin_pb_bundle_view_cleanup(sg_bundle *b);

#endif
