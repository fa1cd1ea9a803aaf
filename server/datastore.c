/*
 * The public datastore functions. They check and normalise their input
 * (entry IDs, selector sets, token hashing) and then dispatch through the
 * backend vtable chosen at open time, so every backend sees the same clean
 * data and callers never depend on a particular database.
 */
#include "server/datastore.h"

#include "server/datastore_int.h"

#include "common/spiffeid.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DS_MAX_DNS   1024          /* DNS names in one entry */
#define DS_MAX_FED   256           /* federated trust domains of one entry */
#define DS_MAX_JWKS  (1024 * 1024) /* bytes of one stored bundle */
#define DS_MAX_URL   2048
#define DS_MAX_TOKEN 1024 /* bytes of a join token */

struct sg_datastore {
    const sg__ds_backend *be;     /* static const table */
    void *st;                     /* backend state */
    atomic_uint_fast64_t fed_gen; /* federated bundle writes through this handle */
};

/* Supported database types; aliases point at the same backend. */
static const struct {
    const char *type;
    const sg__ds_backend *be;
} backends[] = {
    {"sqlite3", &sg__ds_sqlite},
    {"sqlite", &sg__ds_sqlite},
};

/* ------------------------------------------------------------ value types */

void sg__ds_selectors_free(sg_selector *s, size_t n)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(s[i].type);
        free(s[i].value);
    }
    free(s);
}

int sg__ds_selectors_dup(const sg_selector *src, size_t n, sg_selector **out)
{
    sg_selector *d;

    *out = NULL;
    if (n == 0)
        return 0;
    d = calloc(n, sizeof *d);
    if (d == NULL)
        return SG_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        d[i].type = strdup(src[i].type ? src[i].type : "");
        d[i].value = strdup(src[i].value ? src[i].value : "");
        if (d[i].type == NULL || d[i].value == NULL) {
            sg__ds_selectors_free(d, n);
            return SG_ENOMEM;
        }
    }
    *out = d;
    return 0;
}

void sg_entry_cleanup(sg_entry *e)
{
    if (e == NULL)
        return;
    free(e->spiffe_id);
    free(e->parent_id);
    sg__ds_selectors_free(e->selectors, e->nselectors);
    for (size_t i = 0; i < e->ndns; i++)
        free(e->dns_names[i]);
    free(e->dns_names);
    for (size_t i = 0; i < e->nfederates_with; i++)
        free(e->federates_with[i]);
    free(e->federates_with);
    free(e->hint);
    memset(e, 0, sizeof *e);
}

char *sg__ds_strdup_opt(const char *s, int *rc)
{
    char *d;

    if (s == NULL)
        return NULL;
    d = strdup(s);
    if (d == NULL)
        *rc = SG_ENOMEM;
    return d;
}

int sg_entry_copy(sg_entry *dst, const sg_entry *src)
{
    sg_entry t;
    int rc = 0;

    memset(&t, 0, sizeof t);
    memcpy(t.id, src->id, sizeof t.id);
    t.id[SG_ENTRY_ID_LEN] = '\0';
    t.x509_svid_ttl = src->x509_svid_ttl;
    t.jwt_svid_ttl = src->jwt_svid_ttl;
    t.downstream = src->downstream;
    t.admin = src->admin;
    t.revision = src->revision;
    t.created_at = src->created_at;
    t.spiffe_id = sg__ds_strdup_opt(src->spiffe_id, &rc);
    t.parent_id = sg__ds_strdup_opt(src->parent_id, &rc);
    t.hint = sg__ds_strdup_opt(src->hint, &rc);
    if (rc == 0 && src->nselectors > 0) {
        rc = sg__ds_selectors_dup(src->selectors, src->nselectors, &t.selectors);
        if (rc == 0)
            t.nselectors = src->nselectors;
    }
    if (rc == 0 && src->ndns > 0) {
        t.dns_names = calloc(src->ndns, sizeof *t.dns_names);
        if (t.dns_names == NULL) {
            rc = SG_ENOMEM;
        } else {
            t.ndns = src->ndns;
            for (size_t i = 0; i < src->ndns && rc == 0; i++)
                t.dns_names[i] = sg__ds_strdup_opt(src->dns_names[i] ? src->dns_names[i] : "", &rc);
        }
    }
    if (rc == 0 && src->nfederates_with > 0) {
        t.federates_with = calloc(src->nfederates_with, sizeof *t.federates_with);
        if (t.federates_with == NULL) {
            rc = SG_ENOMEM;
        } else {
            t.nfederates_with = src->nfederates_with;
            for (size_t i = 0; i < src->nfederates_with && rc == 0; i++)
                t.federates_with[i] =
                    sg__ds_strdup_opt(src->federates_with[i] ? src->federates_with[i] : "", &rc);
        }
    }
    if (rc != 0) {
        sg_entry_cleanup(&t);
        return rc;
    }
    *dst = t;
    return 0;
}

void sg_entry_list_free(sg_entry *list, size_t n)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        sg_entry_cleanup(&list[i]);
    free(list);
}

void sg_agent_rec_cleanup(sg_agent_rec *a)
{
    if (a == NULL)
        return;
    free(a->spiffe_id);
    free(a->attestation_type);
    sg__ds_selectors_free(a->selectors, a->nselectors);
    memset(a, 0, sizeof *a);
}

void sg_agent_rec_list_free(sg_agent_rec *list, size_t n)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        sg_agent_rec_cleanup(&list[i]);
    free(list);
}

/* ------------------------------------------------------------ checks */

/* Whether s is a printable string without spaces or control characters. */
static bool printable_token(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= 0x20 || *p == 0x7f)
            return false;
    return true;
}

static bool valid_entry_id(const char *id)
{
    size_t n = strlen(id);

    if (n == 0 || n > SG_ENTRY_ID_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static int check_id_arg(const char *id, sg_err *err)
{
    if (id == NULL || id[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "entry id is empty");
    if (strnlen(id, SG_ENTRY_ID_LEN + 1) > SG_ENTRY_ID_LEN || !valid_entry_id(id))
        return sg_err_set(err, SG_EINVAL,
                          "invalid entry id \"%.64s\": use 1-%d characters of [A-Za-z0-9._-]", id,
                          SG_ENTRY_ID_LEN);
    return 0;
}

static int check_selector(const sg_selector *s, sg_err *err)
{
    if (s->type == NULL || s->type[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "selector with an empty type");
    if (s->value == NULL || s->value[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "selector \"%.64s\" has an empty value", s->type);
    if (strchr(s->type, ':') != NULL)
        return sg_err_set(err, SG_EINVAL, "selector type \"%.64s\" contains ':'", s->type);
    if (strlen(s->type) + 1 + strlen(s->value) > SG_SELECTOR_MAX_LEN)
        return sg_err_set(err, SG_EINVAL, "selector \"%.32s:%.32s...\" is longer than %d bytes",
                          s->type, s->value, SG_SELECTOR_MAX_LEN);
    for (const unsigned char *p = (const unsigned char *)s->value; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return sg_err_set(err, SG_EINVAL, "selector \"%.32s:%.64s\" has a control character",
                              s->type, s->value);
    for (const unsigned char *p = (const unsigned char *)s->type; *p; p++)
        if (*p <= 0x20 || *p == 0x7f)
            return sg_err_set(err, SG_EINVAL, "selector type \"%.64s\" has a space or control",
                              s->type);
    return 0;
}

static int sel_cmp(const void *a, const void *b)
{
    const sg_selector *x = a, *y = b;
    int c = strcmp(x->type, y->type);
    return c != 0 ? c : strcmp(x->value, y->value);
}

/* Sorts the selectors of e (its own copy) and drops duplicates. */
static void normalise_selectors(sg_entry *e)
{
    size_t w = 0;

    qsort(e->selectors, e->nselectors, sizeof *e->selectors, sel_cmp);
    for (size_t r = 0; r < e->nselectors; r++) {
        if (w > 0 && sel_cmp(&e->selectors[w - 1], &e->selectors[r]) == 0) {
            free(e->selectors[r].type);
            free(e->selectors[r].value);
            continue;
        }
        e->selectors[w++] = e->selectors[r];
    }
    e->nselectors = w;
}

/* Checks a federates_with value: "spiffe://<td>" with a valid trust domain name and no path. */
static int check_fed_td_id(const char *v, sg_err *err)
{
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_err perr;

    if (v == NULL || strncmp(v, "spiffe://", 9) != 0)
        return sg_err_set(err, SG_EINVAL,
                          "federates_with \"%.128s\" is not a trust domain ID (spiffe://<name>)",
                          v ? v : "");
    if (sg_trust_domain_parse(v + 9, td, &perr) < 0)
        return sg_err_set(err, SG_EINVAL, "federates_with \"%.128s\": %s", v, perr.msg);
    return 0;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts the federates_with list of e (its own copy) and drops duplicates. */
static void normalise_federates(sg_entry *e)
{
    size_t w = 0;

    if (e->nfederates_with == 0)
        return;
    qsort(e->federates_with, e->nfederates_with, sizeof *e->federates_with, str_cmp);
    for (size_t r = 0; r < e->nfederates_with; r++) {
        if (w > 0 && strcmp(e->federates_with[w - 1], e->federates_with[r]) == 0) {
            free(e->federates_with[r]);
            continue;
        }
        e->federates_with[w++] = e->federates_with[r];
    }
    e->nfederates_with = w;
}

/*
 * Checks e and makes a normalised deep copy in *out. Semantic rules (SPIFFE
 * ID syntax, trust domain) belong to the API layer; this keeps data that
 * would break storage or matching out of the database.
 */
static int prepare_entry(const sg_entry *e, sg_entry *out, bool need_id, sg_err *err)
{
    int rc;

    if (e == NULL)
        return sg_err_set(err, SG_EINVAL, "entry is NULL");
    if (memchr(e->id, '\0', sizeof e->id) == NULL)
        return sg_err_set(err, SG_EINVAL, "entry id is not terminated");
    if (need_id || e->id[0] != '\0') {
        rc = check_id_arg(e->id, err);
        if (rc < 0)
            return rc;
    }
    if (e->spiffe_id == NULL || e->spiffe_id[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "entry has an empty SPIFFE ID");
    if (e->parent_id == NULL || e->parent_id[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "entry \"%.128s\" has an empty parent ID", e->spiffe_id);
    if (!printable_token(e->spiffe_id))
        return sg_err_set(err, SG_EINVAL, "SPIFFE ID \"%.128s\" has a space or control character",
                          e->spiffe_id);
    if (!printable_token(e->parent_id))
        return sg_err_set(err, SG_EINVAL, "parent ID \"%.128s\" has a space or control character",
                          e->parent_id);
    if (e->nselectors == 0 || e->selectors == NULL)
        return sg_err_set(err, SG_EINVAL, "entry \"%.128s\" has no selectors", e->spiffe_id);
    if (e->nselectors > SG_SELECTOR_SET_MAX)
        return sg_err_set(err, SG_EINVAL, "entry has %zu selectors (at most %d)", e->nselectors,
                          SG_SELECTOR_SET_MAX);
    for (size_t i = 0; i < e->nselectors; i++) {
        rc = check_selector(&e->selectors[i], err);
        if (rc < 0)
            return rc;
    }
    if (e->x509_svid_ttl < 0 || e->jwt_svid_ttl < 0)
        return sg_err_set(err, SG_EINVAL, "entry \"%.128s\" has a negative TTL", e->spiffe_id);
    if (e->ndns > DS_MAX_DNS)
        return sg_err_set(err, SG_EINVAL, "entry has %zu DNS names (at most %d)", e->ndns,
                          DS_MAX_DNS);
    if (e->ndns > 0 && e->dns_names == NULL)
        return sg_err_set(err, SG_EINVAL, "entry DNS name list is NULL");
    for (size_t i = 0; i < e->ndns; i++)
        if (e->dns_names[i] == NULL || e->dns_names[i][0] == '\0')
            return sg_err_set(err, SG_EINVAL, "entry \"%.128s\" has an empty DNS name",
                              e->spiffe_id);
    if (e->nfederates_with > DS_MAX_FED)
        return sg_err_set(err, SG_EINVAL, "entry federates with %zu trust domains (at most %d)",
                          e->nfederates_with, DS_MAX_FED);
    if (e->nfederates_with > 0 && e->federates_with == NULL)
        return sg_err_set(err, SG_EINVAL, "entry federates_with list is NULL");
    for (size_t i = 0; i < e->nfederates_with; i++) {
        rc = check_fed_td_id(e->federates_with[i], err);
        if (rc < 0)
            return rc;
    }
    rc = sg_entry_copy(out, e);
    if (rc < 0)
        return sg_err_set(err, rc, "out of memory copying entry");
    normalise_selectors(out);
    normalise_federates(out);
    return 0;
}

/* Writes a random UUID version 4 into out (37 bytes). */
static int new_uuid(char out[SG_ENTRY_ID_LEN + 1], sg_err *err)
{
    unsigned char b[16];

    if (RAND_bytes(b, sizeof b) != 1)
        return sg_err_ssl(err, "generating an entry id");
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, SG_ENTRY_ID_LEN + 1,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
    return 0;
}

/* SHA-256 of token as lower-case hex into out (65 bytes). */
static int hash_token(const char *token, char out[SG__DS_TOKEN_HASH_LEN + 1], sg_err *err)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    size_t n;

    if (token == NULL || token[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "join token is empty");
    n = strnlen(token, DS_MAX_TOKEN + 1);
    if (n > DS_MAX_TOKEN)
        return sg_err_set(err, SG_EINVAL, "join token is longer than %d bytes", DS_MAX_TOKEN);
    if (EVP_Digest(token, n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != sizeof md)
        return sg_err_ssl(err, "hashing a join token");
    for (size_t i = 0; i < sizeof md; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

static int check_agent_id(const char *id, sg_err *err)
{
    if (id == NULL || id[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "agent SPIFFE ID is empty");
    if (strnlen(id, 4097) > 4096)
        return sg_err_set(err, SG_EINVAL, "agent SPIFFE ID is too long");
    return 0;
}

/* ------------------------------------------------------------ lifecycle */

int sg_datastore_open(sg_datastore **out, const char *type, const char *conn, sg_err *err)
{
    const sg__ds_backend *be = NULL;
    sg_datastore *ds;
    int rc;

    if (type == NULL || type[0] == '\0')
        type = "sqlite3";
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++)
        if (strcmp(backends[i].type, type) == 0)
            be = backends[i].be;
    if (be == NULL)
        return sg_err_set(err, SG_EUNSUPPORTED,
                          "datastore database_type \"%.64s\" is not supported (use \"sqlite3\")",
                          type);
    if (conn == NULL || conn[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "datastore connection_string is empty");
    ds = calloc(1, sizeof *ds);
    if (ds == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    ds->be = be;
    rc = be->open(&ds->st, conn, err);
    if (rc < 0) {
        free(ds);
        return rc;
    }
    *out = ds;
    return 0;
}

void sg_datastore_close(sg_datastore *ds)
{
    if (ds == NULL)
        return;
    ds->be->close(ds->st);
    free(ds);
}

/* ------------------------------------------------------------ entries */

int sg_ds_entry_create(sg_datastore *ds, sg_entry *e, sg_err *err)
{
    sg_entry n;
    int rc;

    rc = prepare_entry(e, &n, false, err);
    if (rc < 0)
        return rc;
    if (n.id[0] == '\0') {
        rc = new_uuid(n.id, err);
        if (rc < 0)
            goto out;
    }
    rc = ds->be->entry_create(ds->st, &n, err);
    if (rc == 0) {
        memcpy(e->id, n.id, sizeof e->id);
        e->revision = n.revision;
        e->created_at = n.created_at;
    }
out:
    sg_entry_cleanup(&n);
    return rc;
}

int sg_ds_entry_update(sg_datastore *ds, sg_entry *e, sg_err *err)
{
    sg_entry n;
    int rc;

    rc = prepare_entry(e, &n, true, err);
    if (rc < 0)
        return rc;
    rc = ds->be->entry_update(ds->st, &n, err);
    if (rc == 0) {
        e->revision = n.revision;
        e->created_at = n.created_at;
    }
    sg_entry_cleanup(&n);
    return rc;
}

int sg_ds_entry_delete(sg_datastore *ds, const char *id, sg_err *err)
{
    int rc = check_id_arg(id, err);

    return rc < 0 ? rc : ds->be->entry_delete(ds->st, id, err);
}

int sg_ds_entry_get(sg_datastore *ds, const char *id, sg_entry *out, sg_err *err)
{
    int rc = check_id_arg(id, err);

    return rc < 0 ? rc : ds->be->entry_get(ds->st, id, out, err);
}

int sg_ds_entry_list(sg_datastore *ds, const sg_entry_filter *f, sg_entry **list, size_t *n,
                     sg_err *err)
{
    if (f != NULL) {
        if (f->nselectors > SG_SELECTOR_SET_MAX)
            return sg_err_set(err, SG_EINVAL, "filter has %zu selectors (at most %d)",
                              f->nselectors, SG_SELECTOR_SET_MAX);
        for (size_t i = 0; i < f->nselectors; i++) {
            int rc = check_selector(&f->selectors[i], err);
            if (rc < 0)
                return rc;
        }
    }
    return ds->be->entry_list(ds->st, f, list, n, err);
}

int sg_ds_entry_revision(sg_datastore *ds, int64_t *out, sg_err *err)
{
    return ds->be->entry_revision(ds->st, out, err);
}

/* ------------------------------------------------------------ join tokens */

int sg_ds_token_create(sg_datastore *ds, const char *token, int64_t expires_at, sg_err *err)
{
    char h[SG__DS_TOKEN_HASH_LEN + 1];
    int rc = hash_token(token, h, err);

    return rc < 0 ? rc : ds->be->token_create(ds->st, h, expires_at, err);
}

int sg_ds_token_consume(sg_datastore *ds, const char *token, int64_t now, sg_err *err)
{
    char h[SG__DS_TOKEN_HASH_LEN + 1];
    int rc = hash_token(token, h, err);

    if (rc == SG_EINVAL && token != NULL && token[0] != '\0')
        return sg_err_set(err, SG_ENOENT, "join token not found or already used");
    return rc < 0 ? rc : ds->be->token_consume(ds->st, h, now, err);
}

int sg_ds_token_prune(sg_datastore *ds, int64_t now, sg_err *err)
{
    return ds->be->token_prune(ds->st, now, err);
}

/* ------------------------------------------------------------ agents */

int sg_ds_agent_put(sg_datastore *ds, const sg_agent_rec *a, sg_err *err)
{
    int rc;

    if (a == NULL)
        return sg_err_set(err, SG_EINVAL, "agent record is NULL");
    rc = check_agent_id(a->spiffe_id, err);
    if (rc < 0)
        return rc;
    if (memchr(a->serial, '\0', sizeof a->serial) == NULL ||
        memchr(a->prev_serial, '\0', sizeof a->prev_serial) == NULL)
        return sg_err_set(err, SG_EINVAL, "agent serial is not terminated");
    if (a->nselectors > SG_SELECTOR_SET_MAX)
        return sg_err_set(err, SG_EINVAL, "agent has %zu selectors (at most %d)", a->nselectors,
                          SG_SELECTOR_SET_MAX);
    for (size_t i = 0; i < a->nselectors; i++) {
        rc = check_selector(&a->selectors[i], err);
        if (rc < 0)
            return rc;
    }
    return ds->be->agent_put(ds->st, a, err);
}

int sg_ds_agent_get(sg_datastore *ds, const char *spiffe_id, sg_agent_rec *out, sg_err *err)
{
    int rc = check_agent_id(spiffe_id, err);

    return rc < 0 ? rc : ds->be->agent_get(ds->st, spiffe_id, out, err);
}

int sg_ds_agent_list(sg_datastore *ds, sg_agent_rec **list, size_t *n, sg_err *err)
{
    return ds->be->agent_list(ds->st, list, n, err);
}

int sg_ds_agent_delete(sg_datastore *ds, const char *spiffe_id, sg_err *err)
{
    int rc = check_agent_id(spiffe_id, err);

    return rc < 0 ? rc : ds->be->agent_delete(ds->st, spiffe_id, err);
}

int sg_ds_agent_set_banned(sg_datastore *ds, const char *spiffe_id, bool banned, sg_err *err)
{
    int rc = check_agent_id(spiffe_id, err);

    return rc < 0 ? rc : ds->be->agent_set_banned(ds->st, spiffe_id, banned, err);
}

/* ------------------------------------------------------------ federation */

void sg_fed_bundle_rec_cleanup(sg_fed_bundle_rec *b)
{
    if (b == NULL)
        return;
    free(b->trust_domain);
    free(b->jwks);
    memset(b, 0, sizeof *b);
}

void sg_fed_bundle_rec_list_free(sg_fed_bundle_rec *list, size_t n)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        sg_fed_bundle_rec_cleanup(&list[i]);
    free(list);
}

void sg_fed_rel_cleanup(sg_fed_rel *r)
{
    if (r == NULL)
        return;
    free(r->trust_domain);
    free(r->url);
    free(r->profile);
    free(r->endpoint_spiffe_id);
    memset(r, 0, sizeof *r);
}

void sg_fed_rel_list_free(sg_fed_rel *list, size_t n)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        sg_fed_rel_cleanup(&list[i]);
    free(list);
}

int sg_fed_rel_copy(sg_fed_rel *dst, const sg_fed_rel *src)
{
    sg_fed_rel t;
    int rc = 0;

    memset(&t, 0, sizeof t);
    t.trust_domain = sg__ds_strdup_opt(src->trust_domain, &rc);
    t.url = sg__ds_strdup_opt(src->url, &rc);
    t.profile = sg__ds_strdup_opt(src->profile, &rc);
    t.endpoint_spiffe_id = sg__ds_strdup_opt(src->endpoint_spiffe_id, &rc);
    if (rc < 0) {
        sg_fed_rel_cleanup(&t);
        return rc;
    }
    *dst = t;
    return 0;
}

/* A trust domain name as the federation tables key it: valid, lower case, no scheme. */
static int check_td_name(const char *td, sg_err *err)
{
    char norm[SG_TRUST_DOMAIN_MAX + 1];
    sg_err perr;

    if (td == NULL || td[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "trust domain is empty");
    if (strncmp(td, "spiffe://", 9) == 0)
        return sg_err_set(err, SG_EINVAL, "trust domain \"%.128s\" must be a name, not an ID", td);
    if (sg_trust_domain_parse(td, norm, &perr) < 0)
        return sg_err_set(err, SG_EINVAL, "invalid trust domain \"%.128s\": %s", td, perr.msg);
    if (strcmp(norm, td) != 0)
        return sg_err_set(err, SG_EINVAL, "trust domain \"%.128s\" is not in canonical form", td);
    return 0;
}

int sg_ds_fed_bundle_put(sg_datastore *ds, const char *trust_domain, const char *jwks,
                         uint64_t sequence, bool *changed, sg_err *err)
{
    bool ch = false;
    int rc = check_td_name(trust_domain, err);

    if (rc < 0)
        return rc;
    if (jwks == NULL || jwks[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "bundle of \"%s\" is empty", trust_domain);
    if (strnlen(jwks, DS_MAX_JWKS + 1) > DS_MAX_JWKS)
        return sg_err_set(err, SG_ETOOBIG, "bundle of \"%s\" is larger than %d bytes", trust_domain,
                          DS_MAX_JWKS);
    if (sequence > INT64_MAX)
        return sg_err_set(err, SG_EINVAL, "bundle sequence %llu of \"%s\" is out of range",
                          (unsigned long long)sequence, trust_domain);
    rc =
        ds->be->fed_bundle_put(ds->st, trust_domain, jwks, sequence, (int64_t)time(NULL), &ch, err);
    if (rc == 0 && ch)
        atomic_fetch_add(&ds->fed_gen, 1);
    if (changed != NULL)
        *changed = rc == 0 && ch;
    return rc;
}

int sg_ds_fed_bundle_get(sg_datastore *ds, const char *trust_domain, sg_fed_bundle_rec *out,
                         sg_err *err)
{
    int rc = check_td_name(trust_domain, err);

    return rc < 0 ? rc : ds->be->fed_bundle_get(ds->st, trust_domain, out, err);
}

int sg_ds_fed_bundle_list(sg_datastore *ds, sg_fed_bundle_rec **list, size_t *n, sg_err *err)
{
    return ds->be->fed_bundle_list(ds->st, list, n, err);
}

int sg_ds_fed_bundle_delete(sg_datastore *ds, const char *trust_domain, sg_fed_delete_mode mode,
                            size_t *entries_changed, sg_err *err)
{
    size_t ch = 0;
    int rc = check_td_name(trust_domain, err);

    if (rc < 0)
        return rc;
    if (mode != SG_FED_DELETE_RESTRICT && mode != SG_FED_DELETE_DELETE &&
        mode != SG_FED_DELETE_DISSOCIATE)
        return sg_err_set(err, SG_EINVAL, "unknown bundle delete mode %d", (int)mode);
    rc = ds->be->fed_bundle_delete(ds->st, trust_domain, mode, &ch, err);
    if (rc == 0)
        atomic_fetch_add(&ds->fed_gen, 1);
    if (entries_changed != NULL)
        *entries_changed = rc == 0 ? ch : 0;
    return rc;
}

uint64_t sg_ds_fed_bundle_gen(sg_datastore *ds)
{
    return atomic_load(&ds->fed_gen);
}

/* https://host[:port][/path] with a non-empty host and no spaces or controls. */
static int check_url(const char *url, sg_err *err)
{
    const char *host;
    size_t hl;

    if (url == NULL || url[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "bundle endpoint URL is required");
    if (strnlen(url, DS_MAX_URL + 1) > DS_MAX_URL)
        return sg_err_set(err, SG_EINVAL, "bundle endpoint URL is longer than %d bytes",
                          DS_MAX_URL);
    if (strncmp(url, "https://", 8) != 0)
        return sg_err_set(err, SG_EINVAL, "bundle endpoint URL \"%.128s\" must use https", url);
    if (!printable_token(url))
        return sg_err_set(err, SG_EINVAL,
                          "bundle endpoint URL \"%.128s\" has a space or control character", url);
    host = url + 8;
    hl = strcspn(host, "/?#");
    if (hl == 0 || host[0] == ':' || memchr(host, '@', hl) != NULL)
        return sg_err_set(err, SG_EINVAL, "bundle endpoint URL \"%.128s\" has no valid host", url);
    return 0;
}

int sg_ds_fed_rel_put(sg_datastore *ds, const sg_fed_rel *r, bool update, sg_err *err)
{
    int rc;

    if (r == NULL)
        return sg_err_set(err, SG_EINVAL, "federation relationship is NULL");
    rc = check_td_name(r->trust_domain, err);
    if (rc < 0)
        return rc;
    rc = check_url(r->url, err);
    if (rc < 0)
        return rc;
    if (r->profile == NULL ||
        (strcmp(r->profile, "https_spiffe") != 0 && strcmp(r->profile, "https_web") != 0))
        return sg_err_set(err, SG_EINVAL,
                          "bundle endpoint profile \"%.64s\" is unknown (use https_spiffe or "
                          "https_web)",
                          r->profile ? r->profile : "");
    if (strcmp(r->profile, "https_spiffe") == 0) {
        sg_spiffeid sid;
        sg_err perr;
        if (r->endpoint_spiffe_id == NULL || r->endpoint_spiffe_id[0] == '\0')
            return sg_err_set(err, SG_EINVAL,
                              "profile https_spiffe needs the endpoint SPIFFE ID of \"%s\"",
                              r->trust_domain);
        if (sg_spiffeid_parse(r->endpoint_spiffe_id, &sid, &perr) < 0)
            return sg_err_set(err, SG_EINVAL, "invalid endpoint SPIFFE ID \"%.128s\": %s",
                              r->endpoint_spiffe_id, perr.msg);
    } else if (r->endpoint_spiffe_id != NULL && r->endpoint_spiffe_id[0] != '\0') {
        return sg_err_set(err, SG_EINVAL, "profile https_web takes no endpoint SPIFFE ID");
    }
    return ds->be->fed_rel_put(ds->st, r, update, err);
}

int sg_ds_fed_rel_get(sg_datastore *ds, const char *trust_domain, sg_fed_rel *out, sg_err *err)
{
    int rc = check_td_name(trust_domain, err);

    return rc < 0 ? rc : ds->be->fed_rel_get(ds->st, trust_domain, out, err);
}

int sg_ds_fed_rel_list(sg_datastore *ds, sg_fed_rel **list, size_t *n, sg_err *err)
{
    return ds->be->fed_rel_list(ds->st, list, n, err);
}

int sg_ds_fed_rel_delete(sg_datastore *ds, const char *trust_domain, sg_err *err)
{
    int rc = check_td_name(trust_domain, err);

    return rc < 0 ? rc : ds->be->fed_rel_delete(ds->st, trust_domain, err);
}
