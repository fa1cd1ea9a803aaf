/*
 * Admin API handlers for the local JWT authority and for SVIDs minted
 * outside a node (SPIRE's `jwt mint` and `x509 mint`, for CI jobs). Minted
 * SPIFFE IDs must be workload IDs of the server's trust domain; every
 * failure ends through sg_rpc_call_finish_err with the sg_err text.
 */
#include "server/admin_jwt.h"

#include "common/spiffeid.h"
#include "common/x509.h"
#include "server/admin_pb.h"
#include "server/ca.h"
#include "server/jwt_authority.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Most DNS names one minted X509-SVID may carry. */
#define MINT_DNS_MAX 100

/* A workload SPIFFE ID of trust domain td: never one of the reserved server/agent paths. */
static int check_mint_id(const char *id, const char *td, sg_err *err)
{
    sg_spiffeid sid;
    sg_err perr;

    if (id == NULL || id[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "a SPIFFE ID is required (-spiffeID)");
    sg_err_clear(&perr);
    if (sg_spiffeid_parse(id, &sid, &perr) < 0)
        return sg_err_set(err, SG_EINVAL, "invalid SPIFFE ID: %s", perr.msg);
    if (!sg_spiffeid_member_of(&sid, td))
        return sg_err_set(err, SG_EINVAL, "SPIFFE ID \"%.128s\" is not in the trust domain \"%s\"",
                          id, td);
    if (sid.path[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "SPIFFE ID \"%.128s\" has no path", id);
    if (sg_spiffeid_is_reserved(&sid))
        return sg_err_set(err, SG_EINVAL,
                          "SPIFFE ID \"%.128s\" is reserved: paths under /spire belong to servers "
                          "and agents",
                          id);
    return 0;
}

static int check_ttl(int32_t ttl, sg_err *err)
{
    if (ttl < 0)
        return sg_err_set(err, SG_EINVAL, "ttl must not be negative, got %d", (int)ttl);
    return 0;
}

static sg_jwt_authority *ready_jwt(sg_rpc_call *call, sg_server *s)
{
    sg_jwt_authority *a = sg_server_jwt(s);
    sg_err err;

    if (a == NULL) {
        sg_err_set(&err, SG_EUNAVAIL, "the JWT authority is not ready");
        sg_rpc_call_finish_err(call, &err);
    }
    return a;
}

/* ------------------------------------------------------------ JWT authorities */

static void pb_authority(Sigil__Admin__V1__JWTAuthority *p, const sg_jwt_authority_info *a)
{
    sigil__admin__v1__jwtauthority__init(p);
    p->authority_id = (char *)(uintptr_t)a->kid;
    p->state = (char *)(uintptr_t)sg_jwt_key_state_name(a->state);
    p->expires_at = a->expires_at;
    p->issued_at = a->issued_at;
    p->tainted = a->tainted;
    p->tainted_at = a->tainted_at;
    p->public_key.data = a->spki.data;
    p->public_key.len = a->spki.len;
}

static void h_get_jwt_authorities(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    Sigil__Admin__V1__JWTAuthorities resp = SIGIL__ADMIN__V1__JWTAUTHORITIES__INIT;
    Sigil__Admin__V1__JWTAuthority *items = NULL, **ptrs = NULL;
    sg_jwt_authority_info *v = NULL;
    sg_jwt_authority *a = ready_jwt(call, user);
    size_t n = 0;
    sg_err err;
    int rc;

    (void)req;
    if (a == NULL)
        return;
    sg_err_clear(&err);
    rc = sg_jwt_authority_list(a, &v, &n, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    items = calloc(n ? n : 1, sizeof *items);
    ptrs = calloc(n ? n : 1, sizeof *ptrs);
    if (items == NULL || ptrs == NULL) {
        sg_err_set(&err, SG_ENOMEM, "out of memory");
        sg_rpc_call_finish_err(call, &err);
    } else {
        for (size_t i = 0; i < n; i++) {
            pb_authority(&items[i], &v[i]);
            ptrs[i] = &items[i];
        }
        resp.n_authorities = n;
        resp.authorities = ptrs;
        sg_admin_pb_reply(call, &resp.base);
    }
    free(items);
    free(ptrs);
    sg_jwt_authority_infos_free(v, n);
}

typedef int (*jwt_op)(sg_jwt_authority *a, const char *kid, int64_t now, sg_jwt_authority_info *out,
                      sg_err *err);

static int prepare_op(sg_jwt_authority *a, const char *kid, int64_t now, sg_jwt_authority_info *out,
                      sg_err *err)
{
    (void)kid;
    return sg_jwt_authority_prepare(a, now, out, err);
}

/* One operator action, then the key it acted on. Key changes reach agents via the hub's poll. */
static void jwt_action(sg_rpc_call *call, const char *kid, void *user, jwt_op op)
{
    Sigil__Admin__V1__JWTAuthorityResponse resp = SIGIL__ADMIN__V1__JWTAUTHORITY_RESPONSE__INIT;
    Sigil__Admin__V1__JWTAuthority pa;
    sg_jwt_authority_info info;
    sg_jwt_authority *a = ready_jwt(call, user);
    sg_err err;
    int rc;

    if (a == NULL)
        return;
    sg_err_clear(&err);
    rc = op(a, kid, (int64_t)time(NULL), &info, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    pb_authority(&pa, &info);
    resp.authority = &pa;
    sg_admin_pb_reply(call, &resp.base);
    sg_jwt_authority_info_cleanup(&info);
}

static const char *kid_of(const ProtobufCMessage *req)
{
    return ((const Sigil__Admin__V1__JWTAuthorityRequest *)req)->authority_id;
}

static void h_prepare_jwt_authority(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    (void)req;
    jwt_action(call, NULL, user, prepare_op);
}

static void h_activate_jwt_authority(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    jwt_action(call, kid_of(req), user, sg_jwt_authority_activate);
}

static void h_taint_jwt_authority(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    jwt_action(call, kid_of(req), user, sg_jwt_authority_taint);
}

static void h_revoke_jwt_authority(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    jwt_action(call, kid_of(req), user, sg_jwt_authority_revoke);
}

/* ------------------------------------------------------------ mint */

static void h_mint_jwt_svid(sg_rpc_call *call, const ProtobufCMessage *reqm, void *user)
{
    const Sigil__Admin__V1__MintJWTSVIDRequest *req =
        (const Sigil__Admin__V1__MintJWTSVIDRequest *)reqm;
    Sigil__Admin__V1__MintJWTSVIDResponse resp = SIGIL__ADMIN__V1__MINT_JWTSVIDRESPONSE__INIT;
    sg_server *s = user;
    sg_jwt_authority *a = ready_jwt(call, s);
    sg_jwt_svid svid;
    sg_err err;
    int rc;

    if (a == NULL)
        return;
    sg_err_clear(&err);
    rc = check_mint_id(req->spiffe_id, sg_server_config_get(s)->trust_domain, &err);
    if (rc == 0)
        rc = sg_jwt_audience_check((const char *const *)req->audience, req->n_audience, &err);
    if (rc == 0)
        rc = check_ttl(req->ttl, &err);
    if (rc == 0)
        rc = sg_jwt_authority_sign(a, req->spiffe_id, (const char *const *)req->audience,
                                   req->n_audience, req->ttl, (int64_t)time(NULL), &svid, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    resp.token = svid.token;
    resp.expires_at = svid.expires_at;
    sg_admin_pb_reply(call, &resp.base);
    sg_jwt_svid_cleanup(&svid);
}

static void h_mint_x509_svid(sg_rpc_call *call, const ProtobufCMessage *reqm, void *user)
{
    const Sigil__Admin__V1__MintX509SVIDRequest *req =
        (const Sigil__Admin__V1__MintX509SVIDRequest *)reqm;
    Sigil__Admin__V1__MintX509SVIDResponse resp = SIGIL__ADMIN__V1__MINT_X509_SVIDRESPONSE__INIT;
    ProtobufCBinaryData chain_bins[4], *root_bins = NULL;
    sg_server *s = user;
    const sg_server_config *cfg = sg_server_config_get(s);
    sg_ca *ca = sg_admin_pb_ready_ca(call, s);
    sg_ca_chain chain;
    sg_der spki = {0}, *roots = NULL;
    size_t nroots = 0;
    sg_err err, e2;
    int rc;

    if (ca == NULL)
        return;
    memset(&chain, 0, sizeof chain);
    sg_err_clear(&err);
    rc = check_mint_id(req->spiffe_id, cfg->trust_domain, &err);
    if (rc == 0)
        rc = check_ttl(req->ttl, &err);
    if (rc == 0 && req->n_dns_names > MINT_DNS_MAX)
        rc = sg_err_set(&err, SG_EINVAL, "too many DNS names: %zu (at most %d)", req->n_dns_names,
                        MINT_DNS_MAX);
    if (rc == 0 && req->csr.len == 0)
        rc = sg_err_set(&err, SG_EINVAL, "a CSR is required");
    if (rc == 0) {
        sg_err_clear(&e2);
        rc = sg_x509_csr_public_key(req->csr.data, req->csr.len, &spki, &e2);
        if (rc < 0)
            rc = sg_err_set(&err, SG_EINVAL, "invalid CSR: %s", e2.msg);
    }
    if (rc == 0) {
        sg_ca_svid_params p = {
            .spiffe_id = req->spiffe_id,
            .dns = (const char *const *)req->dns_names,
            .ndns = req->n_dns_names,
            .ttl_s = req->ttl > 0 ? req->ttl : cfg->default_x509_svid_ttl_s,
        };
        rc = sg_ca_sign_svid(ca, &p, spki.data, spki.len, &chain, &err);
    }
    if (rc == 0)
        rc = sg_ca_bundle_der(ca, &roots, &nroots, &err);
    if (rc == 0 && (root_bins = calloc(nroots ? nroots : 1, sizeof *root_bins)) == NULL)
        rc = sg_err_set(&err, SG_ENOMEM, "out of memory");
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        goto out;
    }
    for (size_t i = 0; i < chain.n; i++) {
        chain_bins[i].data = chain.certs[i].data;
        chain_bins[i].len = chain.certs[i].len;
    }
    for (size_t i = 0; i < nroots; i++) {
        root_bins[i].data = roots[i].data;
        root_bins[i].len = roots[i].len;
    }
    resp.cert_chain = chain_bins;
    resp.n_cert_chain = chain.n;
    resp.expires_at = chain.not_after;
    resp.root_cas = root_bins;
    resp.n_root_cas = nroots;
    sg_admin_pb_reply(call, &resp.base);
out:
    free(root_bins);
    for (size_t i = 0; i < nroots; i++)
        sg_der_cleanup(&roots[i]);
    free(roots);
    sg_der_cleanup(&spki);
    sg_ca_chain_cleanup(&chain);
}

/* ------------------------------------------------------------ registration */

static const sg_admin_pb_method methods[] = {
    {"GetJWTAuthorities", h_get_jwt_authorities},
    {"PrepareJWTAuthority", h_prepare_jwt_authority},
    {"ActivateJWTAuthority", h_activate_jwt_authority},
    {"TaintJWTAuthority", h_taint_jwt_authority},
    {"RevokeJWTAuthority", h_revoke_jwt_authority},
    {"MintJWTSVID", h_mint_jwt_svid},
    {"MintX509SVID", h_mint_x509_svid},
};

int sg_admin_jwt_register(sg_rpc_server *srv, sg_server *s, sg_err *err)
{
    return sg_admin_pb_register(srv, s, methods, sizeof methods / sizeof methods[0], err);
}
