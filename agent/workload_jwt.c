/*
 * The JWT half of the Workload API: FetchJWTSVID (cached tokens, server
 * round trips on a miss without blocking the loop), FetchJWTBundles (own
 * and federated JWKS, a new message on every change), ValidateJWTSVID
 * (claims returned as a google.protobuf.Struct), and the foreign X.509
 * bundles the X.509 messages carry. Loop thread only, except the
 * signature checks of ValidateJWTSVID (thread pool, on a copied bundle).
 */
#include "agent/workload_api_int.h"

#include "common/bundle.h"
#include "common/jwt.h"
#include "common/log.h"
#include "common/spiffeid.h"
#include "spiffe/workload.pb-c.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CLAIMS_MAX_DEPTH 32 /* nesting accepted in a token's claims */

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

/* ------------------------------------------------------------ request */

int sg__wl_jwt_request(sg__wl_call *w, const ProtobufCMessage *req, sg_err *err)
{
    if (w->method == M_JWTSVID) {
        const JWTSVIDRequest *r = (const JWTSVIDRequest *)req;
        int rc = sg_jwt_cache_check_audience((const char *const *)r->audience, r->n_audience, err);
        if (rc != 0)
            return rc;
        if (r->spiffe_id != NULL && r->spiffe_id[0] != '\0') {
            sg_spiffeid id;
            sg_err e;
            sg_err_clear(&e);
            if (sg_spiffeid_parse(r->spiffe_id, &id, &e) != 0)
                return sg_err_set(err, SG_EINVAL, "invalid requested SPIFFE ID: %s", e.msg);
            w->want_id = strdup(r->spiffe_id);
            if (w->want_id == NULL)
                return sg_err_set(err, SG_ENOMEM, "out of memory");
        }
        w->aud = calloc(r->n_audience, sizeof(*w->aud));
        if (w->aud == NULL)
            return sg_err_set(err, SG_ENOMEM, "out of memory");
        for (size_t i = 0; i < r->n_audience; i++) {
            w->aud[i] = strdup(r->audience[i]);
            if (w->aud[i] == NULL)
                return sg_err_set(err, SG_ENOMEM, "out of memory");
            w->naud++;
        }
        return 0;
    }
    const ValidateJWTSVIDRequest *r = (const ValidateJWTSVIDRequest *)req;
    const char *aud[1] = {r->audience};
    int rc = sg_jwt_cache_check_audience(aud, 1, err);
    if (rc != 0)
        return rc;
    if (strlen(r->svid) > SG_JWT_MAX_LEN)
        return sg_err_set(err, SG_EINVAL, "svid is longer than %d bytes", SG_JWT_MAX_LEN);
    w->aud = calloc(1, sizeof(*w->aud));
    if (w->aud == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    w->aud[0] = strdup(r->audience);
    if (w->aud[0] == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    w->naud = 1;
    w->token = strdup(r->svid);
    if (w->token == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    return 0;
}

/* ------------------------------------------------------------ FetchJWTSVID */

typedef struct jwt_fetch jwt_fetch;

/* One identity of the caller in a FetchJWTSVID. */
typedef struct jwt_item {
    jwt_fetch *f;
    char *entry_id;
    char *spiffe_id;
    char *hint; /* may be NULL */
    int64_t revision;
    char *token; /* the answer, NULL until known */
    int rc;
    sg_err err;
} jwt_item;

struct jwt_fetch {
    sg__wl_call *w;
    jwt_item *items;
    size_t n;
    size_t pending; /* mints in flight, plus one while they are being started */
};

static void fetch_free(jwt_fetch *f)
{
    for (size_t i = 0; i < f->n; i++) {
        jwt_item *it = &f->items[i];
        free(it->entry_id);
        free(it->spiffe_id);
        free(it->hint);
        if (it->token != NULL)
            OPENSSL_cleanse(it->token, strlen(it->token));
        free(it->token);
    }
    free(f->items);
    free(f);
}

/* Every token is known (or failed): answer the call. */
static void fetch_complete(jwt_fetch *f)
{
    sg__wl_call *w = f->w;
    if (w->call == NULL || sg_rpc_call_is_over(w->call))
        goto done;
    for (size_t i = 0; i < f->n; i++) {
        jwt_item *it = &f->items[i];
        if (it->rc == 0)
            continue;
        char msg[SG_ERR_MSG_LEN];
        snprintf(msg, sizeof(msg), "cannot fetch a JWT-SVID for %.100s: %.120s", it->spiffe_id,
                 it->err.msg);
        sg_log_warn("workload api: %s (pid %d)", msg, (int)w->peer.pid);
        /* The server refusing the entry means the caller has no such identity. */
        int code = it->rc == SG_EPERM || it->rc == SG_ENOENT ? SG_EPERM : SG_EUNAVAIL;
        sg__wl_finish(w->call, code, msg);
        goto done;
    }
    JWTSVID *svids = calloc(f->n, sizeof(*svids));
    JWTSVID **ptrs = calloc(f->n, sizeof(*ptrs));
    if (svids == NULL || ptrs == NULL) {
        free(svids);
        free(ptrs);
        sg__wl_finish(w->call, SG_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < f->n; i++) {
        JWTSVID init = JWTSVID__INIT;
        svids[i] = init;
        svids[i].spiffe_id = f->items[i].spiffe_id;
        svids[i].svid = f->items[i].token;
        if (f->items[i].hint != NULL)
            svids[i].hint = f->items[i].hint;
        ptrs[i] = &svids[i];
    }
    JWTSVIDResponse resp = JWTSVIDRESPONSE__INIT;
    resp.n_svids = f->n;
    resp.svids = ptrs;
    if (sg_rpc_call_send(w->call, &resp.base) == 0) {
        sg_log_debug("workload api: sent %zu JWT-SVID(s) to pid %d (first %s)", f->n,
                     (int)w->peer.pid, f->items[0].spiffe_id);
        sg_rpc_call_finish(w->call, GRPC_STATUS_OK, "");
    }
    free(svids);
    free(ptrs);
done:
    fetch_free(f);
    sg__wl_unref(w);
}

static void item_settle(jwt_item *it)
{
    jwt_fetch *f = it->f;
    if (--f->pending == 0)
        fetch_complete(f);
}

/*
 * The kid in a token's protected header, for servers that do not state it
 * beside the token (taint then still finds the token). "" when none.
 */
static void header_kid(const char *token, char *out, size_t outlen)
{
    out[0] = '\0';
    const char *dot = strchr(token, '.');
    uint8_t *raw = NULL;
    size_t rawlen = 0;
    if (dot == NULL || (size_t)(dot - token) > 4096 ||
        sg_bundle_b64_decode(token, (size_t)(dot - token), true, &raw, &rawlen, NULL) != 0)
        return;
    json_error_t jerr;
    json_t *h = json_loadb((const char *)raw, rawlen, 0, &jerr);
    free(raw);
    const char *kid = json_string_value(json_object_get(h, "kid"));
    if (kid != NULL)
        snprintf(out, outlen, "%s", kid);
    json_decref(h);
}

static void on_minted(void *user, int rc, const sg_err *err, const sg_node_jwt_svid *svid)
{
    jwt_item *it = user;
    sg__wl_call *w = it->f->w;
    sg_jwt_cache *jc = w->api->d.jwt_cache;
    const char *const *aud = (const char *const *)w->aud;
    int64_t now = now_s();
    if (rc == 0 && svid->expires_at <= now) {
        rc = SG_EPROTO;
        sg_err_set(&it->err, rc, "the server sent an expired JWT-SVID");
    } else if (rc != 0) {
        it->err = *err;
    }
    if (rc == 0) {
        sg_err e;
        sg_err_clear(&e);
        char kid[257];
        if (svid->kid != NULL && svid->kid[0] != '\0')
            snprintf(kid, sizeof(kid), "%s", svid->kid);
        else
            header_kid(svid->token, kid, sizeof(kid));
        if (jc != NULL &&
            sg_jwt_cache_put(jc, it->entry_id, it->revision, aud, w->naud, svid->spiffe_id,
                             svid->token, kid, svid->issued_at, svid->expires_at, &e) != 0)
            sg_log_debug("cannot cache a JWT-SVID: %s", e.msg);
        it->token = strdup(svid->token);
        if (it->token == NULL) {
            it->rc = sg_err_set(&it->err, SG_ENOMEM, "out of memory");
        } else {
            sg_log_info("minted JWT-SVID %s (entry %s, kid %s) expires %lld", svid->spiffe_id,
                        it->entry_id, kid, (long long)svid->expires_at);
        }
        item_settle(it);
        return;
    }
    /* The server could not be asked: a token not yet expired still serves. */
    const sg_jwt_cache_token *t =
        jc != NULL ? sg_jwt_cache_get(jc, it->entry_id, it->revision, aud, w->naud, now, false)
                   : NULL;
    if (t != NULL && rc != SG_EPERM && rc != SG_ENOENT) {
        sg_log_warn("cannot renew the JWT-SVID of %s (%s); serving the cached one until %lld",
                    it->spiffe_id, it->err.msg, (long long)t->expires_at);
        it->token = strdup(t->token);
        if (it->token == NULL)
            it->rc = sg_err_set(&it->err, SG_ENOMEM, "out of memory");
    } else {
        it->rc = rc;
    }
    item_settle(it);
}

void sg__wl_jwt_svid(sg__wl_call *w)
{
    sg_workload_api *api = w->api;
    sg_cache *c = api->d.cache;
    const sg_agent_entry **m = NULL;
    size_t nm = 0;
    if (sg_cache_match_entries(c, &w->sels, &m, &nm) != 0) {
        sg__wl_finish(w->call, SG_ENOMEM, "out of memory");
        return;
    }
    jwt_fetch *f = calloc(1, sizeof(*f));
    if (f == NULL || (f->items = calloc(nm ? nm : 1, sizeof(*f->items))) == NULL) {
        free(f);
        free(m);
        sg__wl_finish(w->call, SG_ENOMEM, "out of memory");
        return;
    }
    f->w = w;
    w->refs++; /* fetch_complete drops it */
    for (size_t i = 0; i < nm; i++) {
        if (w->want_id != NULL && strcmp(m[i]->spiffe_id, w->want_id) != 0)
            continue;
        jwt_item *it = &f->items[f->n];
        it->f = f;
        it->entry_id = strdup(m[i]->id);
        it->spiffe_id = strdup(m[i]->spiffe_id);
        it->hint = m[i]->hint != NULL ? strdup(m[i]->hint) : NULL;
        it->revision = m[i]->revision;
        f->n++;
        if (it->entry_id == NULL || it->spiffe_id == NULL ||
            (m[i]->hint != NULL && it->hint == NULL)) {
            free(m);
            sg__wl_finish(w->call, SG_ENOMEM, "out of memory");
            fetch_free(f);
            sg__wl_unref(w);
            return;
        }
    }
    free(m);
    if (f->n == 0) {
        /* Workload API: asking for an identity the caller does not have. */
        sg__wl_finish(w->call, SG_EPERM, "no identity issued");
        fetch_free(f);
        sg__wl_unref(w);
        return;
    }
    const char *const *aud = (const char *const *)w->aud;
    int64_t now = now_s();
    f->pending = 1;
    for (size_t i = 0; i < f->n; i++) {
        jwt_item *it = &f->items[i];
        const sg_jwt_cache_token *t = api->d.jwt_cache != NULL
                                          ? sg_jwt_cache_get(api->d.jwt_cache, it->entry_id,
                                                             it->revision, aud, w->naud, now, true)
                                          : NULL;
        if (t != NULL) {
            it->token = strdup(t->token);
            if (it->token == NULL)
                it->rc = sg_err_set(&it->err, SG_ENOMEM, "out of memory");
            continue;
        }
        if (api->d.mint_jwt == NULL) {
            it->rc = sg_err_set(&it->err, SG_EUNAVAIL, "the agent cannot reach the server");
            continue;
        }
        f->pending++;
        sg_err e;
        sg_err_clear(&e);
        int rc = api->d.mint_jwt(api->d.mint_ctx, it->entry_id, aud, w->naud, on_minted, it, &e);
        if (rc != 0) {
            f->pending--;
            it->rc = rc;
            it->err = e;
        }
    }
    item_settle(&f->items[0]);
}

/* ------------------------------------------------------------ FetchJWTBundles */

void sg__wl_send_jwt_bundles(sg__wl_call *w)
{
    sg_cache *c = w->api->d.cache;
    const sg_agent_entry **m = NULL;
    size_t nm = 0;
    if (sg_cache_match_entries(c, &w->sels, &m, &nm) != 0) {
        sg__wl_finish(w->call, SG_ENOMEM, "out of memory");
        return;
    }
    free(m);
    if (nm == 0) {
        /* Workload API 5.1: an identity that disappears ends the stream. */
        sg_cache_unsubscribe(c, w->sub);
        w->sub = NULL;
        sg__wl_finish(w->call, SG_EPERM, "no identity issued");
        return;
    }
    const char **tds = NULL;
    size_t ntds = 0;
    if (sg_cache_federates_of(c, &w->sels, &tds, &ntds) != 0) {
        sg__wl_finish(w->call, SG_ENOMEM, "out of memory");
        return;
    }
    JWTBundlesResponse__BundlesEntry *entries = calloc(ntds + 1, sizeof(*entries));
    JWTBundlesResponse__BundlesEntry **ptrs = calloc(ntds + 1, sizeof(*ptrs));
    if (entries == NULL || ptrs == NULL) {
        free(entries);
        free(ptrs);
        free(tds);
        sg__wl_finish(w->call, SG_ENOMEM, "out of memory");
        return;
    }
    size_t k = 0;
    JWTBundlesResponse__BundlesEntry init = JWTBUNDLES_RESPONSE__BUNDLES_ENTRY__INIT;
    size_t len = 0;
    const char *own = sg_cache_jwt_jwks(c, &len);
    entries[k] = init;
    entries[k].key = (char *)sg_cache_bundle_name(c);
    entries[k].value.data = (uint8_t *)own;
    entries[k].value.len = len;
    ptrs[k] = &entries[k];
    k++;
    for (size_t i = 0; i < ntds; i++) {
        const sg_cache_federated *fb = sg_cache_federated_get(c, tds[i]);
        if (fb == NULL)
            continue;
        entries[k] = init;
        entries[k].key = (char *)fb->name;
        entries[k].value.data = (uint8_t *)fb->jwks;
        entries[k].value.len = fb->jwks_len;
        ptrs[k] = &entries[k];
        k++;
    }
    JWTBundlesResponse resp = JWTBUNDLES_RESPONSE__INIT;
    resp.n_bundles = k;
    resp.bundles = ptrs;
    (void)sg_rpc_call_send(w->call, &resp.base);
    free(entries);
    free(ptrs);
    free(tds);
}

/* ------------------------------------------------------------ ValidateJWTSVID */

static Google__Protobuf__Struct *json_to_struct(json_t *obj, int depth);

/* A JSON value as a google.protobuf.Value (malloc'd tree), or NULL. */
static Google__Protobuf__Value *json_to_value(json_t *j, int depth)
{
    if (depth > CLAIMS_MAX_DEPTH)
        return NULL;
    Google__Protobuf__Value *v = malloc(sizeof(*v));
    if (v == NULL)
        return NULL;
    google__protobuf__value__init(v);
    switch (json_typeof(j)) {
    case JSON_NULL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        v->bool_value = json_is_true(j);
        break;
    case JSON_INTEGER:
    case JSON_REAL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        v->number_value = json_number_value(j);
        break;
    case JSON_STRING:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
        v->string_value = strndup(json_string_value(j), json_string_length(j));
        if (v->string_value == NULL)
            goto fail;
        break;
    case JSON_OBJECT:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
        v->struct_value = json_to_struct(j, depth + 1);
        if (v->struct_value == NULL)
            goto fail;
        break;
    case JSON_ARRAY: {
        Google__Protobuf__ListValue *l = malloc(sizeof(*l));
        if (l == NULL)
            goto fail;
        google__protobuf__list_value__init(l);
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
        v->list_value = l;
        size_t n = json_array_size(j);
        if (n > 0) {
            l->values = calloc(n, sizeof(*l->values));
            if (l->values == NULL)
                goto fail;
        }
        for (size_t i = 0; i < n; i++) {
            l->values[i] = json_to_value(json_array_get(j, i), depth + 1);
            if (l->values[i] == NULL)
                goto fail;
            l->n_values++;
        }
        break;
    }
    }
    return v;
fail:
    protobuf_c_message_free_unpacked(&v->base, NULL);
    return NULL;
}

static Google__Protobuf__Struct *json_to_struct(json_t *obj, int depth)
{
    if (depth > CLAIMS_MAX_DEPTH)
        return NULL;
    Google__Protobuf__Struct *s = malloc(sizeof(*s));
    if (s == NULL)
        return NULL;
    google__protobuf__struct__init(s);
    size_t n = json_object_size(obj);
    if (n > 0) {
        s->fields = calloc(n, sizeof(*s->fields));
        if (s->fields == NULL)
            goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        Google__Protobuf__Struct__FieldsEntry *fe = malloc(sizeof(*fe));
        if (fe == NULL)
            goto fail;
        google__protobuf__struct__fields_entry__init(fe);
        s->fields[s->n_fields++] = fe;
        fe->key = strdup(key);
        fe->value = json_to_value(val, depth + 1);
        if (fe->key == NULL || fe->value == NULL)
            goto fail;
    }
    return s;
fail:
    protobuf_c_message_free_unpacked(&s->base, NULL);
    return NULL;
}

/*
 * One ValidateJWTSVID on the thread pool. The signature check and the
 * claims conversion are most of the call's cost, so they run outside the
 * state lock against a copy of the one bundle the token needs; the reply
 * is sent back from the loop thread.
 */
typedef struct validate_job {
    sg__wl_call *w;
    uv_work_t work;
    char td[SG_SPIFFEID_MAX + 1]; /* the trust domain of the token's sub */
    sg_bundle bundle;             /* a copy of its JWT bundle */
    bool copied;
    int rc;
    sg_err err;
    sg_jwt_validated v;
    Google__Protobuf__Struct *st; /* the claims, once valid */
} validate_job;

/*
 * Probe lookup, under the state lock: copies the bundle the token names and
 * then stops the validation (the worker does it in full). A trust domain
 * without a bundle is final: the probe's error is the answer.
 */
static const sg_bundle *probe_bundle(void *ctx, const char *trust_domain)
{
    validate_job *j = ctx;
    const sg_bundle *b = sg_cache_jwt_bundle(j->w->api->d.cache, trust_domain);
    if (b == NULL || strlen(trust_domain) >= sizeof(j->td))
        return b;
    sg_err e;
    sg_err_clear(&e);
    if (sg_bundle_copy(&j->bundle, b, &e) != 0)
        return b; /* validate right here then */
    snprintf(j->td, sizeof(j->td), "%s", trust_domain);
    j->copied = true;
    return NULL;
}

/* Worker lookup: only the copied bundle. */
static const sg_bundle *copied_bundle(void *ctx, const char *trust_domain)
{
    validate_job *j = ctx;
    return strcmp(trust_domain, j->td) == 0 ? &j->bundle : NULL;
}

/* Thread pool: the claims of a valid token as a Struct. */
static void validate_claims(validate_job *j)
{
    json_error_t jerr;
    json_t *claims = j->v.claims_json != NULL ? json_loads(j->v.claims_json, 0, &jerr) : NULL;
    j->st = json_is_object(claims) ? json_to_struct(claims, 0) : NULL;
    json_decref(claims);
    if (j->st == NULL)
        j->rc = sg_err_set(&j->err, SG_EINVAL, "the token's claims cannot be represented");
}

static void validate_work(uv_work_t *req)
{
    validate_job *j = req->data;
    sg__wl_call *w = j->w;
    j->rc = sg_jwt_validate(w->token, w->aud[0], now_s(), copied_bundle, j, &j->v, &j->err);
    if (j->rc == 0)
        validate_claims(j);
}

static void validate_job_free(validate_job *j)
{
    if (j->st != NULL)
        protobuf_c_message_free_unpacked(&j->st->base, NULL);
    sg_jwt_validated_cleanup(&j->v);
    if (j->copied)
        sg_bundle_cleanup(&j->bundle);
    free(j);
}

/* Loop thread: answers the call from a finished job and frees it. */
static void validate_reply(validate_job *j)
{
    sg__wl_call *w = j->w;
    if (w->call == NULL || sg_rpc_call_is_over(w->call))
        goto out;
    if (j->rc != 0) {
        /* Every reason a token fails is the caller's input: InvalidArgument. */
        sg_log_debug("workload api: ValidateJWTSVID from pid %d: %s", (int)w->peer.pid, j->err.msg);
        sg__wl_finish(w->call, SG_EINVAL, j->err.msg[0] != '\0' ? j->err.msg : "invalid JWT-SVID");
        goto out;
    }
    ValidateJWTSVIDResponse resp = VALIDATE_JWTSVIDRESPONSE__INIT;
    resp.spiffe_id = j->v.spiffe_id;
    resp.claims = j->st;
    if (sg_rpc_call_send(w->call, &resp.base) == 0)
        sg_rpc_call_finish(w->call, GRPC_STATUS_OK, "");
out:
    validate_job_free(j);
}

static void validate_done(uv_work_t *req, int status)
{
    validate_job *j = req->data;
    sg__wl_call *w = j->w;
    w->api->pending--;
    if (status != 0) {
        j->rc = sg_err_set(&j->err, SG_EUNAVAIL, "token validation was cancelled");
        if (w->call != NULL && !sg_rpc_call_is_over(w->call))
            sg__wl_finish(w->call, SG_EUNAVAIL, j->err.msg);
        validate_job_free(j);
    } else {
        validate_reply(j);
    }
    sg__wl_unref(w);
}

void sg__wl_validate(sg__wl_call *w)
{
    validate_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        sg__wl_finish(w->call, SG_ENOMEM, "out of memory");
        return;
    }
    j->w = w;
    j->work.data = j;
    /* The probe reads the token up to its bundle lookup: a token refused
     * before that is answered here, one whose bundle was copied goes to
     * the thread pool. */
    j->rc = sg_jwt_validate(w->token, w->aud[0], now_s(), probe_bundle, j, &j->v, &j->err);
    if (j->copied) {
        sg_jwt_validated_cleanup(&j->v);
        sg_err_clear(&j->err);
        j->rc = 0;
        w->refs++; /* validate_done drops it */
        w->api->pending++;
        if (uv_queue_work(w->api->d.loop, &j->work, validate_work, validate_done) == 0)
            return;
        w->api->pending--;
        w->refs--;
        /* No thread pool: validate here. */
        validate_work(&j->work);
    } else if (j->rc == 0) {
        validate_claims(j);
    }
    validate_reply(j);
}

/* ------------------------------------------------------------ federated X.509 */

long sg__wl_federated_x509(sg_cache *c, const char *const *tds, size_t n, sg__wl_fed **out)
{
    sg__wl_fed *f = calloc(n ? n : 1, sizeof(*f));
    if (f == NULL)
        return SG_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const sg_cache_federated *fb = sg_cache_federated_get(c, tds[i]);
        if (fb == NULL || fb->der_len == 0)
            continue;
        bool dup = false;
        for (size_t x = 0; x < k && !dup; x++)
            dup = f[x].key == fb->name;
        if (dup)
            continue;
        f[k].key = fb->name;
        f[k].der = fb->der;
        f[k].len = fb->der_len;
        k++;
    }
    *out = f;
    return (long)k;
}
