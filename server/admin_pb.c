/*
 * Admin message helpers shared by the admin API handlers and the CLI.
 * Bundle conversions borrow every string and byte array; only the arrays
 * of pointers and element structs are allocated.
 */
#include "server/admin_pb.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sg_admin_pb_reply(sg_rpc_call *call, const ProtobufCMessage *msg)
{
    if (sg_rpc_call_send(call, msg) < 0) {
        sg_rpc_call_finish(call, GRPC_STATUS_CANCELLED, "call is over");
        return;
    }
    sg_rpc_call_finish(call, GRPC_STATUS_OK, NULL);
}

void sg_admin_pb_fail(sg_rpc_call *call, sg_err *err, int rc)
{
    if (err->code == 0)
        sg_err_set(err, rc, "%s", sg_strerror(rc));
    sg_rpc_call_finish_err(call, err);
}

sg_ca *sg_admin_pb_ready_ca(sg_rpc_call *call, sg_server *s)
{
    sg_ca *ca = sg_server_ca(s);
    sg_err err;

    if (ca == NULL) {
        sg_err_set(&err, SG_EUNAVAIL, "the CA is not ready");
        sg_rpc_call_finish_err(call, &err);
    }
    return ca;
}

int sg_admin_pb_register(sg_rpc_server *srv, sg_server *s, const sg_admin_pb_method *m, size_t n,
                         sg_err *err)
{
    for (size_t i = 0; i < n; i++) {
        int rc = sg_rpc_server_add_method(srv, &sigil__admin__v1__admin__descriptor, m[i].method,
                                          SG_RPC_UNARY, m[i].handler, s, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int sg_admin_pb_bundle_init(sg_admin_pb_bundle *p, const sg_bundle *b)
{
    memset(p, 0, sizeof *p);
    sigil__admin__v1__bundle__init(&p->msg);
    snprintf(p->td_id, sizeof p->td_id, "spiffe://%s", b->trust_domain ? b->trust_domain : "");
    p->x509 = calloc(b->nx509 ? b->nx509 : 1, sizeof *p->x509);
    p->keys = calloc(b->njwt ? b->njwt : 1, sizeof *p->keys);
    p->keyp = calloc(b->njwt ? b->njwt : 1, sizeof *p->keyp);
    if (p->x509 == NULL || p->keys == NULL || p->keyp == NULL) {
        sg_admin_pb_bundle_cleanup(p);
        return SG_ENOMEM;
    }
    for (size_t i = 0; i < b->nx509; i++) {
        p->x509[i].data = b->x509[i].data;
        p->x509[i].len = b->x509[i].len;
    }
    for (size_t i = 0; i < b->njwt; i++) {
        sigil__admin__v1__jwtkey__init(&p->keys[i]);
        p->keys[i].kid = b->jwt[i].kid;
        p->keys[i].public_key.data = b->jwt[i].spki.data;
        p->keys[i].public_key.len = b->jwt[i].spki.len;
        p->keys[i].expires_at = b->jwt[i].expires_at;
        p->keyp[i] = &p->keys[i];
    }
    p->msg.trust_domain = p->td_id;
    p->msg.n_x509_authorities = b->nx509;
    p->msg.x509_authorities = p->x509;
    p->msg.n_jwt_authorities = b->njwt;
    p->msg.jwt_authorities = p->keyp;
    p->msg.sequence = b->sequence;
    p->msg.refresh_hint = b->refresh_hint;
    return 0;
}

void sg_admin_pb_bundle_cleanup(sg_admin_pb_bundle *p)
{
    free(p->x509);
    free(p->keys);
    free(p->keyp);
    p->x509 = NULL;
    p->keys = NULL;
    p->keyp = NULL;
}

int sg_admin_pb_bundle_view(const Sigil__Admin__V1__Bundle *m, const char *td, sg_bundle *out,
                            sg_err *err)
{
    sg_bundle b;

    memset(&b, 0, sizeof b);
    b.trust_domain = (char *)(uintptr_t)td;
    b.x509 = calloc(m->n_x509_authorities ? m->n_x509_authorities : 1, sizeof *b.x509);
    b.jwt = calloc(m->n_jwt_authorities ? m->n_jwt_authorities : 1, sizeof *b.jwt);
    if (b.x509 == NULL || b.jwt == NULL) {
        sg_admin_pb_bundle_view_cleanup(&b);
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < m->n_x509_authorities; i++) {
        b.x509[i].data = m->x509_authorities[i].data;
        b.x509[i].len = m->x509_authorities[i].len;
    }
    for (size_t i = 0; i < m->n_jwt_authorities; i++) {
        b.jwt[i].kid = m->jwt_authorities[i]->kid;
        b.jwt[i].spki.data = m->jwt_authorities[i]->public_key.data;
        b.jwt[i].spki.len = m->jwt_authorities[i]->public_key.len;
        b.jwt[i].expires_at = m->jwt_authorities[i]->expires_at;
    }
    b.nx509 = m->n_x509_authorities;
    b.njwt = m->n_jwt_authorities;
    b.sequence = m->sequence;
    b.refresh_hint = m->refresh_hint;
    *out = b;
    return 0;
}

void sg_admin_pb_bundle_view_cleanup(sg_bundle *b)
{
    free(b->x509);
    free(b->jwt);
    memset(b, 0, sizeof *b);
}
