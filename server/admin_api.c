/*
 * Admin API handlers. Each one checks its request with SPIRE's rules
 * (SPIFFE IDs valid and in the server's trust domain, at least one valid
 * selector, sane DNS names, no exact duplicate), converts between the
 * generated protobuf types and sg_ types, calls the datastore or CA, and
 * finishes the call. Every failure ends through sg_rpc_call_finish_err,
 * so status codes come from the one table in common/rpc.c.
 */
#include "server/admin_api.h"

#include "server/admin_federation.h"

#include "server/admin_jwt.h"
#include "server/admin_pb.h"
#include "server/jwt_authority.h"

#include "common/selector.h"
#include "common/spiffeid.h"
#include "sigil/admin/v1/admin.pb-c.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DNS_NAME_MAX     253
#define DNS_LABEL_MAX    63
#define HINT_MAX         1024
#define TOKEN_TTL_MAX    (10 * 365 * 24 * 3600)
#define BUNDLE_REFRESH_S 300

/* ------------------------------------------------------------ checks */

static const char *str_or_empty(const char *s)
{
    return s != NULL ? s : "";
}

/* Parses id as a SPIFFE ID with a path in trust domain td; what names the field. */
static int check_id_in_td(const char *what, const char *id, const char *td, sg_err *err)
{
    sg_spiffeid sid;
    sg_err perr;
    int rc;

    if (id == NULL || id[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "%s is required", what);
    rc = sg_spiffeid_parse(id, &sid, &perr);
    if (rc < 0)
        return sg_err_set(err, SG_EINVAL, "invalid %s: %s", what, perr.msg);
    if (!sg_spiffeid_member_of(&sid, td))
        return sg_err_set(err, SG_EINVAL, "%s \"%.128s\" is not in the trust domain \"%s\"", what,
                          id, td);
    if (sid.path[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "%s \"%.128s\" has no path", what, id);
    return 0;
}

/* Like check_id_in_td, and refuses the paths reserved for servers and agents. */
static int check_workload_id(const char *what, const char *id, const char *td, sg_err *err)
{
    sg_spiffeid sid;
    int rc = check_id_in_td(what, id, td, err);

    if (rc < 0)
        return rc;
    sg_spiffeid_parse(id, &sid, NULL);
    if (sg_spiffeid_is_reserved(&sid))
        return sg_err_set(err, SG_EINVAL,
                          "%s \"%.128s\" is reserved: paths under /spire belong to servers and "
                          "agents",
                          what, id);
    return 0;
}

/* A DNS name for an X509-SVID SAN: 1-253 bytes, labels of [A-Za-z0-9-_] up to 63
 * bytes, no empty label, and "*" only as the whole leftmost label. */
static int check_dns(const char *name, sg_err *err)
{
    size_t n = strlen(name), label = 0;

    if (n == 0)
        return sg_err_set(err, SG_EINVAL, "DNS name is empty");
    if (n > DNS_NAME_MAX)
        return sg_err_set(err, SG_EINVAL, "DNS name \"%.64s...\" is longer than %d bytes", name,
                          DNS_NAME_MAX);
    for (size_t i = 0; i <= n; i++) {
        char c = name[i];
        if (c == '.' || c == '\0') {
            if (label == 0)
                return sg_err_set(err, SG_EINVAL, "DNS name \"%.128s\" has an empty label", name);
            if (label > DNS_LABEL_MAX)
                return sg_err_set(err, SG_EINVAL,
                                  "DNS name \"%.128s\" has a label longer than %d bytes", name,
                                  DNS_LABEL_MAX);
            label = 0;
            continue;
        }
        if (c == '*') {
            if (i != 0 || (name[1] != '.'))
                return sg_err_set(err, SG_EINVAL,
                                  "DNS name \"%.128s\": '*' is only allowed as the whole "
                                  "leftmost label",
                                  name);
        } else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_')) {
            return sg_err_set(err, SG_EINVAL,
                              "DNS name \"%.128s\" has an invalid character (0x%02x)", name,
                              (unsigned char)c);
        }
        label++;
    }
    return 0;
}

/* Copies the protobuf selectors into a new validated array. */
static int selectors_from_pb(Sigil__Admin__V1__Selector **pb, size_t n, sg_selector **out,
                             sg_err *err)
{
    sg_selector *v;
    int rc;

    *out = NULL;
    if (n > SG_SELECTOR_SET_MAX)
        return sg_err_set(err, SG_EINVAL, "too many selectors (%zu, at most %d)", n,
                          SG_SELECTOR_SET_MAX);
    if (n == 0)
        return 0;
    v = calloc(n, sizeof *v);
    if (v == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (pb[i] == NULL) {
            rc = sg_err_set(err, SG_EINVAL, "selector %zu is missing", i);
        } else {
            rc =
                sg_selector_init(&v[i], str_or_empty(pb[i]->type), str_or_empty(pb[i]->value), err);
            if (rc < 0 && err != NULL && err->code == 0)
                rc = sg_err_set(err, rc, "invalid selector");
        }
        if (rc < 0) {
            for (size_t j = 0; j < i; j++)
                sg_selector_cleanup(&v[j]);
            free(v);
            return rc;
        }
    }
    *out = v;
    return 0;
}

static void selectors_free(sg_selector *v, size_t n)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        sg_selector_cleanup(&v[i]);
    free(v);
}

static char *xstrdup(const char *s, int *rc)
{
    char *d = strdup(s);

    if (d == NULL)
        *rc = SG_ENOMEM;
    return d;
}

/*
 * Checks pb against SPIRE's entry rules and converts it into out (heap
 * strings; sg_entry_cleanup). need_id: UpdateEntry requires the entry id.
 */
static int entry_from_pb(const Sigil__Admin__V1__Entry *pb, const char *td, bool need_id,
                         sg_entry *out, sg_err *err)
{
    sg_entry e;
    const char *id;
    int rc = 0;

    if (pb == NULL)
        return sg_err_set(err, SG_EINVAL, "entry is required");
    id = str_or_empty(pb->id);
    if (need_id && id[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "entry id is required");
    if (strlen(id) > SG_ENTRY_ID_LEN)
        return sg_err_set(err, SG_EINVAL, "entry id \"%.64s\" is longer than %d characters", id,
                          SG_ENTRY_ID_LEN);
    rc = check_workload_id("spiffe_id", pb->spiffe_id, td, err);
    if (rc < 0)
        return rc;
    rc = check_id_in_td("parent_id", pb->parent_id, td, err);
    if (rc < 0)
        return rc;
    if (pb->n_selectors == 0)
        return sg_err_set(err, SG_EINVAL, "entry \"%.128s\" needs at least one selector",
                          pb->spiffe_id);
    if (pb->x509_svid_ttl < 0)
        return sg_err_set(err, SG_EINVAL, "x509_svid_ttl %d is negative", (int)pb->x509_svid_ttl);
    if (pb->jwt_svid_ttl < 0)
        return sg_err_set(err, SG_EINVAL, "jwt_svid_ttl %d is negative", (int)pb->jwt_svid_ttl);
    rc = sg_admin_federates_with_check(pb->federates_with, pb->n_federates_with, td, err);
    if (rc < 0)
        return rc;
    if (pb->hint != NULL && strlen(pb->hint) > HINT_MAX)
        return sg_err_set(err, SG_EINVAL, "hint is longer than %d bytes", HINT_MAX);
    for (size_t i = 0; i < pb->n_dns_names; i++) {
        rc = check_dns(str_or_empty(pb->dns_names[i]), err);
        if (rc < 0)
            return rc;
    }

    memset(&e, 0, sizeof e);
    memcpy(e.id, id, strlen(id) + 1);
    rc = selectors_from_pb(pb->selectors, pb->n_selectors, &e.selectors, err);
    if (rc < 0)
        return rc;
    e.nselectors = pb->n_selectors;
    e.spiffe_id = xstrdup(pb->spiffe_id, &rc);
    e.parent_id = xstrdup(pb->parent_id, &rc);
    if (pb->hint != NULL && pb->hint[0] != '\0')
        e.hint = xstrdup(pb->hint, &rc);
    if (pb->n_dns_names > 0) {
        e.dns_names = calloc(pb->n_dns_names, sizeof *e.dns_names);
        if (e.dns_names == NULL)
            rc = SG_ENOMEM;
        else
            e.ndns = pb->n_dns_names;
        for (size_t i = 0; i < e.ndns && rc == 0; i++)
            e.dns_names[i] = xstrdup(pb->dns_names[i], &rc);
    }
    if (rc == 0)
        rc = sg_admin_federates_with_copy(pb->federates_with, pb->n_federates_with,
                                          &e.federates_with, &e.nfederates_with);
    e.x509_svid_ttl = pb->x509_svid_ttl;
    e.jwt_svid_ttl = pb->jwt_svid_ttl;
    e.downstream = pb->downstream;
    e.admin = pb->admin;
    if (rc < 0) {
        sg_entry_cleanup(&e);
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    *out = e;
    return 0;
}

/* ------------------------------------------------------------ responses */

/* A protobuf view of one entry; points into the sg_entry, which must outlive it. */
typedef struct pb_entry {
    Sigil__Admin__V1__Entry msg;
    Sigil__Admin__V1__Selector *sels;
    Sigil__Admin__V1__Selector **selp;
} pb_entry;

static int pb_entry_init(pb_entry *p, const sg_entry *e)
{
    static const Sigil__Admin__V1__Entry init = SIGIL__ADMIN__V1__ENTRY__INIT;

    memset(p, 0, sizeof *p);
    p->msg = init;
    if (e->nselectors > 0) {
        p->sels = calloc(e->nselectors, sizeof *p->sels);
        p->selp = calloc(e->nselectors, sizeof *p->selp);
        if (p->sels == NULL || p->selp == NULL) {
            free(p->sels);
            free(p->selp);
            return SG_ENOMEM;
        }
    }
    for (size_t i = 0; i < e->nselectors; i++) {
        static const Sigil__Admin__V1__Selector sinit = SIGIL__ADMIN__V1__SELECTOR__INIT;
        p->sels[i] = sinit;
        p->sels[i].type = e->selectors[i].type;
        p->sels[i].value = e->selectors[i].value;
        p->selp[i] = &p->sels[i];
    }
    /* The generated struct has non-const char pointers; the message is only packed. */
    p->msg.id = (char *)(uintptr_t)e->id;
    p->msg.spiffe_id = e->spiffe_id;
    p->msg.parent_id = e->parent_id;
    p->msg.n_selectors = e->nselectors;
    p->msg.selectors = p->selp;
    p->msg.x509_svid_ttl = e->x509_svid_ttl;
    p->msg.jwt_svid_ttl = e->jwt_svid_ttl;
    p->msg.n_dns_names = e->ndns;
    p->msg.dns_names = e->dns_names;
    p->msg.n_federates_with = e->nfederates_with;
    p->msg.federates_with = e->federates_with;
    p->msg.revision = e->revision;
    p->msg.hint = e->hint != NULL ? e->hint : (char *)protobuf_c_empty_string;
    p->msg.created_at = e->created_at;
    p->msg.downstream = e->downstream;
    p->msg.admin = e->admin;
    return 0;
}

static void pb_entry_cleanup(pb_entry *p)
{
    free(p->sels);
    free(p->selp);
}

static void reply_entry(sg_rpc_call *call, const sg_entry *e)
{
    pb_entry p;
    sg_err err;

    if (pb_entry_init(&p, e) < 0) {
        sg_err_set(&err, SG_ENOMEM, "out of memory");
        sg_rpc_call_finish_err(call, &err);
        return;
    }
    sg_admin_pb_reply(call, &p.msg.base);
    pb_entry_cleanup(&p);
}

/* ------------------------------------------------------------ entries */

/* Answers with the entry as stored (sorted selectors), or e when it cannot be read back. */
static void reply_stored(sg_rpc_call *call, sg_server *s, const sg_entry *e)
{
    sg_entry stored;
    sg_err err;

    if (sg_ds_entry_get(sg_server_datastore(s), e->id, &stored, &err) == 0) {
        reply_entry(call, &stored);
        sg_entry_cleanup(&stored);
    } else {
        reply_entry(call, e);
    }
}

/* Creates (update false) or updates the entry pb describes and answers with it as stored. */
static void write_entry(sg_rpc_call *call, sg_server *s, const Sigil__Admin__V1__Entry *pb,
                        bool update)
{
    sg_entry e;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    rc = entry_from_pb(pb, sg_server_config_get(s)->trust_domain, update, &e, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    if (update)
        rc = sg_ds_entry_update(sg_server_datastore(s), &e, &err);
    else
        rc = sg_ds_entry_create(sg_server_datastore(s), &e, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        sg_entry_cleanup(&e);
        return;
    }
    sg_server_entries_changed(s);
    reply_stored(call, s, &e);
    sg_entry_cleanup(&e);
}

static void h_create_entry(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const Sigil__Admin__V1__CreateEntryRequest *r = (const void *)req;

    write_entry(call, user, r->entry, false);
}

static void h_update_entry(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const Sigil__Admin__V1__UpdateEntryRequest *r = (const void *)req;

    write_entry(call, user, r->entry, true);
}

static void h_delete_entry(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const Sigil__Admin__V1__DeleteEntryRequest *r = (const void *)req;
    Sigil__Admin__V1__DeleteEntryResponse resp = SIGIL__ADMIN__V1__DELETE_ENTRY_RESPONSE__INIT;
    sg_server *s = user;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    if (r->id == NULL || r->id[0] == '\0') {
        rc = sg_err_set(&err, SG_EINVAL, "entry id is required");
    } else {
        rc = sg_ds_entry_delete(sg_server_datastore(s), r->id, &err);
    }
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    sg_server_entries_changed(s);
    sg_admin_pb_reply(call, &resp.base);
}

static void h_list_entries(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const Sigil__Admin__V1__ListEntriesRequest *r = (const void *)req;
    Sigil__Admin__V1__ListEntriesResponse resp = SIGIL__ADMIN__V1__LIST_ENTRIES_RESPONSE__INIT;
    sg_server *s = user;
    sg_entry *list = NULL;
    size_t n = 0;
    pb_entry *views = NULL;
    Sigil__Admin__V1__Entry **ptrs = NULL;
    sg_selector *sels = NULL;
    sg_entry_filter f;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    memset(&f, 0, sizeof f);
    if (r->id != NULL && r->id[0] != '\0') {
        list = calloc(1, sizeof *list);
        if (list == NULL) {
            rc = sg_err_set(&err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        rc = sg_ds_entry_get(sg_server_datastore(s), r->id, &list[0], &err);
        if (rc < 0) {
            free(list);
            list = NULL;
            goto fail;
        }
        n = 1;
    } else {
        rc = selectors_from_pb(r->selectors, r->n_selectors, &sels, &err);
        if (rc < 0)
            goto fail;
        if (r->spiffe_id != NULL && r->spiffe_id[0] != '\0')
            f.spiffe_id = r->spiffe_id;
        if (r->parent_id != NULL && r->parent_id[0] != '\0')
            f.parent_id = r->parent_id;
        f.selectors = sels;
        f.nselectors = r->n_selectors;
        rc = sg_ds_entry_list(sg_server_datastore(s), &f, &list, &n, &err);
        if (rc < 0)
            goto fail;
    }
    if (n > 0) {
        views = calloc(n, sizeof *views);
        ptrs = calloc(n, sizeof *ptrs);
        if (views == NULL || ptrs == NULL) {
            rc = sg_err_set(&err, SG_ENOMEM, "out of memory");
            goto fail;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (pb_entry_init(&views[i], &list[i]) < 0) {
            for (size_t j = 0; j < i; j++)
                pb_entry_cleanup(&views[j]);
            rc = sg_err_set(&err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        ptrs[i] = &views[i].msg;
    }
    resp.n_entries = n;
    resp.entries = ptrs;
    sg_admin_pb_reply(call, &resp.base);
    for (size_t i = 0; i < n; i++)
        pb_entry_cleanup(&views[i]);
    goto out;
fail:
    sg_admin_pb_fail(call, &err, rc);
out:
    free(views);
    free(ptrs);
    selectors_free(sels, r->n_selectors);
    sg_entry_list_free(list, n);
}

/* ------------------------------------------------------------ tokens */

/* A random 128-bit token as UUID text (version 4), as SPIRE makes them. */
static int new_token(char out[37], sg_err *err)
{
    unsigned char b[16];

    if (RAND_bytes(b, sizeof b) != 1)
        return sg_err_ssl(err, "generating a join token");
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return 0;
}

static void h_generate_token(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const Sigil__Admin__V1__GenerateTokenRequest *r = (const void *)req;
    Sigil__Admin__V1__GenerateTokenResponse resp = SIGIL__ADMIN__V1__GENERATE_TOKEN_RESPONSE__INIT;
    sg_server *s = user;
    sg_datastore *ds = sg_server_datastore(s);
    const char *td = sg_server_config_get(s)->trust_domain;
    char token[37], agent_id[SG_SPIFFEID_MAX + 1];
    sg_entry e;
    bool have_entry = false;
    int64_t ttl, expires_at;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    memset(&e, 0, sizeof e);
    if (r->ttl < 0) {
        rc = sg_err_set(&err, SG_EINVAL, "token ttl %d is negative", (int)r->ttl);
        goto fail;
    }
    ttl = r->ttl == 0 ? SG_ADMIN_TOKEN_TTL_DEFAULT : r->ttl;
    if (ttl > TOKEN_TTL_MAX) {
        rc = sg_err_set(&err, SG_EINVAL, "token ttl %lld is longer than %d seconds", (long long)ttl,
                        TOKEN_TTL_MAX);
        goto fail;
    }
    rc = new_token(token, &err);
    if (rc < 0)
        goto fail;
    if (r->spiffe_id != NULL && r->spiffe_id[0] != '\0') {
        sg_selector *sel;
        rc = check_workload_id("spiffe_id", r->spiffe_id, td, &err);
        if (rc < 0)
            goto fail;
        snprintf(agent_id, sizeof agent_id, "spiffe://%s/spire/agent/join_token/%s", td, token);
        sel = calloc(1, sizeof *sel);
        if (sel == NULL) {
            rc = sg_err_set(&err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        e.selectors = sel;
        e.nselectors = 1;
        rc = sg_selector_init(sel, "spiffe_id", agent_id, &err);
        if (rc < 0) {
            e.nselectors = 0;
            goto fail;
        }
        e.spiffe_id = strdup(r->spiffe_id);
        e.parent_id = strdup(agent_id);
        if (e.spiffe_id == NULL || e.parent_id == NULL) {
            rc = sg_err_set(&err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        rc = sg_ds_entry_create(ds, &e, &err);
        if (rc < 0)
            goto fail;
        have_entry = true;
    }
    expires_at = (int64_t)time(NULL) + ttl;
    rc = sg_ds_token_create(ds, token, expires_at, &err);
    if (rc < 0) {
        if (have_entry) {
            sg_err ignored;
            sg_ds_entry_delete(ds, e.id, &ignored);
        }
        goto fail;
    }
    if (have_entry)
        sg_server_entries_changed(s);
    resp.value = token;
    resp.expires_at = expires_at;
    sg_admin_pb_reply(call, &resp.base);
    sg_entry_cleanup(&e);
    return;
fail:
    sg_entry_cleanup(&e);
    sg_admin_pb_fail(call, &err, rc);
}

/* ------------------------------------------------------------ agents */

static void h_list_agents(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    Sigil__Admin__V1__ListAgentsResponse resp = SIGIL__ADMIN__V1__LIST_AGENTS_RESPONSE__INIT;
    static const Sigil__Admin__V1__Agent ainit = SIGIL__ADMIN__V1__AGENT__INIT;
    static const Sigil__Admin__V1__Selector sinit = SIGIL__ADMIN__V1__SELECTOR__INIT;
    sg_server *s = user;
    sg_agent_rec *list = NULL;
    size_t n = 0, nsel = 0, k = 0;
    Sigil__Admin__V1__Agent *agents = NULL, **aptr = NULL;
    Sigil__Admin__V1__Selector *sels = NULL, **sptr = NULL;
    sg_err err;
    int rc;

    (void)req;
    sg_err_clear(&err);
    rc = sg_ds_agent_list(sg_server_datastore(s), &list, &n, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    for (size_t i = 0; i < n; i++)
        nsel += list[i].nselectors;
    agents = calloc(n ? n : 1, sizeof *agents);
    aptr = calloc(n ? n : 1, sizeof *aptr);
    sels = calloc(nsel ? nsel : 1, sizeof *sels);
    sptr = calloc(nsel ? nsel : 1, sizeof *sptr);
    if (agents == NULL || aptr == NULL || sels == NULL || sptr == NULL) {
        sg_err_set(&err, SG_ENOMEM, "out of memory");
        sg_rpc_call_finish_err(call, &err);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        Sigil__Admin__V1__Agent *a = &agents[i];
        *a = ainit;
        a->spiffe_id = list[i].spiffe_id;
        a->attestation_type =
            list[i].attestation_type ? list[i].attestation_type : (char *)protobuf_c_empty_string;
        a->serial = list[i].serial;
        a->expires_at = list[i].expires_at;
        a->attested_at = list[i].attested_at;
        a->banned = list[i].banned;
        a->selectors = &sptr[k];
        a->n_selectors = list[i].nselectors;
        for (size_t j = 0; j < list[i].nselectors; j++, k++) {
            sels[k] = sinit;
            sels[k].type = list[i].selectors[j].type;
            sels[k].value = list[i].selectors[j].value;
            sptr[k] = &sels[k];
        }
        aptr[i] = a;
    }
    resp.n_agents = n;
    resp.agents = aptr;
    sg_admin_pb_reply(call, &resp.base);
out:
    free(agents);
    free(aptr);
    free(sels);
    free(sptr);
    sg_agent_rec_list_free(list, n);
}

static void agent_action(sg_rpc_call *call, const ProtobufCMessage *req, sg_server *s, bool ban)
{
    const Sigil__Admin__V1__AgentRequest *r = (const void *)req;
    Sigil__Admin__V1__AgentActionResponse resp = SIGIL__ADMIN__V1__AGENT_ACTION_RESPONSE__INIT;
    sg_spiffeid sid;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    if (r->spiffe_id == NULL || r->spiffe_id[0] == '\0') {
        rc = sg_err_set(&err, SG_EINVAL, "agent spiffe_id is required");
    } else {
        sg_err perr;
        rc = sg_spiffeid_parse(r->spiffe_id, &sid, &perr);
        if (rc < 0)
            rc = sg_err_set(&err, SG_EINVAL, "invalid agent spiffe_id: %s", perr.msg);
    }
    if (rc == 0) {
        if (ban)
            rc = sg_ds_agent_set_banned(sg_server_datastore(s), r->spiffe_id, true, &err);
        else
            rc = sg_ds_agent_delete(sg_server_datastore(s), r->spiffe_id, &err);
    }
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    sg_server_agents_changed(s, r->spiffe_id);
    sg_admin_pb_reply(call, &resp.base);
}

static void h_evict_agent(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    agent_action(call, req, user, false);
}

static void h_ban_agent(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    agent_action(call, req, user, true);
}

/* ------------------------------------------------------------ bundle, health */

static void h_get_bundle(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    sg_server *s = user;
    sg_ca *ca = sg_admin_pb_ready_ca(call, s);
    sg_jwt_authority *ja = sg_server_jwt(s);
    sg_admin_pb_bundle p;
    sg_bundle b;
    sg_err err;
    int rc;

    (void)req;
    if (ca == NULL)
        return;
    sg_err_clear(&err);
    memset(&b, 0, sizeof b);
    b.sequence = sg_server_bundle_sequence(s);
    b.refresh_hint = BUNDLE_REFRESH_S;
    rc = sg_ca_bundle_der(ca, &b.x509, &b.nx509, &err);
    if (rc == 0 && ja != NULL)
        rc = sg_jwt_authority_keys(ja, &b.jwt, &b.njwt, &err);
    if (rc == 0 && sg_admin_pb_bundle_init(&p, &b) < 0)
        rc = sg_err_set(&err, SG_ENOMEM, "out of memory");
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
    } else {
        /* GetBundle names its own trust domain bare, not as "spiffe://td". */
        p.msg.trust_domain = (char *)(uintptr_t)sg_server_config_get(s)->trust_domain;
        sg_admin_pb_reply(call, &p.msg.base);
        sg_admin_pb_bundle_cleanup(&p);
    }
    sg_jwt_authority_keys_free(b.jwt, b.njwt);
    for (size_t i = 0; i < b.nx509; i++)
        sg_der_cleanup(&b.x509[i]);
    free(b.x509);
}

static void h_health(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    Sigil__Admin__V1__HealthResponse resp = SIGIL__ADMIN__V1__HEALTH_RESPONSE__INIT;
    sg_server *s = user;
    int64_t rev;
    sg_err err;

    (void)req;
    /* Ready when the CA exists and the datastore answers. */
    resp.ready =
        sg_server_ca(s) != NULL && sg_ds_entry_revision(sg_server_datastore(s), &rev, &err) == 0;
    resp.trust_domain = (char *)(uintptr_t)sg_server_config_get(s)->trust_domain;
    sg_admin_pb_reply(call, &resp.base);
}

/* ------------------------------------------------------------ local authority */

static void pb_authority(Sigil__Admin__V1__X509Authority *p, const sg_ca_authority *a)
{
    sigil__admin__v1__x509_authority__init(p);
    p->authority_id = (char *)(uintptr_t)a->id;
    p->state = (char *)(uintptr_t)sg_ca_state_name(a->state);
    p->expires_at = a->not_after;
    p->issued_at = a->not_before;
    p->tainted = a->tainted;
    p->tainted_at = a->tainted_at;
    p->upstream_authority_subject_key_id = (char *)(uintptr_t)a->upstream_id;
}

static void h_get_x509_authorities(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    Sigil__Admin__V1__X509Authorities resp = SIGIL__ADMIN__V1__X509_AUTHORITIES__INIT;
    Sigil__Admin__V1__X509Authority *items = NULL, **ptrs = NULL;
    sg_ca_authority *v = NULL;
    sg_ca *ca = sg_admin_pb_ready_ca(call, user);
    size_t n = 0;
    sg_err err;
    int rc;

    (void)req;
    if (ca == NULL)
        return;
    sg_err_clear(&err);
    rc = sg_ca_authorities(ca, &v, &n, &err);
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
    free(v);
}

typedef int (*authority_op)(sg_ca *ca, const char *id, int64_t now, sg_ca_authority *out,
                            sg_err *err);

static int prepare_op(sg_ca *ca, const char *id, int64_t now, sg_ca_authority *out, sg_err *err)
{
    (void)id;
    return sg_ca_prepare(ca, now, out, err);
}

static void authority_action(sg_rpc_call *call, const char *id, void *user, authority_op op)
{
    Sigil__Admin__V1__X509AuthorityResponse resp = SIGIL__ADMIN__V1__X509_AUTHORITY_RESPONSE__INIT;
    Sigil__Admin__V1__X509Authority pa;
    sg_ca_authority a;
    sg_ca *ca = sg_admin_pb_ready_ca(call, user);
    sg_err err;
    int rc;

    if (ca == NULL)
        return;
    sg_err_clear(&err);
    rc = op(ca, id, (int64_t)time(NULL), &a, &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    pb_authority(&pa, &a);
    resp.authority = &pa;
    sg_admin_pb_reply(call, &resp.base);
}

static void h_prepare_x509_authority(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    (void)req;
    authority_action(call, NULL, user, prepare_op);
}

static const char *authority_id_of(const ProtobufCMessage *req)
{
    return ((const Sigil__Admin__V1__X509AuthorityRequest *)req)->authority_id;
}

static void h_activate_x509_authority(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    authority_action(call, authority_id_of(req), user, sg_ca_activate);
}

static void h_taint_x509_authority(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    authority_action(call, authority_id_of(req), user, sg_ca_taint);
}

static void h_revoke_x509_authority(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    authority_action(call, authority_id_of(req), user, sg_ca_revoke);
}

/* ------------------------------------------------------------ upstream authority */

typedef int (*upstream_op)(sg_ca *ca, const char *skid, int64_t now, sg_err *err);

static void upstream_action(sg_rpc_call *call, const ProtobufCMessage *req, void *user,
                            upstream_op op)
{
    const Sigil__Admin__V1__UpstreamAuthorityRequest *r =
        (const Sigil__Admin__V1__UpstreamAuthorityRequest *)req;
    Sigil__Admin__V1__UpstreamAuthorityResponse resp =
        SIGIL__ADMIN__V1__UPSTREAM_AUTHORITY_RESPONSE__INIT;
    sg_ca *ca = sg_admin_pb_ready_ca(call, user);
    sg_err err;
    int rc;

    if (ca == NULL)
        return;
    sg_err_clear(&err);
    rc = op(ca, r->subject_key_id, (int64_t)time(NULL), &err);
    if (rc < 0) {
        sg_admin_pb_fail(call, &err, rc);
        return;
    }
    resp.subject_key_id = r->subject_key_id;
    sg_admin_pb_reply(call, &resp.base);
}

static void h_taint_upstream_authority(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    upstream_action(call, req, user, sg_ca_upstream_taint);
}

static void h_revoke_upstream_authority(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    upstream_action(call, req, user, sg_ca_upstream_revoke);
}

/* ------------------------------------------------------------ registration */

static const sg_admin_pb_method methods[] = {
    {"CreateEntry", h_create_entry},
    {"UpdateEntry", h_update_entry},
    {"DeleteEntry", h_delete_entry},
    {"ListEntries", h_list_entries},
    {"GenerateToken", h_generate_token},
    {"ListAgents", h_list_agents},
    {"EvictAgent", h_evict_agent},
    {"BanAgent", h_ban_agent},
    {"GetBundle", h_get_bundle},
    {"Health", h_health},
    {"GetX509Authorities", h_get_x509_authorities},
    {"PrepareX509Authority", h_prepare_x509_authority},
    {"ActivateX509Authority", h_activate_x509_authority},
    {"TaintX509Authority", h_taint_x509_authority},
    {"RevokeX509Authority", h_revoke_x509_authority},
    {"TaintUpstreamAuthority", h_taint_upstream_authority},
    {"RevokeUpstreamAuthority", h_revoke_upstream_authority},
};

int sg_admin_api_register(sg_rpc_server *srv, sg_server *s, sg_err *err)
{
    int rc = sg_admin_jwt_register(srv, s, err);

    if (rc == 0)
        rc = sg_admin_pb_register(srv, s, methods, sizeof methods / sizeof methods[0], err);
    if (rc == 0)
        rc = sg_admin_federation_register(srv, s, err);
    return rc;
}
