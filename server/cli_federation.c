/*
 * Federation commands of the sigil-server CLI. Flags follow Go's flag
 * package as spire-server does (-flag value, -flag=value, --flag), and
 * each command accepts only its own flags, so a typo is an error rather
 * than silently ignored. Output is SPIRE's pretty text or, with
 * -output json, one JSON document.
 */
#include "server/cli_federation.h"

#include "common/bundle.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "common/spiffeid.h"
#include "server/admin_pb.h"
#include "server/cli.h"
#include "server/cli_admin.h"
#include "sigil/admin/v1/admin.pb-c.h"

#include <grpc/grpc.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CALL_TIMEOUT_MS 30000
#define BUNDLE_FILE_MAX (1024 * 1024)
#define DATA_FILE_MAX   (16 * 1024 * 1024)

typedef enum fflag {
    FF_SOCKET,
    FF_OUTPUT,
    FF_TD,
    FF_URL,
    FF_PROFILE,
    FF_ENDPOINT_ID,
    FF_BUNDLE_PATH,
    FF_BUNDLE_FORMAT,
    FF_DATA,
    FF_ID,
    FF_PATH,
    FF_FORMAT,
    FF_MODE,
    FF__COUNT
} fflag;

static const struct {
    const char *name;
    const char *defval;
    const char *usage;
} fflags[FF__COUNT] = {
    [FF_SOCKET] = {"socketPath", SG_SERVER_CLI_DEFAULT_SOCKET,
                   "Path to the sigil-server admin API socket"},
    [FF_OUTPUT] = {"output", "pretty", "Desired output format (pretty, json)"},
    [FF_TD] = {"trustDomain", NULL,
               "Name of the trust domain to federate with (e.g., example.org)"},
    [FF_URL] = {"bundleEndpointURL", NULL, "URL of the SPIFFE bundle endpoint"},
    [FF_PROFILE] = {"bundleEndpointProfile", NULL,
                    "Endpoint profile type (either \"https_web\" or \"https_spiffe\")"},
    [FF_ENDPOINT_ID] = {"endpointSpiffeID", NULL,
                        "SPIFFE ID of the SPIFFE bundle endpoint server (https_spiffe only)"},
    [FF_BUNDLE_PATH] = {"trustDomainBundlePath", NULL,
                        "Path to the trust domain bundle data (optional)"},
    [FF_BUNDLE_FORMAT] = {"trustDomainBundleFormat", "pem",
                          "The format of the bundle data (pem or spiffe)"},
    [FF_DATA] = {"data", NULL,
                 "Path to a file containing federation relationships in JSON format; '-' "
                 "reads stdin"},
    [FF_ID] = {"id", NULL, "SPIFFE ID of the trust domain"},
    [FF_PATH] = {"path", NULL, "Path to the bundle data (default: stdin)"},
    [FF_FORMAT] = {"format", "pem", "The format of the bundle data (pem or spiffe)"},
    [FF_MODE] = {"mode", "restrict", "Deletion mode: one of restrict, delete, or dissociate"},
};

#define B(x)   (1u << (x))
#define COMMON (B(FF_SOCKET) | B(FF_OUTPUT))
#define REL_WRITE                                                                                  \
    (COMMON | B(FF_TD) | B(FF_URL) | B(FF_PROFILE) | B(FF_ENDPOINT_ID) | B(FF_BUNDLE_PATH) |       \
     B(FF_BUNDLE_FORMAT) | B(FF_DATA))

typedef struct fctx {
    const char *name; /* "federation create" */
    const char *val[FF__COUNT];
    bool set[FF__COUNT];
    bool json;
    grpc_channel *ch;
} fctx;

typedef struct fcmd {
    const char *group, *sub;
    int (*run)(fctx *c);
    unsigned flags;
    const char *summary;
} fcmd;

static const char *fval(const fctx *c, fflag f)
{
    return c->set[f] ? c->val[f] : fflags[f].defval;
}

static int failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int failf(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "Error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return 1;
}

static int fail_err(const sg_err *err)
{
    fprintf(stderr, "Error: %s\n", err->msg);
    return 1;
}

static void usage(const fcmd *cmd)
{
    fprintf(stderr, "Usage of %s %s:\n", cmd->group, cmd->sub);
    for (int i = 0; i < FF__COUNT; i++) {
        if (!(cmd->flags & B(i)))
            continue;
        fprintf(stderr, "  -%s string\n    \t%s", fflags[i].name, fflags[i].usage);
        if (fflags[i].defval != NULL)
            fprintf(stderr, " (default \"%s\")", fflags[i].defval);
        fprintf(stderr, "\n");
    }
}

/* 0 ok, 1 error (printed), 2 help. */
static int parse(fctx *c, const fcmd *cmd, int argc, char **argv)
{
    for (int i = 0; i < argc;) {
        const char *a = argv[i++], *name, *eq, *value = NULL;
        size_t nlen;
        int id = -1;

        if (a[0] != '-' || a[1] == '\0') {
            fprintf(stderr, "unexpected argument \"%s\" for %s\n", a, c->name);
            usage(cmd);
            return 1;
        }
        name = a[1] == '-' ? a + 2 : a + 1;
        eq = strchr(name, '=');
        nlen = eq ? (size_t)(eq - name) : strlen(name);
        if ((nlen == 1 && name[0] == 'h') || (nlen == 4 && strncmp(name, "help", 4) == 0)) {
            usage(cmd);
            return 2;
        }
        for (int k = 0; k < FF__COUNT; k++)
            if ((cmd->flags & B(k)) && strlen(fflags[k].name) == nlen &&
                strncmp(fflags[k].name, name, nlen) == 0)
                id = k;
        if (id < 0) {
            fprintf(stderr, "flag provided but not defined: -%.*s\n", (int)(nlen > 64 ? 64 : nlen),
                    name);
            usage(cmd);
            return 1;
        }
        if (eq != NULL) {
            value = eq + 1;
        } else if (i < argc) {
            value = argv[i++];
        } else {
            fprintf(stderr, "flag needs an argument: -%s\n", fflags[id].name);
            usage(cmd);
            return 1;
        }
        c->val[id] = value;
        c->set[id] = true;
    }
    return 0;
}

/* ------------------------------------------------------------ transport */

static int call(fctx *c, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp, sg_err *err)
{
    return sg_cli_admin_call(&c->ch, fval(c, FF_SOCKET), method, req, desc, CALL_TIMEOUT_MS, resp,
                             err);
}

static int print_json(json_t *root)
{
    char *s;

    if (root == NULL)
        return failf("%s", "out of memory");
    s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (s == NULL)
        return failf("%s", "out of memory");
    printf("%s\n", s);
    free(s);
    return 0;
}

/* ------------------------------------------------------------ bundle files */

/* Reads path ("-" or NULL: stdin) up to max bytes. */
static int read_input(const char *path, size_t max, char **out, size_t *len, sg_err *err)
{
    uint8_t *data = NULL;
    int rc;

    if (path != NULL && strcmp(path, "-") != 0) {
        rc = sg_fs_read_file(path, max, &data, len, err);
        if (rc < 0)
            return rc;
        char *t = realloc(data, *len + 1);
        if (t == NULL) {
            free(data);
            return sg_err_set(err, SG_ENOMEM, "out of memory");
        }
        t[*len] = '\0';
        *out = t;
        return 0;
    }
    rc = sg_cli_admin_read_stdin(max, out, len, err);
    if (rc == SG_ETOOBIG)
        sg_err_set(err, SG_ETOOBIG, "input is larger than %zu bytes", max);
    return rc;
}

/* Loads a bundle for td from text in format "pem" or "spiffe". */
static int bundle_from_text(const char *td, const char *text, size_t len, const char *format,
                            sg_bundle *out, sg_err *err)
{
    if (strcmp(format, "pem") == 0)
        return sg_bundle_from_pem(td, text, len, out, err);
    if (strcmp(format, "spiffe") == 0)
        return sg_bundle_from_jwks(td, text, len, out, err);
    return sg_err_set(err, SG_EINVAL, "invalid format \"%.32s\": use pem or spiffe", format);
}

/* An sg_bundle from a received protobuf bundle (copies); td without spiffe://. */
static int bundle_from_msg(const Sigil__Admin__V1__Bundle *m, sg_bundle *out, sg_err *err)
{
    const char *td = m->trust_domain ? m->trust_domain : "";
    sg_bundle b;
    int rc;

    if (strncmp(td, "spiffe://", 9) == 0)
        td += 9;
    rc = sg_admin_pb_bundle_view(m, td, &b, err);
    if (rc < 0)
        return rc;
    rc = sg_bundle_copy(out, &b, err);
    sg_admin_pb_bundle_view_cleanup(&b);
    return rc;
}

/* Prints m as PEM or SPIFFE JSON; json_out (may be NULL) receives the JSON text instead. */
static int print_bundle(const Sigil__Admin__V1__Bundle *m, const char *format, char **json_out)
{
    sg_bundle b;
    char *text = NULL;
    sg_err err;
    int rc = bundle_from_msg(m, &b, &err);

    if (rc < 0)
        return fail_err(&err);
    if (json_out != NULL || strcmp(format, "spiffe") == 0)
        rc = sg_bundle_to_jwks(&b, &text, &err);
    else
        rc = sg_bundle_x509_pem(&b, &text, &err);
    sg_bundle_cleanup(&b);
    if (rc < 0)
        return fail_err(&err);
    if (json_out != NULL) {
        *json_out = text;
        return 0;
    }
    fputs(text, stdout);
    if (text[0] != '\0' && text[strlen(text) - 1] != '\n')
        fputc('\n', stdout);
    free(text);
    return 0;
}

/* ------------------------------------------------------------ bundle set|list|delete */

/* The trust domain of -id (or -trustDomain) as "spiffe://td" into out. */
static int td_id_arg(const char *v, const char *flag, char out[SG_TRUST_DOMAIN_MAX + 16])
{
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_err e;

    if (v == NULL || v[0] == '\0') {
        fprintf(stderr, "Error: %s is required\n", flag);
        return 1;
    }
    if (sg_trust_domain_parse(v, td, &e) < 0) {
        fprintf(stderr, "Error: invalid %s \"%s\": %s\n", flag, v, e.msg);
        return 1;
    }
    snprintf(out, SG_TRUST_DOMAIN_MAX + 16, "spiffe://%s", td);
    return 0;
}

static int cmd_bundle_set(fctx *c)
{
    Sigil__Admin__V1__SetFederatedBundleRequest req =
        SIGIL__ADMIN__V1__SET_FEDERATED_BUNDLE_REQUEST__INIT;
    char id[SG_TRUST_DOMAIN_MAX + 16];
    ProtobufCMessage *resp = NULL;
    char *text = NULL;
    size_t len = 0;
    sg_bundle b;
    sg_admin_pb_bundle p;
    sg_err err;
    int rc;

    if (td_id_arg(fval(c, FF_ID), "id", id))
        return 1;
    sg_err_clear(&err);
    if (read_input(fval(c, FF_PATH), BUNDLE_FILE_MAX, &text, &len, &err) < 0)
        return fail_err(&err);
    rc = bundle_from_text(id + 9, text, len, fval(c, FF_FORMAT), &b, &err);
    free(text);
    if (rc < 0)
        return fail_err(&err);
    b.sequence = 0; /* the server assigns the next one */
    if (sg_admin_pb_bundle_init(&p, &b) < 0) {
        sg_bundle_cleanup(&b);
        return failf("%s", "out of memory");
    }
    req.bundle = &p.msg;
    rc = call(c, "SetFederatedBundle", &req.base, &sigil__admin__v1__bundle__descriptor, &resp,
              &err);
    sg_admin_pb_bundle_cleanup(&p);
    sg_bundle_cleanup(&b);
    if (rc < 0)
        return fail_err(&err);
    if (c->json)
        rc = print_json(json_pack("{s:[{s:{s:i,s:s},s:s}]}", "results", "status", "code", 0,
                                  "message", "OK", "trust_domain", id + 9));
    else
        printf("bundle set.\n");
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

static int cmd_bundle_list(fctx *c)
{
    Sigil__Admin__V1__ListFederatedBundlesRequest req =
        SIGIL__ADMIN__V1__LIST_FEDERATED_BUNDLES_REQUEST__INIT;
    Sigil__Admin__V1__ListFederatedBundlesResponse *r;
    ProtobufCMessage *resp = NULL;
    char want[SG_TRUST_DOMAIN_MAX + 16] = "";
    const char *format = fval(c, FF_FORMAT);
    json_t *arr = NULL;
    sg_err err;
    int rc, shown = 0;

    if (c->set[FF_ID] && td_id_arg(c->val[FF_ID], "id", want))
        return 1;
    if (strcmp(format, "pem") != 0 && strcmp(format, "spiffe") != 0)
        return failf("invalid format \"%s\": use pem or spiffe", format);
    sg_err_clear(&err);
    rc = call(c, "ListFederatedBundles", &req.base,
              &sigil__admin__v1__list_federated_bundles_response__descriptor, &resp, &err);
    if (rc < 0)
        return fail_err(&err);
    r = (void *)resp;
    if (c->json)
        arr = json_array();
    for (size_t i = 0; i < r->n_bundles && rc == 0; i++) {
        const Sigil__Admin__V1__Bundle *m = r->bundles[i];
        if (want[0] != '\0' && strcmp(m->trust_domain, want) != 0)
            continue;
        if (c->json) {
            char *j = NULL;
            json_error_t je;
            rc = print_bundle(m, format, &j);
            if (rc == 0)
                json_array_append_new(arr, json_pack("{s:s,s:o}", "trust_domain", m->trust_domain,
                                                     "bundle", json_loads(j, 0, &je)));
            free(j);
        } else {
            if (want[0] == '\0') {
                if (shown > 0)
                    printf("\n");
                printf("****************************************\n* %s\n"
                       "****************************************\n",
                       m->trust_domain);
            }
            rc = print_bundle(m, format, NULL);
        }
        shown++;
    }
    if (rc == 0 && want[0] != '\0' && shown == 0)
        rc = failf("no federated bundle for \"%s\"", want);
    if (c->json && rc == 0)
        rc = print_json(json_pack("{s:o}", "bundles", arr));
    else
        json_decref(arr);
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

static int cmd_bundle_delete(fctx *c)
{
    Sigil__Admin__V1__DeleteFederatedBundleRequest req =
        SIGIL__ADMIN__V1__DELETE_FEDERATED_BUNDLE_REQUEST__INIT;
    char id[SG_TRUST_DOMAIN_MAX + 16];
    const char *mode = fval(c, FF_MODE);
    ProtobufCMessage *resp = NULL;
    sg_err err;
    int rc;

    if (td_id_arg(fval(c, FF_ID), "id", id))
        return 1;
    if (strcmp(mode, "restrict") != 0 && strcmp(mode, "delete") != 0 &&
        strcmp(mode, "dissociate") != 0)
        return failf("unsupported mode \"%s\": use restrict, delete or dissociate", mode);
    req.trust_domain = id;
    req.mode = (char *)(uintptr_t)mode;
    sg_err_clear(&err);
    rc = call(c, "DeleteFederatedBundle", &req.base,
              &sigil__admin__v1__delete_federated_bundle_response__descriptor, &resp, &err);
    if (rc < 0)
        return fail_err(&err);
    protobuf_c_message_free_unpacked(resp, NULL);
    if (c->json)
        return print_json(json_pack("{s:[{s:{s:i,s:s},s:s}]}", "results", "status", "code", 0,
                                    "message", "OK", "trust_domain", id + 9));
    printf("bundle deleted.\n");
    return 0;
}

/* ------------------------------------------------------------ federation */

static json_t *rel_json(const Sigil__Admin__V1__FederationRelationship *r)
{
    const char *td = r->trust_domain;
    json_t *o;

    if (strncmp(td, "spiffe://", 9) == 0)
        td += 9;
    o = json_pack("{s:s,s:s}", "trust_domain", td, "bundle_endpoint_url", r->bundle_endpoint_url);
    if (o == NULL)
        return NULL;
    if (strcmp(r->bundle_endpoint_profile, "https_spiffe") == 0)
        json_object_set_new(o, "https_spiffe",
                            json_pack("{s:s}", "endpoint_spiffe_id", r->endpoint_spiffe_id));
    else
        json_object_set_new(o, "https_web", json_object());
    if (r->trust_domain_bundle != NULL)
        json_object_set_new(o, "trust_domain_bundle_sequence",
                            json_integer((json_int_t)r->trust_domain_bundle->sequence));
    return o;
}

static void print_rel(const Sigil__Admin__V1__FederationRelationship *r)
{
    const char *td = r->trust_domain;

    if (strncmp(td, "spiffe://", 9) == 0)
        td += 9;
    printf("Trust domain              : %s\n", td);
    printf("Bundle endpoint URL       : %s\n", r->bundle_endpoint_url);
    printf("Bundle endpoint profile   : %s\n", r->bundle_endpoint_profile);
    if (r->endpoint_spiffe_id != NULL && r->endpoint_spiffe_id[0] != '\0')
        printf("Endpoint SPIFFE ID        : %s\n", r->endpoint_spiffe_id);
}

/* Sends one Create/UpdateFederationRelationship and prints its result. */
static int rel_write(fctx *c, bool update, Sigil__Admin__V1__FederationRelationship *m)
{
    ProtobufCMessage *resp = NULL;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    rc = call(c, update ? "UpdateFederationRelationship" : "CreateFederationRelationship", &m->base,
              &sigil__admin__v1__federation_relationship__descriptor, &resp, &err);
    if (rc < 0) {
        fprintf(stderr, "Error: failed to %s federation relationship with \"%s\": %s\n",
                update ? "update" : "create", m->trust_domain, err.msg);
        return 1;
    }
    const Sigil__Admin__V1__FederationRelationship *got = (const void *)resp;
    if (c->json) {
        rc = print_json(json_pack("{s:[{s:{s:i,s:s},s:o}]}", "results", "status", "code", 0,
                                  "message", "OK", "federation_relationship", rel_json(got)));
    } else {
        printf("Federation relationship %s.\n\n", update ? "updated" : "created");
        print_rel(got);
        printf("\n");
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

/* One relationship from SPIRE's -data JSON shape. */
static int rel_from_json(json_t *o, Sigil__Admin__V1__FederationRelationship *m, char *why,
                         size_t wl)
{
    json_t *web, *spiffe;
    const char *k;
    json_t *v;

    if (!json_is_object(o)) {
        snprintf(why, wl, "a relationship must be a JSON object");
        return -1;
    }
    json_object_foreach(o, k, v)
    {
        if (strcmp(k, "trustDomain") != 0 && strcmp(k, "bundleEndpointUrl") != 0 &&
            strcmp(k, "httpsWeb") != 0 && strcmp(k, "httpsSpiffe") != 0) {
            snprintf(why, wl, "unknown field \"%.64s\"", k);
            return -1;
        }
    }
    m->trust_domain = (char *)(uintptr_t)json_string_value(json_object_get(o, "trustDomain"));
    m->bundle_endpoint_url =
        (char *)(uintptr_t)json_string_value(json_object_get(o, "bundleEndpointUrl"));
    web = json_object_get(o, "httpsWeb");
    spiffe = json_object_get(o, "httpsSpiffe");
    if (m->trust_domain == NULL || m->bundle_endpoint_url == NULL) {
        snprintf(why, wl, "trustDomain and bundleEndpointUrl are required strings");
        return -1;
    }
    if ((web != NULL) == (spiffe != NULL)) {
        snprintf(why, wl, "exactly one of httpsWeb and httpsSpiffe is required");
        return -1;
    }
    m->bundle_endpoint_profile = (char *)(uintptr_t)(web ? "https_web" : "https_spiffe");
    if (spiffe != NULL) {
        m->endpoint_spiffe_id =
            (char *)(uintptr_t)json_string_value(json_object_get(spiffe, "endpointSpiffeId"));
        if (m->endpoint_spiffe_id == NULL) {
            snprintf(why, wl, "httpsSpiffe needs endpointSpiffeId");
            return -1;
        }
    }
    return 0;
}

static int rel_write_data(fctx *c, bool update)
{
    char *text = NULL, why[256];
    size_t len = 0;
    json_error_t je;
    json_t *root, *arr;
    sg_err err;
    int rc = 0;

    sg_err_clear(&err);
    if (read_input(fval(c, FF_DATA), DATA_FILE_MAX, &text, &len, &err) < 0)
        return fail_err(&err);
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (root == NULL) {
        fprintf(stderr, "Error: -data: invalid JSON at line %d: %s\n", je.line, je.text);
        return 1;
    }
    arr = json_object_get(root, "federationRelationships");
    if (!json_is_array(arr)) {
        json_decref(root);
        return failf("%s", "-data: expected {\"federationRelationships\": [...]}");
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        Sigil__Admin__V1__FederationRelationship m =
            SIGIL__ADMIN__V1__FEDERATION_RELATIONSHIP__INIT;
        if (rel_from_json(json_array_get(arr, i), &m, why, sizeof why) < 0) {
            fprintf(stderr, "Error: -data: relationship %zu: %s\n", i, why);
            rc = 1;
            continue;
        }
        rc |= rel_write(c, update, &m);
    }
    json_decref(root);
    return rc;
}

static int rel_write_cmd(fctx *c, bool update)
{
    Sigil__Admin__V1__FederationRelationship m = SIGIL__ADMIN__V1__FEDERATION_RELATIONSHIP__INIT;
    char id[SG_TRUST_DOMAIN_MAX + 16];
    const char *profile = fval(c, FF_PROFILE);
    sg_bundle b;
    sg_admin_pb_bundle p;
    bool have_bundle = false;
    sg_err err;
    int rc;

    if (c->set[FF_DATA]) {
        for (int i = FF_TD; i <= FF_BUNDLE_FORMAT; i++)
            if (c->set[i]) {
                fprintf(stderr, "Error: cannot use other flags to fill out relationship fields "
                                "when -data is used\n");
                return 1;
            }
        return rel_write_data(c, update);
    }
    if (td_id_arg(fval(c, FF_TD), "trustDomain", id))
        return 1;
    if (fval(c, FF_URL) == NULL || fval(c, FF_URL)[0] == '\0')
        return failf("%s", "bundle endpoint URL is required (-bundleEndpointURL)");
    if (profile == NULL ||
        (strcmp(profile, "https_web") != 0 && strcmp(profile, "https_spiffe") != 0))
        return failf("unknown bundle endpoint profile type: \"%s\" (use https_web or https_spiffe)",
                     profile ? profile : "");
    if (strcmp(profile, "https_spiffe") == 0 && !c->set[FF_ENDPOINT_ID])
        return failf("%s", "endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is "
                           "set (-endpointSpiffeID)");
    if (strcmp(profile, "https_web") == 0 && c->set[FF_ENDPOINT_ID])
        return failf("%s", "-endpointSpiffeID is only used with the https_spiffe profile");
    m.trust_domain = id;
    m.bundle_endpoint_url = (char *)(uintptr_t)c->val[FF_URL];
    m.bundle_endpoint_profile = (char *)(uintptr_t)profile;
    if (c->set[FF_ENDPOINT_ID])
        m.endpoint_spiffe_id = (char *)(uintptr_t)c->val[FF_ENDPOINT_ID];
    if (c->set[FF_BUNDLE_PATH]) {
        char *text = NULL;
        size_t len = 0;
        sg_err_clear(&err);
        if (read_input(c->val[FF_BUNDLE_PATH], BUNDLE_FILE_MAX, &text, &len, &err) < 0)
            return fail_err(&err);
        rc = bundle_from_text(id + 9, text, len, fval(c, FF_BUNDLE_FORMAT), &b, &err);
        free(text);
        if (rc < 0)
            return fail_err(&err);
        b.sequence = 0;
        if (sg_admin_pb_bundle_init(&p, &b) < 0) {
            sg_bundle_cleanup(&b);
            return failf("%s", "out of memory");
        }
        m.trust_domain_bundle = &p.msg;
        have_bundle = true;
    }
    rc = rel_write(c, update, &m);
    if (have_bundle) {
        sg_admin_pb_bundle_cleanup(&p);
        sg_bundle_cleanup(&b);
    }
    return rc;
}

static int cmd_fed_create(fctx *c)
{
    return rel_write_cmd(c, false);
}

static int cmd_fed_update(fctx *c)
{
    return rel_write_cmd(c, true);
}

static int cmd_fed_list(fctx *c)
{
    Sigil__Admin__V1__ListFederationRelationshipsRequest req =
        SIGIL__ADMIN__V1__LIST_FEDERATION_RELATIONSHIPS_REQUEST__INIT;
    const Sigil__Admin__V1__ListFederationRelationshipsResponse *r;
    ProtobufCMessage *resp = NULL;
    sg_err err;
    int rc;

    sg_err_clear(&err);
    rc = call(c, "ListFederationRelationships", &req.base,
              &sigil__admin__v1__list_federation_relationships_response__descriptor, &resp, &err);
    if (rc < 0)
        return fail_err(&err);
    r = (const void *)resp;
    if (c->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < r->n_relationships; i++)
            json_array_append_new(arr, rel_json(r->relationships[i]));
        rc = print_json(json_pack("{s:o,s:I}", "federation_relationships", arr, "next_page_token",
                                  (json_int_t)0));
    } else {
        printf("Found %zu federation relationship%s\n", r->n_relationships,
               r->n_relationships == 1 ? "" : "s");
        for (size_t i = 0; i < r->n_relationships; i++) {
            printf("\n");
            print_rel(r->relationships[i]);
        }
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

/* One FederationRelationshipRequest call on the trust domain of flag f. */
static int td_call(fctx *c, fflag f, const char *method, const ProtobufCMessageDescriptor *desc,
                   char id[SG_TRUST_DOMAIN_MAX + 16], ProtobufCMessage **resp)
{
    Sigil__Admin__V1__FederationRelationshipRequest req =
        SIGIL__ADMIN__V1__FEDERATION_RELATIONSHIP_REQUEST__INIT;
    sg_err err;

    if (td_id_arg(fval(c, f), fflags[f].name, id))
        return 1;
    req.trust_domain = id;
    sg_err_clear(&err);
    if (call(c, method, &req.base, desc, resp, &err) < 0)
        return fail_err(&err);
    return 0;
}

static int cmd_fed_show(fctx *c)
{
    char id[SG_TRUST_DOMAIN_MAX + 16];
    ProtobufCMessage *resp = NULL;
    int rc = td_call(c, FF_TD, "GetFederationRelationship",
                     &sigil__admin__v1__federation_relationship__descriptor, id, &resp);

    if (rc != 0)
        return rc;
    if (c->json) {
        rc = print_json(rel_json((const void *)resp));
    } else {
        print_rel((const void *)resp);
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

static int cmd_fed_delete(fctx *c)
{
    char id[SG_TRUST_DOMAIN_MAX + 16];
    ProtobufCMessage *resp = NULL;
    int rc =
        td_call(c, FF_ID, "DeleteFederationRelationship",
                &sigil__admin__v1__delete_federation_relationship_response__descriptor, id, &resp);

    if (rc != 0)
        return rc;
    protobuf_c_message_free_unpacked(resp, NULL);
    if (c->json)
        return print_json(json_pack("{s:[{s:{s:i,s:s},s:s}]}", "results", "status", "code", 0,
                                    "message", "OK", "trust_domain", id + 9));
    printf("Federation relationship deleted.\n");
    return 0;
}

static int cmd_fed_refresh(fctx *c)
{
    char id[SG_TRUST_DOMAIN_MAX + 16];
    ProtobufCMessage *resp = NULL;
    int rc = td_call(c, FF_ID, "RefreshBundle", &sigil__admin__v1__bundle__descriptor, id, &resp);

    if (rc != 0)
        return rc;
    const Sigil__Admin__V1__Bundle *b = (const void *)resp;
    if (c->json)
        rc = print_json(
            json_pack("{s:s,s:I}", "trust_domain", id + 9, "sequence", (json_int_t)b->sequence));
    else
        printf("Bundle refreshed\n");
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

/* ------------------------------------------------------------ dispatch */

static const fcmd cmds[] = {
    {"federation", "create", cmd_fed_create, REL_WRITE,
     "Creates a dynamic federation relationship with a foreign trust domain"},
    {"federation", "update", cmd_fed_update, REL_WRITE,
     "Updates a dynamic federation relationship with a foreign trust domain"},
    {"federation", "list", cmd_fed_list, COMMON, "Lists all dynamic federation relationships"},
    {"federation", "show", cmd_fed_show, COMMON | B(FF_TD),
     "Shows a dynamic federation relationship"},
    {"federation", "delete", cmd_fed_delete, COMMON | B(FF_ID),
     "Deletes a dynamic federation relationship"},
    {"federation", "refresh", cmd_fed_refresh, COMMON | B(FF_ID),
     "Refreshes the bundle from the specified federated trust domain"},
    {"bundle", "set", cmd_bundle_set, COMMON | B(FF_ID) | B(FF_PATH) | B(FF_FORMAT),
     "Creates or updates federated bundle data"},
    {"bundle", "list", cmd_bundle_list, COMMON | B(FF_ID) | B(FF_FORMAT),
     "Lists federated bundle data"},
    {"bundle", "delete", cmd_bundle_delete, COMMON | B(FF_ID) | B(FF_MODE),
     "Deletes federated bundle data"},
};

static const fcmd *find(int argc, char **argv)
{
    if (argc < 2)
        return NULL;
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(cmds[i].group, argv[1]) == 0 && argc >= 3 && strcmp(cmds[i].sub, argv[2]) == 0)
            return &cmds[i];
    return NULL;
}

void sg_server_cli_federation_list(FILE *f, const char *group)
{
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char name[64];
        if (group != NULL && strcmp(cmds[i].group, group) != 0)
            continue;
        snprintf(name, sizeof name, "%s %s", cmds[i].group, cmds[i].sub);
        fprintf(f, "    %-28s %s\n", name, cmds[i].summary);
    }
}

bool sg_server_cli_federation_handles(int argc, char **argv)
{
    /* "federation" with no or an unknown subcommand is answered here too. */
    return find(argc, argv) != NULL || (argc >= 2 && strcmp(argv[1], "federation") == 0);
}

int sg_server_cli_federation_main(int argc, char **argv)
{
    const fcmd *cmd = find(argc, argv);
    char name[64];
    fctx c;
    int rc;

    if (cmd == NULL) {
        if (argc >= 3 && argv[2][0] != '-')
            fprintf(stderr, "unknown subcommand \"%.64s %.64s\"\n", argv[1], argv[2]);
        else
            fprintf(stderr, "%s: a subcommand is required\n", argc >= 2 ? argv[1] : "federation");
        fprintf(stderr, "Available commands for federation:\n");
        sg_server_cli_federation_list(stderr, "federation");
        return 1;
    }
    memset(&c, 0, sizeof c);
    snprintf(name, sizeof name, "%s %s", cmd->group, cmd->sub);
    c.name = name;
    rc = parse(&c, cmd, argc - 3, argv + 3);
    if (rc != 0)
        return rc == 2 ? 0 : 1;
    const char *out = fval(&c, FF_OUTPUT);
    if (strcmp(out, "json") == 0) {
        c.json = true;
    } else if (strcmp(out, "pretty") != 0) {
        fprintf(stderr, "invalid value \"%s\" for flag -output: use pretty or json\n", out);
        return 1;
    }
    grpc_init();
    rc = cmd->run(&c);
    if (c.ch != NULL)
        grpc_channel_destroy(c.ch);
    fflush(stdout);
    grpc_shutdown_blocking();
    return rc;
}
