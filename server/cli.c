/*
 * sigil-server client subcommands over the admin API.
 *
 * Subcommands come from one static const table; each names the flags it
 * accepts. Flags are parsed the way Go's flag package does (what SPIRE
 * users type): "-flag value", "-flag=value", "--flag", boolean flags
 * without a value, parsing stops at "--" or the first non-flag argument.
 * Output follows spire-server's human-readable layout, or JSON with
 * -output json.
 */
#include "server/cli.h"

#include "common/rpc.h"
#include "common/selector.h"
#include "common/spiffeid.h"
#include "common/strparse.h"
#include "sigil/admin/v1/admin.pb-c.h"

#include <errno.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define CALL_TIMEOUT_MS   30000
#define HEALTH_TIMEOUT_MS 10000
#define MAX_RECV_BYTES    (64 * 1024 * 1024)

/* ------------------------------------------------------------ flags */

typedef enum flag_id {
    FL_SOCKET,
    FL_OUTPUT,
    FL_SPIFFE,
    FL_PARENT,
    FL_SELECTOR,
    FL_X509TTL,
    FL_JWTTTL,
    FL_DNS,
    FL_ENTRYID,
    FL_NODE,
    FL_HINT,
    FL_DOWNSTREAM,
    FL_ADMIN,
    FL_TTL,
    FL_FORMAT,
    FL_SHALLOW,
    FL_VERBOSE,
    FL_AUTHORITYID,
    FL__COUNT
} flag_id;

typedef enum flag_kind { K_STRING, K_LIST, K_BOOL } flag_kind;

static const struct flag_def {
    const char *name;
    flag_kind kind;
    const char *defval; /* shown in usage; NULL for none */
    const char *usage;
} flag_defs[FL__COUNT] = {
    [FL_SOCKET] = {"socketPath", K_STRING, SG_SERVER_CLI_DEFAULT_SOCKET,
                   "Path to the sigil-server admin API socket"},
    [FL_OUTPUT] = {"output", K_STRING, "pretty", "Desired output format (pretty, json)"},
    [FL_SPIFFE] = {"spiffeID", K_STRING, NULL, "The SPIFFE ID"},
    [FL_PARENT] = {"parentID", K_STRING, NULL, "The SPIFFE ID of this record's parent"},
    [FL_SELECTOR] = {"selector", K_LIST, NULL,
                     "A colon-delimited type:value selector. Can be used more than once"},
    [FL_X509TTL] = {"x509SVIDTTL", K_STRING, NULL,
                    "The lifetime of the X509-SVIDs issued for this entry (seconds or duration)"},
    [FL_JWTTTL] = {"jwtSVIDTTL", K_STRING, NULL,
                   "The lifetime of the JWT-SVIDs issued for this entry (seconds or duration)"},
    [FL_DNS] = {"dns", K_LIST, NULL,
                "A DNS name that will be included in SVIDs issued based on this entry. Can be "
                "used more than once"},
    [FL_ENTRYID] = {"entryID", K_STRING, NULL, "The registration entry ID"},
    [FL_NODE] = {"node", K_BOOL, NULL,
                 "If set, this entry will be applied to matching nodes rather than workloads"},
    [FL_HINT] = {"hint", K_STRING, NULL, "The entry hint, used to disambiguate entries"},
    [FL_DOWNSTREAM] = {"downstream", K_BOOL, NULL,
                       "A boolean value that, when set, indicates that the entry describes a "
                       "downstream SPIFFE server"},
    [FL_ADMIN] = {"admin", K_BOOL, NULL,
                  "If set, the SPIFFE ID in this entry will be granted access to the admin API"},
    [FL_TTL] = {"ttl", K_STRING, "600", "Token TTL in seconds (or a duration)"},
    [FL_FORMAT] = {"format", K_STRING, "pem", "The format to show the bundle (pem or spiffe)"},
    [FL_SHALLOW] = {"shallow", K_BOOL, NULL, "Perform a less stringent health check"},
    [FL_VERBOSE] = {"verbose", K_BOOL, NULL, "Print verbose information"},
    [FL_AUTHORITYID] = {"authorityID", K_STRING, NULL,
                        "The authority ID of the X.509 authority (hex Subject Key ID)"},
};

#define F(x)         (1u << (x))
#define COMMON_FLAGS (F(FL_SOCKET) | F(FL_OUTPUT))
#define ENTRY_WRITE_FLAGS                                                                          \
    (COMMON_FLAGS | F(FL_SPIFFE) | F(FL_PARENT) | F(FL_SELECTOR) | F(FL_X509TTL) | F(FL_JWTTTL) |  \
     F(FL_DNS) | F(FL_ENTRYID) | F(FL_NODE) | F(FL_HINT) | F(FL_DOWNSTREAM) | F(FL_ADMIN))

typedef struct cli_ctx {
    const char *cmdname; /* "entry create" */
    const char *val[FL__COUNT];
    bool set[FL__COUNT];
    bool bval[FL__COUNT];
    const char **list[FL__COUNT]; /* K_LIST values, borrowed from argv */
    size_t nlist[FL__COUNT];
    bool json;
    grpc_channel *ch;
} cli_ctx;

typedef struct cmd_def {
    const char *group;
    const char *name; /* NULL for a command without subcommands */
    int (*run)(cli_ctx *c);
    uint32_t flags;
    const char *summary;
} cmd_def;

static void print_usage(const cmd_def *cmd, const char *cmdname)
{
    fprintf(stderr, "Usage of %s:\n", cmdname);
    for (int i = 0; i < FL__COUNT; i++) {
        const struct flag_def *d = &flag_defs[i];
        if (!(cmd->flags & F(i)))
            continue;
        fprintf(stderr, "  -%s%s\n    \t%s", d->name,
                d->kind == K_STRING ? " string"
                : d->kind == K_LIST ? " value"
                                    : "",
                d->usage);
        if (d->defval != NULL)
            fprintf(stderr, " (default \"%s\")", d->defval);
        fputc('\n', stderr);
    }
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const t[] = {"1", "t", "T", "true", "TRUE", "True"};
    static const char *const f[] = {"0", "f", "F", "false", "FALSE", "False"};

    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (strcmp(s, t[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, f[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/*
 * Parses argv[0..argc) against cmd's flags. Returns 0, 1 after printing an
 * error and the usage, or 2 when help was asked for (usage printed).
 */
static int parse_flags(cli_ctx *c, const cmd_def *cmd, int argc, char **argv)
{
    int i = 0;

    while (i < argc) {
        const char *a = argv[i], *name, *eq, *value = NULL;
        char namebuf[64];
        size_t nlen;
        int id = -1;

        if (a[0] != '-' || a[1] == '\0')
            break;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        name = a + 1;
        if (name[0] == '-')
            name++;
        if (name[0] == '\0' || name[0] == '-' || name[0] == '=') {
            fprintf(stderr, "bad flag syntax: %s\n", a);
            print_usage(cmd, c->cmdname);
            return 1;
        }
        eq = strchr(name, '=');
        nlen = eq ? (size_t)(eq - name) : strlen(name);
        if (nlen >= sizeof namebuf) {
            fprintf(stderr, "flag provided but not defined: -%.*s\n", 64, name);
            print_usage(cmd, c->cmdname);
            return 1;
        }
        memcpy(namebuf, name, nlen);
        namebuf[nlen] = '\0';
        if (eq)
            value = eq + 1;
        i++;
        if (strcmp(namebuf, "h") == 0 || strcmp(namebuf, "help") == 0) {
            print_usage(cmd, c->cmdname);
            return 2;
        }
        for (int k = 0; k < FL__COUNT; k++)
            if ((cmd->flags & F(k)) && strcmp(flag_defs[k].name, namebuf) == 0)
                id = k;
        if (id < 0) {
            fprintf(stderr, "flag provided but not defined: -%s\n", namebuf);
            print_usage(cmd, c->cmdname);
            return 1;
        }
        if (flag_defs[id].kind == K_BOOL) {
            bool b = true;
            if (value != NULL && parse_bool(value, &b) < 0) {
                fprintf(stderr, "invalid boolean value \"%s\" for -%s: parse error\n", value,
                        namebuf);
                print_usage(cmd, c->cmdname);
                return 1;
            }
            c->bval[id] = b;
            c->set[id] = true;
            continue;
        }
        if (value == NULL) {
            if (i >= argc) {
                fprintf(stderr, "flag needs an argument: -%s\n", namebuf);
                print_usage(cmd, c->cmdname);
                return 1;
            }
            value = argv[i++];
        }
        c->set[id] = true;
        if (flag_defs[id].kind == K_LIST)
            c->list[id][c->nlist[id]++] = value;
        else
            c->val[id] = value;
    }
    if (i < argc) {
        fprintf(stderr, "unexpected argument \"%s\" for %s\n", argv[i], c->cmdname);
        print_usage(cmd, c->cmdname);
        return 1;
    }
    return 0;
}

static const char *flag_str(const cli_ctx *c, flag_id id)
{
    return c->val[id] != NULL ? c->val[id] : flag_defs[id].defval;
}

/* ------------------------------------------------------------ output helpers */

static int fail_msg(const char *msg)
{
    fprintf(stderr, "Error: %s\n", msg);
    return 1;
}

static int fail_err(const sg_err *err)
{
    return fail_msg(err->msg[0] ? err->msg : sg_strerror(err->code));
}

/* Prints root as JSON on stdout and takes its reference. */
static int print_json(json_t *root)
{
    char *s;

    if (root == NULL)
        return fail_msg("out of memory building JSON output");
    s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (s == NULL)
        return fail_msg("out of memory building JSON output");
    printf("%s\n", s);
    free(s);
    return 0;
}

/* {"trust_domain": td, "path": path} as SPIRE prints IDs, or the raw string. */
static json_t *id_json(const char *id)
{
    sg_spiffeid sid;

    if (id == NULL || id[0] == '\0')
        return json_null();
    if (sg_spiffeid_parse(id, &sid, NULL) < 0)
        return json_string(id);
    return json_pack("{s:s,s:s}", "trust_domain", sid.td, "path", sid.path);
}

static json_t *selectors_json(Sigil__Admin__V1__Selector **sel, size_t n)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr != NULL && i < n; i++)
        json_array_append_new(arr,
                              json_pack("{s:s,s:s}", "type", sel[i]->type, "value", sel[i]->value));
    return arr;
}

static json_t *strings_json(char **v, size_t n)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr != NULL && i < n; i++)
        json_array_append_new(arr, json_string(v[i]));
    return arr;
}

static json_t *i64_str(int64_t v)
{
    char buf[32];

    snprintf(buf, sizeof buf, "%lld", (long long)v);
    return json_string(buf);
}

static json_t *entry_json(const Sigil__Admin__V1__Entry *e)
{
    json_t *o = json_object();

    if (o == NULL)
        return NULL;
    json_object_set_new(o, "id", json_string(e->id));
    json_object_set_new(o, "spiffe_id", id_json(e->spiffe_id));
    json_object_set_new(o, "parent_id", id_json(e->parent_id));
    json_object_set_new(o, "selectors", selectors_json(e->selectors, e->n_selectors));
    json_object_set_new(o, "x509_svid_ttl", json_integer(e->x509_svid_ttl));
    json_object_set_new(o, "federates_with", strings_json(e->federates_with, e->n_federates_with));
    json_object_set_new(o, "hint", json_string(e->hint ? e->hint : ""));
    json_object_set_new(o, "admin", json_boolean(e->admin));
    json_object_set_new(o, "created_at", i64_str(e->created_at));
    json_object_set_new(o, "downstream", json_boolean(e->downstream));
    json_object_set_new(o, "expires_at", i64_str(0));
    json_object_set_new(o, "dns_names", strings_json(e->dns_names, e->n_dns_names));
    json_object_set_new(o, "revision_number", i64_str(e->revision));
    json_object_set_new(o, "store_svid", json_false());
    json_object_set_new(o, "jwt_svid_ttl", json_integer(e->jwt_svid_ttl));
    return o;
}

static void print_entry(const Sigil__Admin__V1__Entry *e)
{
    printf("Entry ID         : %s\n", e->id);
    printf("SPIFFE ID        : %s\n", e->spiffe_id);
    printf("Parent ID        : %s\n", e->parent_id);
    printf("Revision         : %lld\n", (long long)e->revision);
    if (e->downstream)
        printf("Downstream       : true\n");
    if (e->x509_svid_ttl == 0)
        printf("X509-SVID TTL    : default\n");
    else
        printf("X509-SVID TTL    : %d\n", (int)e->x509_svid_ttl);
    if (e->jwt_svid_ttl == 0)
        printf("JWT-SVID TTL     : default\n");
    else
        printf("JWT-SVID TTL     : %d\n", (int)e->jwt_svid_ttl);
    for (size_t i = 0; i < e->n_selectors; i++)
        printf("Selector         : %s:%s\n", e->selectors[i]->type, e->selectors[i]->value);
    for (size_t i = 0; i < e->n_dns_names; i++)
        printf("DNS name         : %s\n", e->dns_names[i]);
    if (e->admin)
        printf("Admin            : true\n");
    if (e->hint != NULL && e->hint[0] != '\0')
        printf("Hint             : %s\n", e->hint);
    printf("\n");
}

/* Formats t like Go's time.Time.String() in UTC. */
static void fmt_time(int64_t t, char *out, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL || strftime(out, len, "%Y-%m-%d %H:%M:%S +0000 UTC", &tm) == 0)
        snprintf(out, len, "%lld", (long long)t);
}

/* The hex serial in decimal, as SPIRE prints serial numbers; malloc'd. */
static char *serial_dec(const char *hex)
{
    BIGNUM *bn = NULL;
    char *dec, *out;

    if (hex == NULL || hex[0] == '\0' || BN_hex2bn(&bn, hex) == 0)
        return strdup(hex ? hex : "");
    dec = BN_bn2dec(bn);
    BN_free(bn);
    out = strdup(dec ? dec : hex);
    OPENSSL_free(dec);
    return out;
}

static json_t *agent_json(const Sigil__Admin__V1__Agent *a)
{
    char *serial = serial_dec(a->serial);
    json_t *o = json_object();

    if (o != NULL) {
        json_object_set_new(o, "id", id_json(a->spiffe_id));
        json_object_set_new(o, "attestation_type", json_string(a->attestation_type));
        json_object_set_new(o, "x509svid_serial_number", json_string(serial ? serial : ""));
        json_object_set_new(o, "x509svid_expires_at", i64_str(a->expires_at));
        json_object_set_new(o, "selectors", selectors_json(a->selectors, a->n_selectors));
        json_object_set_new(o, "banned", json_boolean(a->banned));
        json_object_set_new(o, "can_reattest", json_false());
    }
    free(serial);
    return o;
}

static void print_agent(const Sigil__Admin__V1__Agent *a)
{
    char when[64];
    char *serial = serial_dec(a->serial);

    fmt_time(a->expires_at, when, sizeof when);
    printf("SPIFFE ID         : %s\n", a->spiffe_id);
    printf("Attestation type  : %s\n", a->attestation_type);
    printf("Expiration time   : %s\n", when);
    printf("Serial number     : %s\n", serial ? serial : a->serial);
    printf("Can re-attest     : false\n");
    printf("Banned            : %s\n", a->banned ? "true" : "false");
    for (size_t i = 0; i < a->n_selectors; i++)
        printf("Selector          : %s:%s\n", a->selectors[i]->type, a->selectors[i]->value);
    printf("\n");
    free(serial);
}

/* ------------------------------------------------------------ transport */

static int cli_connect(cli_ctx *c, sg_err *err)
{
    const char *path = flag_str(c, FL_SOCKET);
    struct stat sb;
    grpc_channel_credentials *creds;
    grpc_arg arg;
    grpc_channel_args args;
    char target[4200];

    if (path == NULL || path[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "-socketPath is empty");
    if (strlen(path) > 4096)
        return sg_err_set(err, SG_EINVAL, "-socketPath is too long");
    if (stat(path, &sb) != 0)
        return sg_err_sys(err, "connection error: cannot reach the server at \"%s\"", path);
    if (!S_ISSOCK(sb.st_mode))
        return sg_err_set(err, SG_EINVAL, "connection error: \"%s\" is not a socket", path);
    snprintf(target, sizeof target, "unix:%s", path);
    arg.type = GRPC_ARG_INTEGER;
    arg.key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    arg.value.integer = MAX_RECV_BYTES;
    args.num_args = 1;
    args.args = &arg;
    creds = grpc_insecure_credentials_create();
    c->ch = grpc_channel_create(target, creds, &args);
    grpc_channel_credentials_release(creds);
    if (c->ch == NULL)
        return sg_err_set(err, SG_EUNAVAIL, "connection error: cannot create a channel to \"%s\"",
                          path);
    return 0;
}

/* One unary admin call; *resp freed by the caller with protobuf_c_message_free_unpacked. */
static int admin_call(cli_ctx *c, const char *method, const ProtobufCMessage *req,
                      const ProtobufCMessageDescriptor *desc, int64_t timeout_ms,
                      ProtobufCMessage **resp, sg_err *err)
{
    char path[128];
    int rc;

    if (c->ch == NULL) {
        rc = cli_connect(c, err);
        if (rc < 0)
            return rc;
    }
    snprintf(path, sizeof path, "/%s/%s", sigil__admin__v1__admin__descriptor.name, method);
    rc = sg_rpc_unary(c->ch, path, req, desc, NULL, 0, timeout_ms, resp, NULL, err);
    if (rc < 0 && err != NULL && err->msg[0] == '\0')
        sg_err_set(err, rc, "%s failed: %s", method, sg_strerror(rc));
    return rc;
}

/* ------------------------------------------------------------ entry */

/* Parses a TTL flag (seconds or Go duration) into seconds. */
static int parse_ttl(const char *flag, const char *s, int32_t *out)
{
    int64_t ms;
    sg_err err;

    if (sg_parse_duration_ms(s, &ms, &err) < 0) {
        fprintf(stderr, "Error: invalid value \"%s\" for -%s: %s\n", s, flag, err.msg);
        return 1;
    }
    if (ms / 1000 > INT32_MAX) {
        fprintf(stderr, "Error: invalid value \"%s\" for -%s: too long\n", s, flag);
        return 1;
    }
    *out = (int32_t)(ms / 1000);
    return 0;
}

/* Splits -selector values into protobuf selectors (pointing into argv). */
static int selectors_from_flags(cli_ctx *c, Sigil__Admin__V1__Selector **store,
                                Sigil__Admin__V1__Selector ***ptrs, size_t *n)
{
    static const Sigil__Admin__V1__Selector init = SIGIL__ADMIN__V1__SELECTOR__INIT;
    size_t cnt = c->nlist[FL_SELECTOR];
    Sigil__Admin__V1__Selector *s = calloc(cnt ? cnt : 1, sizeof *s);
    Sigil__Admin__V1__Selector **p = calloc(cnt ? cnt : 1, sizeof *p);

    if (s == NULL || p == NULL) {
        free(s);
        free(p);
        return fail_msg("out of memory");
    }
    for (size_t i = 0; i < cnt; i++) {
        const char *v = c->list[FL_SELECTOR][i];
        const char *colon = strchr(v, ':');
        sg_selector tmp;
        sg_err err;

        if (colon == NULL || colon == v || colon[1] == '\0') {
            fprintf(stderr, "Error: selector \"%s\" must be formatted as type:value\n", v);
            free(s);
            free(p);
            return 1;
        }
        if (sg_selector_parse(v, &tmp, &err) < 0) {
            fprintf(stderr, "Error: invalid selector \"%s\": %s\n", v, err.msg);
            free(s);
            free(p);
            return 1;
        }
        sg_selector_cleanup(&tmp);
        s[i] = init;
        /* type is a copy of the text before the colon; value points into argv. */
        s[i].type = strndup(v, (size_t)(colon - v));
        s[i].value = (char *)(uintptr_t)(colon + 1);
        if (s[i].type == NULL) {
            for (size_t j = 0; j < i; j++)
                free(s[j].type);
            free(s);
            free(p);
            return fail_msg("out of memory");
        }
        p[i] = &s[i];
    }
    *store = s;
    *ptrs = p;
    *n = cnt;
    return 0;
}

static void selectors_release(Sigil__Admin__V1__Selector *s, Sigil__Admin__V1__Selector **p,
                              size_t n)
{
    if (s != NULL)
        for (size_t i = 0; i < n; i++)
            free(s[i].type);
    free(s);
    free(p);
}

/* Shared by entry create and entry update. */
static int entry_write(cli_ctx *c, bool update)
{
    Sigil__Admin__V1__Entry e = SIGIL__ADMIN__V1__ENTRY__INIT;
    Sigil__Admin__V1__CreateEntryRequest creq = SIGIL__ADMIN__V1__CREATE_ENTRY_REQUEST__INIT;
    Sigil__Admin__V1__UpdateEntryRequest ureq = SIGIL__ADMIN__V1__UPDATE_ENTRY_REQUEST__INIT;
    Sigil__Admin__V1__Selector *sels = NULL, **selp = NULL;
    ProtobufCMessage *resp = NULL;
    char node_parent[SG_SPIFFEID_MAX + 64];
    size_t nsel = 0;
    sg_err err;
    int rc;

    if (update && !c->set[FL_ENTRYID])
        return fail_msg("an entry ID is required (-entryID)");
    if (!c->set[FL_SPIFFE] || c->val[FL_SPIFFE][0] == '\0')
        return fail_msg("a SPIFFE ID is required (-spiffeID)");
    if (c->bval[FL_NODE] && c->set[FL_PARENT])
        return fail_msg("-parentID cannot be used together with -node");
    if (!c->bval[FL_NODE] && (!c->set[FL_PARENT] || c->val[FL_PARENT][0] == '\0'))
        return fail_msg("a parent ID is required if the -node flag is not set (-parentID)");
    if (c->nlist[FL_SELECTOR] == 0)
        return fail_msg("at least one selector is required (-selector type:value)");
    if (c->set[FL_X509TTL] && parse_ttl("x509SVIDTTL", c->val[FL_X509TTL], &e.x509_svid_ttl))
        return 1;
    if (c->set[FL_JWTTTL] && parse_ttl("jwtSVIDTTL", c->val[FL_JWTTTL], &e.jwt_svid_ttl))
        return 1;
    if (c->bval[FL_NODE]) {
        sg_spiffeid sid;
        if (sg_spiffeid_parse(c->val[FL_SPIFFE], &sid, &err) < 0)
            return fail_msg(err.msg);
        snprintf(node_parent, sizeof node_parent, "spiffe://%s/spire/server", sid.td);
        e.parent_id = node_parent;
    } else {
        e.parent_id = (char *)(uintptr_t)c->val[FL_PARENT];
    }
    rc = selectors_from_flags(c, &sels, &selp, &nsel);
    if (rc != 0)
        return rc;
    e.spiffe_id = (char *)(uintptr_t)c->val[FL_SPIFFE];
    e.id = (char *)(uintptr_t)(c->set[FL_ENTRYID] ? c->val[FL_ENTRYID] : "");
    e.n_selectors = nsel;
    e.selectors = selp;
    e.n_dns_names = c->nlist[FL_DNS];
    e.dns_names = (char **)(uintptr_t)c->list[FL_DNS];
    e.hint = (char *)(uintptr_t)(c->set[FL_HINT] ? c->val[FL_HINT] : "");
    e.downstream = c->bval[FL_DOWNSTREAM];
    e.admin = c->bval[FL_ADMIN];
    sg_err_clear(&err);
    if (update) {
        ureq.entry = &e;
        rc = admin_call(c, "UpdateEntry", &ureq.base, &sigil__admin__v1__entry__descriptor,
                        CALL_TIMEOUT_MS, &resp, &err);
    } else {
        creq.entry = &e;
        rc = admin_call(c, "CreateEntry", &creq.base, &sigil__admin__v1__entry__descriptor,
                        CALL_TIMEOUT_MS, &resp, &err);
    }
    selectors_release(sels, selp, nsel);
    if (rc < 0)
        return fail_err(&err);
    const Sigil__Admin__V1__Entry *got = (const void *)resp;
    if (c->json) {
        rc = print_json(json_pack("{s:[{s:{s:i,s:s},s:o}]}", "results", "status", "code", 0,
                                  "message", "OK", "entry", entry_json(got)));
    } else {
        if (update)
            printf("Entry updated successfully.\n\n");
        print_entry(got);
        rc = 0;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

static int cmd_entry_create(cli_ctx *c)
{
    return entry_write(c, false);
}

static int cmd_entry_update(cli_ctx *c)
{
    return entry_write(c, true);
}

/* Lists entries matching the show filters; *resp freed by the caller. */
static int list_entries(cli_ctx *c, Sigil__Admin__V1__ListEntriesResponse **out)
{
    Sigil__Admin__V1__ListEntriesRequest req = SIGIL__ADMIN__V1__LIST_ENTRIES_REQUEST__INIT;
    Sigil__Admin__V1__Selector *sels = NULL, **selp = NULL;
    ProtobufCMessage *resp = NULL;
    size_t nsel = 0;
    sg_err err;
    int rc;

    rc = selectors_from_flags(c, &sels, &selp, &nsel);
    if (rc != 0)
        return rc;
    if (c->set[FL_ENTRYID])
        req.id = (char *)(uintptr_t)c->val[FL_ENTRYID];
    if (c->set[FL_SPIFFE])
        req.spiffe_id = (char *)(uintptr_t)c->val[FL_SPIFFE];
    if (c->set[FL_PARENT])
        req.parent_id = (char *)(uintptr_t)c->val[FL_PARENT];
    req.n_selectors = nsel;
    req.selectors = selp;
    sg_err_clear(&err);
    rc = admin_call(c, "ListEntries", &req.base,
                    &sigil__admin__v1__list_entries_response__descriptor, CALL_TIMEOUT_MS, &resp,
                    &err);
    selectors_release(sels, selp, nsel);
    if (rc < 0)
        return fail_err(&err);
    *out = (Sigil__Admin__V1__ListEntriesResponse *)resp;
    return 0;
}

static int cmd_entry_show(cli_ctx *c)
{
    Sigil__Admin__V1__ListEntriesResponse *r = NULL;
    int rc = list_entries(c, &r);

    if (rc != 0)
        return rc;
    if (c->json) {
        json_t *arr = json_array();
        for (size_t i = 0; arr != NULL && i < r->n_entries; i++)
            json_array_append_new(arr, entry_json(r->entries[i]));
        rc = print_json(json_pack("{s:o,s:s}", "entries", arr, "next_page_token", ""));
    } else {
        printf("Found %zu %s\n\n", r->n_entries, r->n_entries == 1 ? "entry" : "entries");
        for (size_t i = 0; i < r->n_entries; i++)
            print_entry(r->entries[i]);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return rc;
}

static int cmd_entry_count(cli_ctx *c)
{
    Sigil__Admin__V1__ListEntriesResponse *r = NULL;
    int rc = list_entries(c, &r);

    if (rc != 0)
        return rc;
    if (c->json)
        rc = print_json(json_pack("{s:I}", "count", (json_int_t)r->n_entries));
    else
        printf("%zu registration %s\n", r->n_entries, r->n_entries == 1 ? "entry" : "entries");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return rc;
}

static int cmd_entry_delete(cli_ctx *c)
{
    Sigil__Admin__V1__DeleteEntryRequest req = SIGIL__ADMIN__V1__DELETE_ENTRY_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    sg_err err;

    if (!c->set[FL_ENTRYID] || c->val[FL_ENTRYID][0] == '\0')
        return fail_msg("an entry ID is required (-entryID)");
    req.id = (char *)(uintptr_t)c->val[FL_ENTRYID];
    sg_err_clear(&err);
    if (admin_call(c, "DeleteEntry", &req.base,
                   &sigil__admin__v1__delete_entry_response__descriptor, CALL_TIMEOUT_MS, &resp,
                   &err) < 0)
        return fail_err(&err);
    protobuf_c_message_free_unpacked(resp, NULL);
    if (c->json)
        return print_json(json_pack("{s:[{s:{s:i,s:s},s:s}]}", "results", "status", "code", 0,
                                    "message", "OK", "id", req.id));
    printf("Deleted entry with ID: %s\n", req.id);
    return 0;
}

/* ------------------------------------------------------------ token */

static int cmd_token_generate(cli_ctx *c)
{
    Sigil__Admin__V1__GenerateTokenRequest req = SIGIL__ADMIN__V1__GENERATE_TOKEN_REQUEST__INIT;
    Sigil__Admin__V1__GenerateTokenResponse *r;
    ProtobufCMessage *resp = NULL;
    int32_t ttl = 0;
    sg_err err;
    int rc;

    if (c->set[FL_TTL]) {
        if (parse_ttl("ttl", c->val[FL_TTL], &ttl))
            return 1;
        if (ttl <= 0)
            return fail_msg("-ttl must be at least one second");
    }
    req.ttl = ttl;
    if (c->set[FL_SPIFFE])
        req.spiffe_id = (char *)(uintptr_t)c->val[FL_SPIFFE];
    sg_err_clear(&err);
    if (admin_call(c, "GenerateToken", &req.base,
                   &sigil__admin__v1__generate_token_response__descriptor, CALL_TIMEOUT_MS, &resp,
                   &err) < 0)
        return fail_err(&err);
    r = (Sigil__Admin__V1__GenerateTokenResponse *)resp;
    if (c->json) {
        rc = print_json(
            json_pack("{s:s,s:I}", "value", r->value, "expires_at", (json_int_t)r->expires_at));
    } else {
        printf("Token: %s\n", r->value);
        rc = 0;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

/* ------------------------------------------------------------ agent */

static int list_agents(cli_ctx *c, Sigil__Admin__V1__ListAgentsResponse **out)
{
    Sigil__Admin__V1__ListAgentsRequest req = SIGIL__ADMIN__V1__LIST_AGENTS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    sg_err err;

    sg_err_clear(&err);
    if (admin_call(c, "ListAgents", &req.base, &sigil__admin__v1__list_agents_response__descriptor,
                   CALL_TIMEOUT_MS, &resp, &err) < 0)
        return fail_err(&err);
    *out = (Sigil__Admin__V1__ListAgentsResponse *)resp;
    return 0;
}

static int cmd_agent_list(cli_ctx *c)
{
    Sigil__Admin__V1__ListAgentsResponse *r = NULL;
    int rc = list_agents(c, &r);

    if (rc != 0)
        return rc;
    if (c->json) {
        json_t *arr = json_array();
        for (size_t i = 0; arr != NULL && i < r->n_agents; i++)
            json_array_append_new(arr, agent_json(r->agents[i]));
        rc = print_json(json_pack("{s:o,s:s}", "agents", arr, "next_page_token", ""));
    } else if (r->n_agents == 0) {
        printf("No attested agents found\n");
    } else {
        printf("Found %zu attested %s:\n\n", r->n_agents, r->n_agents == 1 ? "agent" : "agents");
        for (size_t i = 0; i < r->n_agents; i++)
            print_agent(r->agents[i]);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return rc;
}

static int cmd_agent_count(cli_ctx *c)
{
    Sigil__Admin__V1__ListAgentsResponse *r = NULL;
    int rc = list_agents(c, &r);

    if (rc != 0)
        return rc;
    if (c->json)
        rc = print_json(json_pack("{s:I}", "count", (json_int_t)r->n_agents));
    else
        printf("%zu attested %s\n", r->n_agents, r->n_agents == 1 ? "agent" : "agents");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return rc;
}

static int need_agent_id(cli_ctx *c)
{
    sg_err err;
    sg_spiffeid sid;

    if (!c->set[FL_SPIFFE] || c->val[FL_SPIFFE][0] == '\0')
        return fail_msg("a SPIFFE ID is required (-spiffeID)");
    if (sg_spiffeid_parse(c->val[FL_SPIFFE], &sid, &err) < 0)
        return fail_msg(err.msg);
    return 0;
}

static int cmd_agent_show(cli_ctx *c)
{
    Sigil__Admin__V1__ListAgentsResponse *r = NULL;
    const Sigil__Admin__V1__Agent *found = NULL;
    int rc = need_agent_id(c);

    if (rc != 0)
        return rc;
    rc = list_agents(c, &r);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < r->n_agents; i++)
        if (strcmp(r->agents[i]->spiffe_id, c->val[FL_SPIFFE]) == 0)
            found = r->agents[i];
    if (found == NULL) {
        fprintf(stderr, "Error: NOT_FOUND: agent \"%s\" not found\n", c->val[FL_SPIFFE]);
        rc = 1;
    } else if (c->json) {
        rc = print_json(agent_json(found));
    } else {
        printf("Found an attested agent given its SPIFFE ID\n\n");
        print_agent(found);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return rc;
}

static int agent_action(cli_ctx *c, const char *method, const char *done)
{
    Sigil__Admin__V1__AgentRequest req = SIGIL__ADMIN__V1__AGENT_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    sg_err err;
    int rc = need_agent_id(c);

    if (rc != 0)
        return rc;
    req.spiffe_id = (char *)(uintptr_t)c->val[FL_SPIFFE];
    sg_err_clear(&err);
    if (admin_call(c, method, &req.base, &sigil__admin__v1__agent_action_response__descriptor,
                   CALL_TIMEOUT_MS, &resp, &err) < 0)
        return fail_err(&err);
    protobuf_c_message_free_unpacked(resp, NULL);
    if (c->json)
        return print_json(json_object());
    printf("%s\n", done);
    return 0;
}

static int cmd_agent_evict(cli_ctx *c)
{
    return agent_action(c, "EvictAgent", "Agent evicted successfully");
}

static int cmd_agent_ban(cli_ctx *c)
{
    return agent_action(c, "BanAgent", "Agent banned successfully");
}

/* ------------------------------------------------------------ bundle */

static char *b64(const uint8_t *data, size_t len, bool url)
{
    size_t cap = 4 * ((len + 2) / 3) + 1;
    char *out = malloc(cap);
    int n;

    if (out == NULL)
        return NULL;
    n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    if (n < 0) {
        free(out);
        return NULL;
    }
    out[n] = '\0';
    if (url) {
        for (int i = 0; i < n; i++) {
            if (out[i] == '+')
                out[i] = '-';
            else if (out[i] == '/')
                out[i] = '_';
        }
        while (n > 0 && out[n - 1] == '=')
            out[--n] = '\0';
    }
    return out;
}

static int set_b64url(json_t *o, const char *key, const uint8_t *d, size_t len)
{
    char *s = b64(d, len, true);

    if (s == NULL)
        return -1;
    json_object_set_new(o, key, json_string(s));
    free(s);
    return 0;
}

static int set_bn(json_t *o, const char *key, EVP_PKEY *pk, const char *param)
{
    BIGNUM *bn = NULL;
    uint8_t *buf;
    int len, rc = -1;

    if (EVP_PKEY_get_bn_param(pk, param, &bn) != 1)
        return -1;
    len = BN_num_bytes(bn);
    buf = malloc(len > 0 ? (size_t)len : 1);
    if (buf != NULL) {
        BN_bn2bin(bn, buf);
        rc = set_b64url(o, key, buf, (size_t)len);
        free(buf);
    }
    BN_free(bn);
    return rc;
}

/* One JWK (use "x509-svid") for a DER CA certificate, per the SPIFFE bundle format. */
static json_t *jwk_for_cert(const uint8_t *der, size_t len, char *why, size_t whylen)
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    EVP_PKEY *pk;
    json_t *o = NULL;
    char *x5c = NULL;

    if (x == NULL) {
        snprintf(why, whylen, "bundle holds a certificate that does not parse");
        return NULL;
    }
    pk = X509_get0_pubkey(x);
    o = json_object();
    x5c = b64(der, len, false);
    if (pk == NULL || o == NULL || x5c == NULL) {
        snprintf(why, whylen, "cannot read a bundle certificate's public key");
        goto fail;
    }
    json_object_set_new(o, "use", json_string("x509-svid"));
    if (EVP_PKEY_is_a(pk, "EC")) {
        char group[64];
        uint8_t pt[256];
        size_t ptlen = 0, clen;
        const char *crv = NULL;
        if (EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                           NULL) != 1 ||
            EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pt, sizeof pt,
                                            &ptlen) != 1 ||
            ptlen < 3 || pt[0] != 0x04) {
            snprintf(why, whylen, "cannot encode an EC bundle key");
            goto fail;
        }
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
            crv = "P-256";
        else if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
            crv = "P-384";
        else if (strcmp(group, "secp521r1") == 0 || strcmp(group, "P-521") == 0)
            crv = "P-521";
        else {
            snprintf(why, whylen, "unsupported curve \"%s\" in the bundle", group);
            goto fail;
        }
        clen = (ptlen - 1) / 2;
        json_object_set_new(o, "kty", json_string("EC"));
        json_object_set_new(o, "crv", json_string(crv));
        if (set_b64url(o, "x", pt + 1, clen) < 0 || set_b64url(o, "y", pt + 1 + clen, clen) < 0) {
            snprintf(why, whylen, "out of memory");
            goto fail;
        }
    } else if (EVP_PKEY_is_a(pk, "RSA")) {
        json_object_set_new(o, "kty", json_string("RSA"));
        if (set_bn(o, "n", pk, OSSL_PKEY_PARAM_RSA_N) < 0 ||
            set_bn(o, "e", pk, OSSL_PKEY_PARAM_RSA_E) < 0) {
            snprintf(why, whylen, "cannot encode an RSA bundle key");
            goto fail;
        }
    } else {
        snprintf(why, whylen, "unsupported key type in the bundle");
        goto fail;
    }
    json_object_set_new(o, "x5c", json_pack("[s]", x5c));
    free(x5c);
    X509_free(x);
    return o;
fail:
    free(x5c);
    json_decref(o);
    X509_free(x);
    return NULL;
}

static int cmd_bundle_show(cli_ctx *c)
{
    Sigil__Admin__V1__GetBundleRequest req = SIGIL__ADMIN__V1__GET_BUNDLE_REQUEST__INIT;
    Sigil__Admin__V1__Bundle *b;
    ProtobufCMessage *resp = NULL;
    const char *format = flag_str(c, FL_FORMAT);
    sg_err err;
    int rc = 0;

    if (strcmp(format, "pem") != 0 && strcmp(format, "spiffe") != 0) {
        fprintf(stderr, "Error: invalid value \"%s\" for -format: use pem or spiffe\n", format);
        return 1;
    }
    sg_err_clear(&err);
    if (admin_call(c, "GetBundle", &req.base, &sigil__admin__v1__bundle__descriptor,
                   CALL_TIMEOUT_MS, &resp, &err) < 0)
        return fail_err(&err);
    b = (Sigil__Admin__V1__Bundle *)resp;
    if (strcmp(format, "spiffe") == 0 || c->json) {
        json_t *keys = json_array();
        char why[160] = "";
        for (size_t i = 0; keys != NULL && i < b->n_x509_authorities; i++) {
            json_t *k = jwk_for_cert(b->x509_authorities[i].data, b->x509_authorities[i].len, why,
                                     sizeof why);
            if (k == NULL) {
                rc = fail_msg(why);
                break;
            }
            json_array_append_new(keys, k);
        }
        if (rc == 0) {
            json_t *doc =
                json_pack("{s:o,s:I,s:I}", "keys", keys, "spiffe_sequence", (json_int_t)b->sequence,
                          "spiffe_refresh_hint", (json_int_t)b->refresh_hint);
            char *s = doc ? json_dumps(doc, JSON_INDENT(4)) : NULL;
            json_decref(doc);
            if (s == NULL) {
                rc = fail_msg("out of memory");
            } else {
                printf("%s\n", s);
                free(s);
            }
        } else {
            json_decref(keys);
        }
    } else {
        for (size_t i = 0; i < b->n_x509_authorities; i++) {
            const unsigned char *p = b->x509_authorities[i].data;
            X509 *x = d2i_X509(NULL, &p, (long)b->x509_authorities[i].len);
            if (x == NULL) {
                rc = fail_msg("bundle holds a certificate that does not parse");
                break;
            }
            PEM_write_X509(stdout, x);
            X509_free(x);
        }
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

/* ------------------------------------------------------------ healthcheck */

static int cmd_healthcheck(cli_ctx *c)
{
    Sigil__Admin__V1__HealthRequest req = SIGIL__ADMIN__V1__HEALTH_REQUEST__INIT;
    Sigil__Admin__V1__HealthResponse *h;
    ProtobufCMessage *resp = NULL;
    sg_err err;
    bool ready;

    sg_err_clear(&err);
    if (admin_call(c, "Health", &req.base, &sigil__admin__v1__health_response__descriptor,
                   HEALTH_TIMEOUT_MS, &resp, &err) < 0) {
        fprintf(stderr, "Server is unhealthy: %s\n", err.msg);
        return 1;
    }
    h = (Sigil__Admin__V1__HealthResponse *)resp;
    ready = h->ready;
    if (c->json)
        print_json(json_pack("{s:b,s:s}", "healthy", ready, "trust_domain", h->trust_domain));
    else if (ready)
        printf("Server is healthy.\n");
    else
        fprintf(stderr, "Server is unhealthy: server is not ready\n");
    protobuf_c_message_free_unpacked(resp, NULL);
    return ready ? 0 : 1;
}

/* ------------------------------------------------------------ localauthority */

static json_t *authority_json(const Sigil__Admin__V1__X509Authority *a)
{
    return json_pack("{s:s,s:o,s:s,s:b}", "authority_id", a->authority_id, "expires_at",
                     i64_str(a->expires_at), "upstream_authority_subject_key_id",
                     a->upstream_authority_subject_key_id, "tainted", a->tainted);
}

static void print_authority(const Sigil__Admin__V1__X509Authority *a)
{
    char when[64];

    fmt_time(a->expires_at, when, sizeof when);
    printf("  Authority ID: %s\n", a->authority_id);
    printf("  Expires at: %s\n", when);
    if (a->upstream_authority_subject_key_id[0] != '\0')
        printf("  Upstream authority Subject Key ID: %s\n", a->upstream_authority_subject_key_id);
    if (a->tainted) {
        fmt_time(a->tainted_at, when, sizeof when);
        printf("  Tainted: true (since %s)\n", when);
    } else {
        printf("  Tainted: false\n");
    }
}

static int cmd_localauthority_x509_show(cli_ctx *c)
{
    static const char *const states[] = {"active", "prepared", "old"};
    static const char *const titles[] = {"Active", "Prepared", "Old"};
    Sigil__Admin__V1__GetX509AuthoritiesRequest req =
        SIGIL__ADMIN__V1__GET_X509_AUTHORITIES_REQUEST__INIT;
    Sigil__Admin__V1__X509Authorities *r;
    ProtobufCMessage *resp = NULL;
    sg_err err;
    int rc = 0;

    sg_err_clear(&err);
    if (admin_call(c, "GetX509Authorities", &req.base,
                   &sigil__admin__v1__x509_authorities__descriptor, CALL_TIMEOUT_MS, &resp,
                   &err) < 0)
        return fail_err(&err);
    r = (Sigil__Admin__V1__X509Authorities *)resp;
    if (c->json) {
        /* SPIRE's shape (active, prepared, old: the newest old one), plus every authority. */
        json_t *root = json_object(), *all = json_array();
        for (size_t i = 0; root != NULL && all != NULL && i < r->n_authorities; i++) {
            const Sigil__Admin__V1__X509Authority *a = r->authorities[i];
            json_t *o = authority_json(a);
            json_object_set_new(root, a->state, authority_json(a));
            if (o != NULL)
                json_object_set_new(o, "state", json_string(a->state));
            json_array_append_new(all, o);
        }
        if (root != NULL)
            json_object_set_new(root, "authorities", all);
        else
            json_decref(all);
        rc = print_json(root);
    } else {
        for (size_t k = 0; k < 3; k++) {
            bool any = false;
            printf("%s%s X.509 authority:\n", k ? "\n" : "", titles[k]);
            for (size_t i = r->n_authorities; i-- > 0;) {
                if (strcmp(r->authorities[i]->state, states[k]) != 0)
                    continue;
                if (any)
                    printf("\n");
                print_authority(r->authorities[i]);
                any = true;
            }
            if (!any)
                printf("  No %s X.509 authority found\n", states[k]);
        }
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

/* prepare, activate, taint, revoke: one call, then the authority it acted on. */
static int authority_action(cli_ctx *c, const char *method, const char *title, const char *key,
                            bool needs_id)
{
    Sigil__Admin__V1__X509AuthorityRequest idreq = SIGIL__ADMIN__V1__X509_AUTHORITY_REQUEST__INIT;
    Sigil__Admin__V1__PrepareX509AuthorityRequest preq =
        SIGIL__ADMIN__V1__PREPARE_X509_AUTHORITY_REQUEST__INIT;
    Sigil__Admin__V1__X509AuthorityResponse *r;
    ProtobufCMessage *resp = NULL;
    const char *id = c->val[FL_AUTHORITYID];
    sg_err err;
    int rc = 0;

    if (needs_id && (id == NULL || id[0] == '\0'))
        return fail_msg("an authority ID is required (-authorityID)");
    idreq.authority_id = (char *)(uintptr_t)(id ? id : "");
    sg_err_clear(&err);
    if (admin_call(c, method, needs_id ? &idreq.base : &preq.base,
                   &sigil__admin__v1__x509_authority_response__descriptor, CALL_TIMEOUT_MS, &resp,
                   &err) < 0)
        return fail_err(&err);
    r = (Sigil__Admin__V1__X509AuthorityResponse *)resp;
    if (r->authority == NULL) {
        rc = fail_msg("the server returned no authority");
    } else if (c->json) {
        rc = print_json(json_pack("{s:o}", key, authority_json(r->authority)));
    } else {
        printf("%s X.509 authority:\n", title);
        print_authority(r->authority);
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

static int cmd_localauthority_x509_prepare(cli_ctx *c)
{
    return authority_action(c, "PrepareX509Authority", "Prepared", "prepared_authority", false);
}

static int cmd_localauthority_x509_activate(cli_ctx *c)
{
    return authority_action(c, "ActivateX509Authority", "Activated", "activated_authority", true);
}

static int cmd_localauthority_x509_taint(cli_ctx *c)
{
    return authority_action(c, "TaintX509Authority", "Tainted", "tainted_authority", true);
}

static int cmd_localauthority_x509_revoke(cli_ctx *c)
{
    return authority_action(c, "RevokeX509Authority", "Revoked", "revoked_authority", true);
}

/* ------------------------------------------------------------ dispatch */

static const cmd_def commands[] = {
    {"entry", "create", cmd_entry_create, ENTRY_WRITE_FLAGS, "Creates a registration entry"},
    {"entry", "show", cmd_entry_show,
     COMMON_FLAGS | F(FL_ENTRYID) | F(FL_SPIFFE) | F(FL_PARENT) | F(FL_SELECTOR),
     "Displays configured registration entries"},
    {"entry", "update", cmd_entry_update, ENTRY_WRITE_FLAGS, "Updates a registration entry"},
    {"entry", "delete", cmd_entry_delete, COMMON_FLAGS | F(FL_ENTRYID),
     "Deletes a registration entry"},
    {"entry", "count", cmd_entry_count, COMMON_FLAGS | F(FL_SPIFFE) | F(FL_PARENT) | F(FL_SELECTOR),
     "Counts registration entries"},
    {"token", "generate", cmd_token_generate, COMMON_FLAGS | F(FL_SPIFFE) | F(FL_TTL),
     "Generates a join token"},
    {"agent", "list", cmd_agent_list, COMMON_FLAGS, "Lists attested agents"},
    {"agent", "show", cmd_agent_show, COMMON_FLAGS | F(FL_SPIFFE),
     "Shows the details of an attested agent"},
    {"agent", "evict", cmd_agent_evict, COMMON_FLAGS | F(FL_SPIFFE),
     "Evicts an attested agent (it must attest again)"},
    {"agent", "ban", cmd_agent_ban, COMMON_FLAGS | F(FL_SPIFFE), "Bans an attested agent"},
    {"agent", "count", cmd_agent_count, COMMON_FLAGS, "Counts attested agents"},
    {"bundle", "show", cmd_bundle_show, COMMON_FLAGS | F(FL_FORMAT),
     "Prints the server's trust bundle"},
    {"healthcheck", NULL, cmd_healthcheck, COMMON_FLAGS | F(FL_SHALLOW) | F(FL_VERBOSE),
     "Determines server health status"},
    {"localauthority", "x509 show", cmd_localauthority_x509_show, COMMON_FLAGS,
     "Shows the active, prepared and old X.509 authorities"},
    {"localauthority", "x509 prepare", cmd_localauthority_x509_prepare, COMMON_FLAGS,
     "Prepares the next X.509 authority"},
    {"localauthority", "x509 activate", cmd_localauthority_x509_activate,
     COMMON_FLAGS | F(FL_AUTHORITYID), "Activates the prepared X.509 authority"},
    {"localauthority", "x509 taint", cmd_localauthority_x509_taint,
     COMMON_FLAGS | F(FL_AUTHORITYID), "Taints an old X.509 authority"},
    {"localauthority", "x509 revoke", cmd_localauthority_x509_revoke,
     COMMON_FLAGS | F(FL_AUTHORITYID), "Revokes a tainted X.509 authority"},
};

static void list_commands(const char *group)
{
    fprintf(stderr, "Available commands%s%s:\n", group ? " for " : "", group ? group : "");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const cmd_def *d = &commands[i];
        char name[64];
        if (group != NULL && strcmp(d->group, group) != 0)
            continue;
        snprintf(name, sizeof name, "%s%s%s", d->group, d->name ? " " : "", d->name ? d->name : "");
        fprintf(stderr, "    %-18s %s\n", name, d->summary);
    }
}

static int run_cmd(const cmd_def *cmd, const char *cmdname, int argc, char **argv)
{
    cli_ctx c;
    const char **store[2] = {NULL, NULL};
    const char *out;
    int rc;

    memset(&c, 0, sizeof c);
    c.cmdname = cmdname;
    store[0] = calloc((size_t)argc + 1, sizeof(char *));
    store[1] = calloc((size_t)argc + 1, sizeof(char *));
    if (store[0] == NULL || store[1] == NULL) {
        free(store[0]);
        free(store[1]);
        return fail_msg("out of memory");
    }
    c.list[FL_SELECTOR] = store[0];
    c.list[FL_DNS] = store[1];
    rc = parse_flags(&c, cmd, argc, argv);
    if (rc != 0)
        goto out;
    out = flag_str(&c, FL_OUTPUT);
    if (strcmp(out, "json") == 0) {
        c.json = true;
    } else if (strcmp(out, "pretty") != 0) {
        fprintf(stderr, "invalid value \"%s\" for flag -output: use pretty or json\n", out);
        print_usage(cmd, cmdname);
        rc = 1;
        goto out;
    }
    grpc_init();
    rc = cmd->run(&c);
    if (c.ch != NULL)
        grpc_channel_destroy(c.ch);
    fflush(stdout);
    grpc_shutdown_blocking();
out:
    free(store[0]);
    free(store[1]);
    return rc == 2 ? 0 : rc;
}

int sg_server_cli_main(int argc, char **argv)
{
    const char *group, *sub = NULL;
    char cmdname[64];
    bool known_group = false;

    if (argc < 2) {
        fprintf(stderr, "Usage: %s <command> [<subcommand>] [flags]\n",
                argc > 0 ? argv[0] : "sigil-server");
        list_commands(NULL);
        return 1;
    }
    group = argv[1];
    if (argc >= 3)
        sub = argv[2];
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const cmd_def *d = &commands[i];
        if (strcmp(d->group, group) != 0)
            continue;
        known_group = true;
        if (d->name == NULL) {
            snprintf(cmdname, sizeof cmdname, "%s", d->group);
            return run_cmd(d, cmdname, argc - 2, argv + 2);
        }
        if (strchr(d->name, ' ') != NULL) { /* two words: "localauthority x509 show" */
            size_t l = strcspn(d->name, " ");
            if (sub != NULL && argc >= 4 && strlen(sub) == l && strncmp(d->name, sub, l) == 0 &&
                strcmp(d->name + l + 1, argv[3]) == 0) {
                snprintf(cmdname, sizeof cmdname, "%s %s", d->group, d->name);
                return run_cmd(d, cmdname, argc - 4, argv + 4);
            }
            continue;
        }
        if (sub != NULL && strcmp(d->name, sub) == 0) {
            snprintf(cmdname, sizeof cmdname, "%s %s", d->group, d->name);
            return run_cmd(d, cmdname, argc - 3, argv + 3);
        }
    }
    if (known_group) {
        if (sub == NULL || sub[0] == '-')
            fprintf(stderr, "%s: a subcommand is required\n", group);
        else
            fprintf(stderr, "unknown subcommand \"%.64s %.64s\"\n", group, sub);
        list_commands(group);
        return 1;
    }
    fprintf(stderr, "unknown command \"%.64s\"\n", group);
    list_commands(NULL);
    return 1;
}
