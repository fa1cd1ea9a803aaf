/*
 * Admin API federation handlers. Trust domains may be given as "td" or
 * "spiffe://td" and are answered as "spiffe://td"; the server's own trust
 * domain is refused everywhere. Every change that can alter what agents
 * see marks the Sync streams for a push; relationship changes wake the
 * refresher so a new or changed relationship is fetched at once.
 */
#include "server/admin_federation.h"

#include "common/bundle.h"
#include "common/log.h"
#include "common/spiffeid.h"
#include "server/admin_pb.h"
#include "server/federation.h"
#include "server/node_api.h"
#include "sigil/admin/v1/admin.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TD_ID_MAX (SG_TRUST_DOMAIN_MAX + 16)

static void push_all(sg_server *s)
{
    sg_sync_hub *hub = sg_server_sync_hub(s);

    if (hub != NULL)
        sg_sync_hub_changed(hub, NULL, false);
}

/* v ("td" or "spiffe://td") as a trust domain other than the server's own, into td. */
static int foreign_td(sg_server *s, const char *v, char td[SG_TRUST_DOMAIN_MAX + 1], sg_err *err)
{
    return sg_federation_foreign_td("trust domain", v, sg_server_config_get(s)->trust_domain, td,
                                    err);
}

/* ------------------------------------------------------------ bundle <-> protobuf */

static void reply_bundle(sg_rpc_call *call, const sg_bundle *b)
{
    sg_admin_pb_bundle p;
    sg_err err;

    if (sg_admin_pb_bundle_init(&p, b) < 0) {
        sg_err_set(&err, SG_ENOMEM, "out of memory");
        sg_rpc_call_finish_err(call, &err);
        return;
    }
    sg_admin_pb_reply(call, &p.msg.base);
    sg_admin_pb_bundle_cleanup(&p);
}

/*
 * Converts pb into a bundle of trust domain td, checking it through the
 * same strict JWKS decoder a fetched bundle goes through.
 */
static int bundle_from_pb(const Sigil__Admin__V1__Bundle *pb, const char *td, sg_bundle *out,
                          sg_err *err)
{
    sg_bundle b;
    char *json = NULL;
    sg_err perr;
    int rc;

    if (pb->n_x509_authorities == 0 && pb->n_jwt_authorities == 0)
        return sg_err_set(err, SG_EINVAL, "bundle of \"%s\" has no X.509 or JWT authorities", td);
    rc = sg_admin_pb_bundle_view(pb, td, &b, err);
    if (rc < 0)
        return rc;
    sg_err_clear(&perr);
    rc = sg_bundle_to_jwks(&b, &json, &perr);
    if (rc == 0)
        rc = sg_bundle_from_jwks(td, json, strlen(json), out, &perr);
    if (rc < 0)
        sg_err_set(err, SG_EINVAL, "invalid bundle for \"spiffe://%s\": %s", td, perr.msg);
    free(json);
    sg_admin_pb_bundle_view_cleanup(&b);
    return rc;
}

/* Stores b as td's bundle; sequence 0 means the stored one plus one. */
static int store_bundle(sg_server *s, sg_bundle *b, sg_err *err)
{
    sg_datastore *ds = sg_server_datastore(s);
    sg_fed_bundle_rec old;
    char *json = NULL;
    int rc;

    if (b->sequence == 0) {
        b->sequence = 1;
        if (sg_ds_fed_bundle_get(ds, b->trust_domain, &old, err) == 0) {
            b->sequence = old.sequence + 1;
            sg_fed_bundle_rec_cleanup(&old);
        }
    }
    rc = sg_bundle_to_jwks(b, &json, err);
    if (rc == 0)
        rc = sg_ds_fed_bundle_put(ds, b->trust_domain, json, b->sequence, NULL, err);
    free(json);
    if (rc == 0) {
        sg_log_info("federated bundle set trust_domain=%s sequence=%llu", b->trust_domain,
                    (unsigned long long)b->sequence);
        push_all(s);
        /* An https_spiffe relationship waiting for this bundle can fetch now. */
        sg_federation_kick(sg_server_federation(s));
    }
    return rc;
}

/* ------------------------------------------------------------ federated bundles */

static void h_set_bundle(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const Sigil__Admin__V1__SetFederatedBundleRequest *r = (const void *)req;
    sg_server *s = user;
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_bundle b;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    memset(&b, 0, sizeof b);
    if (r->bundle == NULL) {
        rc = sg_err_set(&err, SG_EINVAL, "bundle is required");
    } else {
        rc = foreign_td(s, r->bundle->trust_domain, td, &err);
        if (rc == 0)
            rc = bundle_from_pb(r->bundle, td, &b, &err);
        if (rc == 0)
            rc = store_bundle(s, &b, &err);
    }
    if (rc < 0)
        sg_admin_pb_fail(call, &err, rc);
    else
        reply_bundle(call, &b);
    sg_bundle_cleanup(&b);
}

static void h_list_bundles(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    Sigil__Admin__V1__ListFederatedBundlesResponse resp =
        SIGIL__ADMIN__V1__LIST_FEDERATED_BUNDLES_RESPONSE__INIT;
    sg_server *s = user;
    sg_fed_bundle_rec *recs = NULL;
    sg_bundle *bs = NULL;
    sg_admin_pb_bundle *pbs = NULL;
    Sigil__Admin__V1__Bundle **ptrs = NULL;
    size_t n = 0, ok = 0;
    sg_err err;
    int rc;

    (void)req;
    sg_err_clear(&err);
    rc = sg_ds_fed_bundle_list(sg_server_datastore(s), &recs, &n, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    bs = calloc(n ? n : 1, sizeof *bs);
    pbs = calloc(n ? n : 1, sizeof *pbs);
    ptrs = calloc(n ? n : 1, sizeof *ptrs);
    if (bs == NULL || pbs == NULL || ptrs == NULL) {
        rc = sg_err_set(&err, SG_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        sg_err perr;
        if (sg_bundle_from_jwks(recs[i].trust_domain, recs[i].jwks, strlen(recs[i].jwks), &bs[ok],
                                &perr) < 0) {
            sg_log_warn("stored bundle of %s cannot be read: %s", recs[i].trust_domain, perr.msg);
            continue;
        }
        if (bs[ok].sequence < recs[i].sequence)
            bs[ok].sequence = recs[i].sequence;
        if (sg_admin_pb_bundle_init(&pbs[ok], &bs[ok]) < 0) {
            sg_bundle_cleanup(&bs[ok]);
            rc = sg_err_set(&err, SG_ENOMEM, "out of memory");
            goto out;
        }
        ptrs[ok] = &pbs[ok].msg;
        ok++;
    }
    resp.n_bundles = ok;
    resp.bundles = ptrs;
out:
    if (rc < 0)
        sg_admin_pb_fail(call, &err, rc);
    else
        sg_admin_pb_reply(call, &resp.base);
    for (size_t i = 0; i < ok; i++) {
        sg_admin_pb_bundle_cleanup(&pbs[i]);
        sg_bundle_cleanup(&bs[i]);
    }
    free(bs);
    free(pbs);
    free(ptrs);
    sg_fed_bundle_rec_list_free(recs, n);
}

static void h_delete_bundle(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const Sigil__Admin__V1__DeleteFederatedBundleRequest *r = (const void *)req;
    Sigil__Admin__V1__DeleteFederatedBundleResponse resp =
        SIGIL__ADMIN__V1__DELETE_FEDERATED_BUNDLE_RESPONSE__INIT;
    sg_server *s = user;
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_fed_delete_mode mode = SG_FED_DELETE_RESTRICT;
    const char *m = r->mode ? r->mode : "";
    size_t changed = 0;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    rc = foreign_td(s, r->trust_domain, td, &err);
    if (rc == 0) {
        if (m[0] == '\0' || strcmp(m, "restrict") == 0)
            mode = SG_FED_DELETE_RESTRICT;
        else if (strcmp(m, "delete") == 0)
            mode = SG_FED_DELETE_DELETE;
        else if (strcmp(m, "dissociate") == 0)
            mode = SG_FED_DELETE_DISSOCIATE;
        else
            rc =
                sg_err_set(&err, SG_EINVAL,
                           "unknown delete mode \"%.64s\" (use restrict, delete or dissociate)", m);
    }
    if (rc == 0)
        rc = sg_ds_fed_bundle_delete(sg_server_datastore(s), td, mode, &changed, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    sg_log_info("federated bundle deleted trust_domain=%s mode=%s entries_changed=%zu", td,
                m[0] ? m : "restrict", changed);
    if (changed > 0)
        sg_server_entries_changed(s);
    push_all(s);
    sg_admin_pb_reply(call, &resp.base);
}

/* ------------------------------------------------------------ relationships */

/* Checks pb and converts it (borrowing pb's strings) into r with td as its trust domain. */
static int rel_from_pb(sg_server *s, const Sigil__Admin__V1__FederationRelationship *pb, char *td,
                       sg_fed_rel *r, sg_err *err)
{
    int rc = foreign_td(s, pb->trust_domain, td, err);

    if (rc < 0)
        return rc;
    memset(r, 0, sizeof *r);
    r->trust_domain = td;
    r->url = pb->bundle_endpoint_url;
    r->profile = pb->bundle_endpoint_profile;
    r->endpoint_spiffe_id = pb->endpoint_spiffe_id;
    if (r->endpoint_spiffe_id != NULL && r->endpoint_spiffe_id[0] == '\0')
        r->endpoint_spiffe_id = NULL;
    return 0;
}

/* A protobuf view of r (borrowed strings). */
static void pb_rel(Sigil__Admin__V1__FederationRelationship *m, const sg_fed_rel *r, char *td_id,
                   size_t td_len)
{
    sigil__admin__v1__federation_relationship__init(m);
    snprintf(td_id, td_len, "spiffe://%s", r->trust_domain);
    m->trust_domain = td_id;
    m->bundle_endpoint_url = r->url;
    m->bundle_endpoint_profile = r->profile;
    if (r->endpoint_spiffe_id != NULL)
        m->endpoint_spiffe_id = r->endpoint_spiffe_id;
}

/* Answers with the stored relationship and, when there is one, its bundle. */
static void reply_rel(sg_rpc_call *call, sg_server *s, const char *td)
{
    Sigil__Admin__V1__FederationRelationship m;
    char td_id[TD_ID_MAX];
    sg_fed_rel r;
    sg_fed_bundle_rec rec;
    sg_bundle b;
    sg_admin_pb_bundle pb;
    bool have_bundle = false;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    rc = sg_ds_fed_rel_get(sg_server_datastore(s), td, &r, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    pb_rel(&m, &r, td_id, sizeof td_id);
    memset(&b, 0, sizeof b);
    if (sg_ds_fed_bundle_get(sg_server_datastore(s), td, &rec, &err) == 0) {
        if (sg_bundle_from_jwks(td, rec.jwks, strlen(rec.jwks), &b, &err) == 0 &&
            sg_admin_pb_bundle_init(&pb, &b) == 0) {
            pb.msg.sequence = rec.sequence > b.sequence ? rec.sequence : b.sequence;
            m.trust_domain_bundle = &pb.msg;
            have_bundle = true;
        }
        sg_fed_bundle_rec_cleanup(&rec);
    }
    sg_admin_pb_reply(call, &m.base);
    if (have_bundle)
        sg_admin_pb_bundle_cleanup(&pb);
    sg_bundle_cleanup(&b);
    sg_fed_rel_cleanup(&r);
}

static void write_rel(sg_rpc_call *call, const ProtobufCMessage *req, sg_server *s, bool update)
{
    const Sigil__Admin__V1__FederationRelationship *pb = (const void *)req;
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_fed_rel r;
    sg_bundle b;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    memset(&b, 0, sizeof b);
    rc = rel_from_pb(s, pb, td, &r, &err);
    /* The initial bundle is checked before anything is written. */
    if (rc == 0 && pb->trust_domain_bundle != NULL)
        rc = bundle_from_pb(pb->trust_domain_bundle, td, &b, &err);
    if (rc == 0)
        rc = sg_ds_fed_rel_put(sg_server_datastore(s), &r, update, &err);
    if (rc == 0 && pb->trust_domain_bundle != NULL)
        rc = store_bundle(s, &b, &err);
    sg_bundle_cleanup(&b);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    sg_log_info("federation relationship %s trust_domain=%s url=%s profile=%s",
                update ? "updated" : "created", td, r.url, r.profile);
    sg_federation_kick(sg_server_federation(s));
    reply_rel(call, s, td);
}

static void h_create_rel(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    write_rel(call, req, user, false);
}

static void h_update_rel(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    write_rel(call, req, user, true);
}

static void h_get_rel(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const Sigil__Admin__V1__FederationRelationshipRequest *r = (const void *)req;
    sg_server *s = user;
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_err err;
    int rc;

    sg_err_clear(&err);
    rc = foreign_td(s, r->trust_domain, td, &err);
    if (rc < 0)
        sg_admin_pb_fail(call, &err, rc);
    else
        reply_rel(call, s, td);
}

static void h_list_rels(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    Sigil__Admin__V1__ListFederationRelationshipsResponse resp =
        SIGIL__ADMIN__V1__LIST_FEDERATION_RELATIONSHIPS_RESPONSE__INIT;
    sg_server *s = user;
    sg_fed_rel *rels = NULL;
    Sigil__Admin__V1__FederationRelationship *ms = NULL, **ptrs = NULL;
    char(*ids)[TD_ID_MAX] = NULL;
    size_t n = 0;
    sg_err err;
    int rc;

    (void)req;
    sg_err_clear(&err);
    rc = sg_ds_fed_rel_list(sg_server_datastore(s), &rels, &n, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    ms = calloc(n ? n : 1, sizeof *ms);
    ptrs = calloc(n ? n : 1, sizeof *ptrs);
    ids = calloc(n ? n : 1, sizeof *ids);
    if (ms == NULL || ptrs == NULL || ids == NULL) {
        sg_err_set(&err, SG_ENOMEM, "out of memory");
        sg_rpc_call_finish_err(call, &err);
    } else {
        for (size_t i = 0; i < n; i++) {
            pb_rel(&ms[i], &rels[i], ids[i], sizeof ids[i]);
            ptrs[i] = &ms[i];
        }
        resp.n_relationships = n;
        resp.relationships = ptrs;
        sg_admin_pb_reply(call, &resp.base);
    }
    free(ms);
    free(ptrs);
    free(ids);
    sg_fed_rel_list_free(rels, n);
}

static void h_delete_rel(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const Sigil__Admin__V1__FederationRelationshipRequest *r = (const void *)req;
    Sigil__Admin__V1__DeleteFederationRelationshipResponse resp =
        SIGIL__ADMIN__V1__DELETE_FEDERATION_RELATIONSHIP_RESPONSE__INIT;
    sg_server *s = user;
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_err err;
    int rc;

    sg_err_clear(&err);
    rc = foreign_td(s, r->trust_domain, td, &err);
    if (rc == 0)
        rc = sg_ds_fed_rel_delete(sg_server_datastore(s), td, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    /* As SPIRE: the bundle stays until `bundle delete`; only refreshing stops. */
    sg_log_info("federation relationship deleted trust_domain=%s", td);
    sg_federation_kick(sg_server_federation(s));
    sg_admin_pb_reply(call, &resp.base);
}

static void h_refresh(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const Sigil__Admin__V1__FederationRelationshipRequest *r = (const void *)req;
    sg_server *s = user;
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_bundle b;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    memset(&b, 0, sizeof b);
    rc = foreign_td(s, r->trust_domain, td, &err);
    if (rc == 0)
        rc = sg_federation_refresh(sg_server_federation(s), td, &b, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    reply_bundle(call, &b);
    sg_bundle_cleanup(&b);
}

/* ------------------------------------------------------------ entries */

int sg_admin_federates_with_check(char *const *v, size_t n, const char *own_td, sg_err *err)
{
    char td[SG_TRUST_DOMAIN_MAX + 1];

    for (size_t i = 0; i < n; i++) {
        int rc = sg_federation_foreign_td("federates_with", v[i], own_td, td, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int sg_admin_federates_with_copy(char *const *v, size_t n, char ***out, size_t *nout)
{
    char **d;

    *out = NULL;
    *nout = 0;
    if (n == 0)
        return 0;
    d = calloc(n, sizeof *d);
    if (d == NULL)
        return SG_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        char td[SG_TRUST_DOMAIN_MAX + 1];
        sg_err e;
        size_t len;
        if (sg_trust_domain_parse(v[i], td, &e) < 0)
            td[0] = '\0';
        len = strlen(td) + sizeof "spiffe://";
        d[i] = malloc(len);
        if (d[i] == NULL) {
            for (size_t j = 0; j < i; j++)
                free(d[j]);
            free(d);
            return SG_ENOMEM;
        }
        snprintf(d[i], len, "spiffe://%s", td);
    }
    *out = d;
    *nout = n;
    return 0;
}

/* ------------------------------------------------------------ registration */

static const sg_admin_pb_method methods[] = {
    {"SetFederatedBundle", h_set_bundle},
    {"ListFederatedBundles", h_list_bundles},
    {"DeleteFederatedBundle", h_delete_bundle},
    {"CreateFederationRelationship", h_create_rel},
    {"UpdateFederationRelationship", h_update_rel},
    {"ListFederationRelationships", h_list_rels},
    {"GetFederationRelationship", h_get_rel},
    {"DeleteFederationRelationship", h_delete_rel},
    {"RefreshBundle", h_refresh},
};

int sg_admin_federation_register(sg_rpc_server *srv, sg_server *s, sg_err *err)
{
    return sg_admin_pb_register(srv, s, methods, sizeof methods / sizeof methods[0], err);
}
