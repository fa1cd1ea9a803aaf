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

#include "server/admin_pb.h"
#include "server/cli_admin.h"
#include "server/cli_federation.h"

#include "common/bundle.h"
#include "common/fsutil.h"
#include "common/key.h"
#include "common/rpc.h"
#include "common/selector.h"
#include "common/spiffeid.h"
#include "common/strparse.h"
#include "common/x509.h"
#include "sigil/admin/v1/admin.pb-c.h"

#include <errno.h>
#include <grpc/grpc.h>
#include <jansson.h>
#include <openssl/bn.h>
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
    FL_DATA,
    FL_AUDIENCE,
    FL_SVIDTTL,
    FL_WRITE,
    FL_SKID,
    FL_FEDERATES,
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
    [FL_DATA] = {"data", K_STRING, NULL,
                 "Path to a file containing registration JSON (optional). If set to '-', read "
                 "the JSON from stdin."},
    [FL_AUDIENCE] = {"audience", K_LIST, NULL,
                     "Audience claim that will be included in the SVID. Can be used more than "
                     "once"},
    [FL_SVIDTTL] = {"ttl", K_STRING, NULL,
                    "TTL of the SVID in seconds or a duration (default: the server's default)"},
    [FL_WRITE] = {"write", K_STRING, NULL,
                  "Where to write the output instead of stdout (jwt mint: a file; x509 mint: a "
                  "directory)"},
    [FL_SKID] = {"subjectKeyID", K_STRING, NULL,
                 "The Subject Key ID of the upstream X.509 authority (hex)"},
    [FL_FEDERATES] = {"federatesWith", K_LIST, NULL,
                      "SPIFFE ID of a trust domain to federate with. Can be used more than once"},
};

#define F(x)         (1u << (x))
#define COMMON_FLAGS (F(FL_SOCKET) | F(FL_OUTPUT))
#define ENTRY_WRITE_FLAGS                                                                          \
    (COMMON_FLAGS | F(FL_SPIFFE) | F(FL_PARENT) | F(FL_SELECTOR) | F(FL_X509TTL) | F(FL_JWTTTL) |  \
     F(FL_DNS) | F(FL_ENTRYID) | F(FL_NODE) | F(FL_HINT) | F(FL_DOWNSTREAM) | F(FL_ADMIN) |        \
     F(FL_FEDERATES))

typedef struct cmd_def cmd_def;

typedef struct cli_ctx {
    const cmd_def *cmd;
    const char *cmdname; /* "entry create" */
    const char *val[FL__COUNT];
    bool set[FL__COUNT];
    bool bval[FL__COUNT];
    const char **list[FL__COUNT]; /* K_LIST values, borrowed from argv */
    size_t nlist[FL__COUNT];
    bool json;
    grpc_channel *ch;
} cli_ctx;

struct cmd_def {
    const char *group;
    const char *name; /* NULL for a command without subcommands */
    int (*run)(cli_ctx *c);
    uint32_t flags;
    const char *summary;
};

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

static void print_entry_to(FILE *f, const Sigil__Admin__V1__Entry *e)
{
    fprintf(f, "Entry ID         : %s\n", e->id[0] != '\0' ? e->id : "(none)");
    fprintf(f, "SPIFFE ID        : %s\n", e->spiffe_id);
    fprintf(f, "Parent ID        : %s\n", e->parent_id);
    fprintf(f, "Revision         : %lld\n", (long long)e->revision);
    if (e->downstream)
        fprintf(f, "Downstream       : true\n");
    if (e->x509_svid_ttl == 0)
        fprintf(f, "X509-SVID TTL    : default\n");
    else
        fprintf(f, "X509-SVID TTL    : %d\n", (int)e->x509_svid_ttl);
    if (e->jwt_svid_ttl == 0)
        fprintf(f, "JWT-SVID TTL     : default\n");
    else
        fprintf(f, "JWT-SVID TTL     : %d\n", (int)e->jwt_svid_ttl);
    for (size_t i = 0; i < e->n_selectors; i++)
        fprintf(f, "Selector         : %s:%s\n", e->selectors[i]->type, e->selectors[i]->value);
    for (size_t i = 0; i < e->n_dns_names; i++)
        fprintf(f, "DNS name         : %s\n", e->dns_names[i]);
    for (size_t i = 0; i < e->n_federates_with; i++)
        fprintf(f, "FederatesWith    : %s\n", e->federates_with[i]);
    if (e->admin)
        fprintf(f, "Admin            : true\n");
    if (e->hint != NULL && e->hint[0] != '\0')
        fprintf(f, "Hint             : %s\n", e->hint);
    fprintf(f, "\n");
}

static void print_entry(const Sigil__Admin__V1__Entry *e)
{
    print_entry_to(stdout, e);
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

/* One unary admin call; *resp freed by the caller with protobuf_c_message_free_unpacked. */
static int admin_call(cli_ctx *c, const char *method, const ProtobufCMessage *req,
                      const ProtobufCMessageDescriptor *desc, int64_t timeout_ms,
                      ProtobufCMessage **resp, sg_err *err)
{
    return sg_cli_admin_call(&c->ch, flag_str(c, FL_SOCKET), method, req, desc, timeout_ms, resp,
                             err);
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
    e.n_federates_with = c->nlist[FL_FEDERATES];
    e.federates_with = (char **)(uintptr_t)c->list[FL_FEDERATES];
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

/* ------------------------------------------------------------ entry create -data */

#define DATA_MAX_BYTES   ((size_t)64 * 1024 * 1024)
#define DATA_MAX_ENTRIES 100000

/* One entry read from a -data file; strings point into the parsed JSON. */
typedef struct data_entry {
    Sigil__Admin__V1__Entry e;
    Sigil__Admin__V1__Selector *sels;
    Sigil__Admin__V1__Selector **selp;
    char **dns;
    char **fed;
    char *spiffe_own; /* composed from {"trust_domain", "path"} */
    char *parent_own;
} data_entry;

static void data_entry_release(data_entry *d)
{
    free(d->sels);
    free(d->selp);
    free(d->dns);
    free(d->fed);
    free(d->spiffe_own);
    free(d->parent_own);
}

/* The flags that describe one entry on the command line, refused with -data. */
static const flag_id data_exclusive[] = {FL_SPIFFE, FL_PARENT,     FL_SELECTOR, FL_X509TTL,
                                         FL_JWTTTL, FL_DNS,        FL_ENTRYID,  FL_NODE,
                                         FL_HINT,   FL_DOWNSTREAM, FL_ADMIN};

/* A SPIFFE ID given as a string or as {"trust_domain": ..., "path": ...}. */
static int data_id(json_t *v, const char *field, char **out, char **own, char *why, size_t wl)
{
    json_t *td, *path;
    const char *p = "";
    size_t n;

    if (v == NULL || json_is_null(v)) {
        snprintf(why, wl, "%s: is required", field);
        return -1;
    }
    if (json_is_string(v)) {
        *out = (char *)(uintptr_t)json_string_value(v);
        return 0;
    }
    if (!json_is_object(v)) {
        snprintf(why, wl, "%s: want a string or an object with trust_domain and path", field);
        return -1;
    }
    td = json_object_get(v, "trust_domain");
    path = json_object_get(v, "path");
    if (!json_is_string(td) || json_string_length(td) == 0) {
        snprintf(why, wl, "%s.trust_domain: want a non-empty string", field);
        return -1;
    }
    if (path != NULL && !json_is_null(path)) {
        if (!json_is_string(path)) {
            snprintf(why, wl, "%s.path: want a string", field);
            return -1;
        }
        p = json_string_value(path);
    }
    if (json_object_size(v) > (size_t)(path != NULL ? 2 : 1)) {
        snprintf(why, wl, "%s: unknown field (want only trust_domain and path)", field);
        return -1;
    }
    n = strlen("spiffe://") + json_string_length(td) + strlen(p) + 1;
    *own = malloc(n);
    if (*own == NULL) {
        snprintf(why, wl, "out of memory");
        return -1;
    }
    snprintf(*own, n, "spiffe://%s%s", json_string_value(td), p);
    *out = *own;
    return 0;
}

/* A list of strings; *out is a malloc'd array of pointers into the JSON. */
static int data_strings(json_t *v, const char *field, char ***out, size_t *n, char *why, size_t wl)
{
    size_t cnt;

    *out = NULL;
    *n = 0;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_array(v)) {
        snprintf(why, wl, "%s: want a list of strings", field);
        return -1;
    }
    cnt = json_array_size(v);
    if (cnt == 0)
        return 0;
    *out = calloc(cnt, sizeof **out);
    if (*out == NULL) {
        snprintf(why, wl, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < cnt; i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s)) {
            snprintf(why, wl, "%s[%zu]: want a string", field, i);
            return -1;
        }
        (*out)[i] = (char *)(uintptr_t)json_string_value(s);
    }
    *n = cnt;
    return 0;
}

/* An integer TTL in seconds: a JSON integer or a decimal string (int64 in protojson). */
static int data_ttl(json_t *v, const char *field, int32_t *out, char *why, size_t wl)
{
    int64_t x;

    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_string(v)) {
        sg_err err;
        if (sg_parse_int64(json_string_value(v), INT64_MIN, INT64_MAX, &x, &err) < 0) {
            snprintf(why, wl, "%s: want an integer number of seconds: %.160s", field, err.msg);
            return -1;
        }
    } else {
        snprintf(why, wl, "%s: want an integer number of seconds", field);
        return -1;
    }
    if (x < INT32_MIN || x > INT32_MAX) {
        snprintf(why, wl, "%s: %lld is out of range", field, (long long)x);
        return -1;
    }
    *out = (int32_t)x;
    return 0;
}

static int data_bool(json_t *v, const char *field, protobuf_c_boolean *out, char *why, size_t wl)
{
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        snprintf(why, wl, "%s: want true or false", field);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

static int data_string(json_t *v, const char *field, char **out, char *why, size_t wl)
{
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        snprintf(why, wl, "%s: want a string", field);
        return -1;
    }
    *out = (char *)(uintptr_t)json_string_value(v);
    return 0;
}

/* A zero/false field SPIRE writes that sigil has no use for; anything else is refused. */
static int data_zero(json_t *v, const char *field, char *why, size_t wl)
{
    if (v == NULL || json_is_null(v) || json_is_false(v))
        return 0;
    if (json_is_integer(v) && json_integer_value(v) == 0)
        return 0;
    if (json_is_string(v) && (strcmp(json_string_value(v), "0") == 0 || json_string_length(v) == 0))
        return 0;
    snprintf(why, wl, "%s: not supported (leave it out or set it to %s)", field,
             json_is_boolean(v) ? "false" : "0");
    return -1;
}

static const char *const data_known_fields[] = {
    "id",         "entry_id",        "spiffe_id",    "parent_id",
    "selectors",  "x509_svid_ttl",   "jwt_svid_ttl", "ttl",
    "dns_names",  "federates_with",  "hint",         "admin",
    "downstream", "revision_number", "created_at",   "store_svid",
    "expires_at", "entry_expiry",    "entryExpiry",
};

/* Fills d from one object of the "entries" list; why names the field at fault. */
static int data_entry_parse(json_t *o, data_entry *d, char *why, size_t wl)
{
    static const Sigil__Admin__V1__Entry einit = SIGIL__ADMIN__V1__ENTRY__INIT;
    static const Sigil__Admin__V1__Selector sinit = SIGIL__ADMIN__V1__SELECTOR__INIT;
    json_t *sels;
    size_t nsel;

    memset(d, 0, sizeof *d);
    d->e = einit;
    d->e.id = (char *)(uintptr_t) "";
    d->e.hint = (char *)(uintptr_t) "";
    if (!json_is_object(o)) {
        snprintf(why, wl, "want an object");
        return -1;
    }
    for (void *it = json_object_iter(o); it != NULL; it = json_object_iter_next(o, it)) {
        const char *key = json_object_iter_key(it);
        bool known = false;
        for (size_t i = 0; i < sizeof data_known_fields / sizeof data_known_fields[0]; i++)
            known = known || strcmp(key, data_known_fields[i]) == 0;
        if (!known) {
            snprintf(why, wl, "unknown field \"%.64s\"", key);
            return -1;
        }
    }
    if (json_object_get(o, "id") != NULL && json_object_get(o, "entry_id") != NULL) {
        snprintf(why, wl, "id and entry_id: give only one");
        return -1;
    }
    if (data_string(json_object_get(o, "id"), "id", &d->e.id, why, wl) < 0 ||
        data_string(json_object_get(o, "entry_id"), "entry_id", &d->e.id, why, wl) < 0 ||
        data_id(json_object_get(o, "spiffe_id"), "spiffe_id", &d->e.spiffe_id, &d->spiffe_own, why,
                wl) < 0 ||
        data_id(json_object_get(o, "parent_id"), "parent_id", &d->e.parent_id, &d->parent_own, why,
                wl) < 0)
        return -1;
    sels = json_object_get(o, "selectors");
    if (sels == NULL || json_is_null(sels)) {
        snprintf(why, wl, "selectors: is required");
        return -1;
    }
    if (!json_is_array(sels)) {
        snprintf(why, wl, "selectors: want a list");
        return -1;
    }
    nsel = json_array_size(sels);
    d->sels = calloc(nsel ? nsel : 1, sizeof *d->sels);
    d->selp = calloc(nsel ? nsel : 1, sizeof *d->selp);
    if (d->sels == NULL || d->selp == NULL) {
        snprintf(why, wl, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < nsel; i++) {
        json_t *s = json_array_get(sels, i), *t, *val;
        if (!json_is_object(s)) {
            snprintf(why, wl, "selectors[%zu]: want an object with type and value", i);
            return -1;
        }
        t = json_object_get(s, "type");
        val = json_object_get(s, "value");
        if (!json_is_string(t) || json_string_length(t) == 0) {
            snprintf(why, wl, "selectors[%zu].type: want a non-empty string", i);
            return -1;
        }
        if (!json_is_string(val)) {
            snprintf(why, wl, "selectors[%zu].value: want a string", i);
            return -1;
        }
        if (json_object_size(s) != 2) {
            snprintf(why, wl, "selectors[%zu]: unknown field (want only type and value)", i);
            return -1;
        }
        d->sels[i] = sinit;
        d->sels[i].type = (char *)(uintptr_t)json_string_value(t);
        d->sels[i].value = (char *)(uintptr_t)json_string_value(val);
        d->selp[i] = &d->sels[i];
    }
    d->e.selectors = d->selp;
    d->e.n_selectors = nsel;
    if (json_object_get(o, "x509_svid_ttl") != NULL && json_object_get(o, "ttl") != NULL) {
        snprintf(why, wl, "x509_svid_ttl and ttl: give only one");
        return -1;
    }
    if (data_ttl(json_object_get(o, "x509_svid_ttl"), "x509_svid_ttl", &d->e.x509_svid_ttl, why,
                 wl) < 0 ||
        data_ttl(json_object_get(o, "ttl"), "ttl", &d->e.x509_svid_ttl, why, wl) < 0 ||
        data_ttl(json_object_get(o, "jwt_svid_ttl"), "jwt_svid_ttl", &d->e.jwt_svid_ttl, why, wl) <
            0 ||
        data_strings(json_object_get(o, "dns_names"), "dns_names", &d->dns, &d->e.n_dns_names, why,
                     wl) < 0 ||
        data_strings(json_object_get(o, "federates_with"), "federates_with", &d->fed,
                     &d->e.n_federates_with, why, wl) < 0 ||
        data_string(json_object_get(o, "hint"), "hint", &d->e.hint, why, wl) < 0 ||
        data_bool(json_object_get(o, "admin"), "admin", &d->e.admin, why, wl) < 0 ||
        data_bool(json_object_get(o, "downstream"), "downstream", &d->e.downstream, why, wl) < 0 ||
        data_zero(json_object_get(o, "store_svid"), "store_svid", why, wl) < 0 ||
        data_zero(json_object_get(o, "expires_at"), "expires_at", why, wl) < 0 ||
        data_zero(json_object_get(o, "entry_expiry"), "entry_expiry", why, wl) < 0 ||
        data_zero(json_object_get(o, "entryExpiry"), "entryExpiry", why, wl) < 0)
        return -1;
    d->e.dns_names = d->dns;
    d->e.federates_with = d->fed;
    return 0;
}

/* Loads and checks the -data file; on success *root owns the JSON the entries point into. */
static int data_load(const char *src, json_t **root, data_entry **out, size_t *count)
{
    char *buf = NULL;
    uint8_t *fbuf = NULL;
    size_t len = 0, n;
    json_error_t jerr;
    json_t *doc, *list;
    data_entry *ents;
    sg_err err;
    int rc;

    if (src[0] == '\0')
        return fail_msg("-data is empty: give a file path or - for stdin");
    if (strcmp(src, "-") == 0) {
        rc = sg_cli_admin_read_stdin(DATA_MAX_BYTES, &buf, &len, &err);
    } else {
        rc = sg_fs_read_file(src, DATA_MAX_BYTES, &fbuf, &len, &err);
        buf = (char *)fbuf;
    }
    if (rc == SG_ETOOBIG) {
        fprintf(stderr, "Error: %s: the entries file is larger than 64 MiB; split it\n",
                strcmp(src, "-") == 0 ? "stdin" : src);
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "Error: cannot read -data: %s\n", err.msg);
        return 1;
    }
    doc = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    free(buf);
    if (doc == NULL) {
        fprintf(stderr, "Error: %s: invalid JSON at line %d, column %d: %s\n",
                strcmp(src, "-") == 0 ? "stdin" : src, jerr.line, jerr.column, jerr.text);
        return 1;
    }
    list = json_is_object(doc) ? json_object_get(doc, "entries") : NULL;
    if (list == NULL || !json_is_array(list)) {
        json_decref(doc);
        return fail_msg(list == NULL ? "want a JSON object with an \"entries\" list"
                                     : "entries: want a list");
    }
    n = json_array_size(list);
    if (n == 0) {
        json_decref(doc);
        return fail_msg("entries: the list is empty");
    }
    if (n > DATA_MAX_ENTRIES) {
        fprintf(stderr,
                "Error: entries: %zu entries is more than the %d allowed in one call; "
                "split the file\n",
                n, DATA_MAX_ENTRIES);
        json_decref(doc);
        return 1;
    }
    ents = calloc(n, sizeof *ents);
    if (ents == NULL) {
        json_decref(doc);
        return fail_msg("out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        char why[256];
        if (data_entry_parse(json_array_get(list, i), &ents[i], why, sizeof why) < 0) {
            fprintf(stderr, "Error: entries[%zu]: %s\n", i, why);
            for (size_t j = 0; j <= i; j++)
                data_entry_release(&ents[j]);
            free(ents);
            json_decref(doc);
            return 1;
        }
    }
    *root = doc;
    *out = ents;
    *count = n;
    return 0;
}

/* entry create -data: every entry of the file, one CreateEntry each on one channel. */
static int entry_create_data(cli_ctx *c)
{
    json_t *doc = NULL, *results = NULL;
    data_entry *ents = NULL;
    size_t n = 0, failed = 0, done = 0;
    char path[128];
    sg_err err;
    int rc;

    for (size_t i = 0; i < sizeof data_exclusive / sizeof data_exclusive[0]; i++)
        if (c->set[data_exclusive[i]]) {
            fprintf(stderr,
                    "Error: -data cannot be used together with -%s: the entries come from the "
                    "file\n",
                    flag_defs[data_exclusive[i]].name);
            return 1;
        }
    rc = data_load(c->val[FL_DATA], &doc, &ents, &n);
    if (rc != 0)
        return rc;
    sg_err_clear(&err);
    if (sg_cli_admin_connect(flag_str(c, FL_SOCKET), &c->ch, &err) < 0) {
        rc = fail_err(&err);
        goto out;
    }
    if (c->json && (results = json_array()) == NULL) {
        rc = fail_msg("out of memory building JSON output");
        goto out;
    }
    snprintf(path, sizeof path, "/%s/CreateEntry", sigil__admin__v1__admin__descriptor.name);
    for (done = 0; done < n; done++) {
        Sigil__Admin__V1__CreateEntryRequest req = SIGIL__ADMIN__V1__CREATE_ENTRY_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        sg_rpc_status st;
        const char *msg;

        req.entry = &ents[done].e;
        memset(&st, 0, sizeof st);
        sg_err_clear(&err);
        rc = sg_rpc_unary(c->ch, path, &req.base, &sigil__admin__v1__entry__descriptor, NULL, 0,
                          CALL_TIMEOUT_MS, &resp, &st, &err);
        if (rc == 0) {
            const Sigil__Admin__V1__Entry *got = (const void *)resp;
            if (c->json)
                json_array_append_new(results,
                                      json_pack("{s:{s:i,s:s},s:o}", "status", "code", 0, "message",
                                                "OK", "entry", entry_json(got)));
            else
                print_entry(got);
            protobuf_c_message_free_unpacked(resp, NULL);
            continue;
        }
        if (st.code == GRPC_STATUS_OK || st.code == GRPC_STATUS_UNAVAILABLE ||
            st.code == GRPC_STATUS_DEADLINE_EXCEEDED) {
            /* The transport failed (not the entry): stop, saying how far it got. */
            fprintf(stderr,
                    "Error: %s\nError: stopped at entries[%zu]: %zu of %zu entries were "
                    "created, %zu refused\n",
                    err.msg[0] ? err.msg : sg_strerror(rc), done, done - failed, n, failed);
            rc = 1;
            goto out;
        }
        failed++;
        msg = st.details[0] ? st.details : err.msg;
        if (c->json) {
            json_array_append_new(results,
                                  json_pack("{s:{s:i,s:s},s:o}", "status", "code", (int)st.code,
                                            "message", msg, "entry", entry_json(&ents[done].e)));
        } else {
            json_t *q = json_string(msg);
            char *quoted = q ? json_dumps(q, JSON_ENCODE_ANY) : NULL;
            fprintf(stderr, "Failed to create the following entry (code: %s, msg: %s):\n",
                    sg_rpc_status_go_name(st.code), quoted ? quoted : msg);
            free(quoted);
            json_decref(q);
            print_entry_to(stderr, &ents[done].e);
        }
    }
    if (c->json) {
        rc = print_json(json_pack("{s:o}", "results", results));
        results = NULL;
        if (rc != 0)
            goto out;
    }
    if (failed > 0) {
        fprintf(stderr, "Error: failed to create %zu of %zu entries\n", failed, n);
        rc = 1;
    } else {
        rc = 0;
    }
out:
    json_decref(results);
    for (size_t i = 0; i < n; i++)
        data_entry_release(&ents[i]);
    free(ents);
    json_decref(doc);
    return rc;
}

static int cmd_entry_create(cli_ctx *c)
{
    if (c->set[FL_DATA])
        return entry_create_data(c);
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

/*
 * The SPIFFE bundle (JWKS) of a GetBundle reply: x509-svid and jwt-svid
 * keys, spiffe_sequence and spiffe_refresh_hint. *json malloc'd.
 */
static int bundle_jwks(const Sigil__Admin__V1__Bundle *b, char **json, sg_err *err)
{
    sg_bundle sb;
    int rc = sg_admin_pb_bundle_view(b, b->trust_domain, &sb, err);

    if (rc < 0)
        return rc;
    rc = sg_bundle_to_jwks(&sb, json, err);
    sg_admin_pb_bundle_view_cleanup(&sb);
    return rc;
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
        char *doc = NULL;
        if (bundle_jwks(b, &doc, &err) < 0) {
            rc = fail_err(&err);
        } else {
            /* Indented for people, as spire-server prints it; key order kept. */
            json_t *j = json_loads(doc, 0, NULL);
            char *pretty = j ? json_dumps(j, JSON_INDENT(4) | JSON_PRESERVE_ORDER) : NULL;
            printf("%s\n", pretty ? pretty : doc);
            free(pretty);
            json_decref(j);
            free(doc);
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

/* One authority of a reply, whichever kind (X.509 or JWT) it is. */
typedef struct authority_view {
    const char *id, *state;
    const char *upstream_skid; /* X.509 only; NULL for JWT */
    int64_t issued_at, expires_at, tainted_at;
    bool tainted;
} authority_view;

/* The authority_id request of an activate, taint or revoke call of either kind. */
typedef union authority_id_req {
    ProtobufCMessage base;
    Sigil__Admin__V1__X509AuthorityRequest x509;
    Sigil__Admin__V1__JWTAuthorityRequest jwt;
} authority_id_req;

/*
 * What the X.509 and JWT localauthority commands do not share: the words
 * of the output, the method and message names, and the typed parts of
 * requests and replies.
 */
typedef struct authority_kind {
    const char *word;  /* in the command: "x509" */
    const char *title; /* in the output: "X.509" */
    const char *infix; /* in the method names: "X509" */
    const ProtobufCMessageDescriptor *show_req, *show_resp, *prepare_req, *action_resp;
    void (*id_req)(authority_id_req *r, const char *id);
    /* The authorities of a show or action reply as views (at most max); returns how many. */
    size_t (*views)(const ProtobufCMessage *m, authority_view *v, size_t max);
} authority_kind;

static void x509_id_req(authority_id_req *r, const char *id)
{
    sigil__admin__v1__x509_authority_request__init(&r->x509);
    r->x509.authority_id = (char *)(uintptr_t)id;
}

static size_t x509_views(const ProtobufCMessage *m, authority_view *v, size_t max)
{
    Sigil__Admin__V1__X509Authority *const *a;
    size_t n;

    if (m->descriptor == &sigil__admin__v1__x509_authorities__descriptor) {
        a = ((const Sigil__Admin__V1__X509Authorities *)m)->authorities;
        n = ((const Sigil__Admin__V1__X509Authorities *)m)->n_authorities;
    } else {
        a = &((const Sigil__Admin__V1__X509AuthorityResponse *)m)->authority;
        n = *a != NULL;
    }
    for (size_t i = 0; i < n && i < max; i++)
        v[i] = (authority_view){
            a[i]->authority_id, a[i]->state,      a[i]->upstream_authority_subject_key_id,
            a[i]->issued_at,    a[i]->expires_at, a[i]->tainted_at,
            a[i]->tainted};
    return n;
}

static void jwt_id_req(authority_id_req *r, const char *id)
{
    sigil__admin__v1__jwtauthority_request__init(&r->jwt);
    r->jwt.authority_id = (char *)(uintptr_t)id;
}

static size_t jwt_views(const ProtobufCMessage *m, authority_view *v, size_t max)
{
    Sigil__Admin__V1__JWTAuthority *const *a;
    size_t n;

    if (m->descriptor == &sigil__admin__v1__jwtauthorities__descriptor) {
        a = ((const Sigil__Admin__V1__JWTAuthorities *)m)->authorities;
        n = ((const Sigil__Admin__V1__JWTAuthorities *)m)->n_authorities;
    } else {
        a = &((const Sigil__Admin__V1__JWTAuthorityResponse *)m)->authority;
        n = *a != NULL;
    }
    for (size_t i = 0; i < n && i < max; i++)
        v[i] = (authority_view){a[i]->authority_id, a[i]->state,      NULL,         a[i]->issued_at,
                                a[i]->expires_at,   a[i]->tainted_at, a[i]->tainted};
    return n;
}

static const authority_kind authority_kinds[] = {
    {"x509", "X.509", "X509", &sigil__admin__v1__get_x509_authorities_request__descriptor,
     &sigil__admin__v1__x509_authorities__descriptor,
     &sigil__admin__v1__prepare_x509_authority_request__descriptor,
     &sigil__admin__v1__x509_authority_response__descriptor, x509_id_req, x509_views},
    {"jwt", "JWT", "JWT", &sigil__admin__v1__get_jwtauthorities_request__descriptor,
     &sigil__admin__v1__jwtauthorities__descriptor,
     &sigil__admin__v1__prepare_jwtauthority_request__descriptor,
     &sigil__admin__v1__jwtauthority_response__descriptor, jwt_id_req, jwt_views},
};

/* The actions on one authority: the method verb, the output's title and JSON key. */
static const struct authority_action {
    const char *word, *verb, *title, *key;
    bool needs_id;
} authority_actions[] = {
    {"prepare", "Prepare", "Prepared", "prepared_authority", false},
    {"activate", "Activate", "Activated", "activated_authority", true},
    {"taint", "Taint", "Tainted", "tainted_authority", true},
    {"revoke", "Revoke", "Revoked", "revoked_authority", true},
};

static json_t *authority_json(const authority_view *a)
{
    if (a->upstream_skid != NULL)
        return json_pack("{s:s,s:o,s:s,s:b}", "authority_id", a->id, "expires_at",
                         i64_str(a->expires_at), "upstream_authority_subject_key_id",
                         a->upstream_skid, "tainted", a->tainted);
    return json_pack("{s:s,s:o,s:o,s:b}", "authority_id", a->id, "issued_at", i64_str(a->issued_at),
                     "expires_at", i64_str(a->expires_at), "tainted", a->tainted);
}

static void print_authority(const authority_view *a)
{
    char when[64];

    fmt_time(a->expires_at, when, sizeof when);
    printf("  Authority ID: %s\n", a->id);
    printf("  Expires at: %s\n", when);
    if (a->upstream_skid != NULL && a->upstream_skid[0] != '\0')
        printf("  Upstream authority Subject Key ID: %s\n", a->upstream_skid);
    if (a->tainted) {
        fmt_time(a->tainted_at, when, sizeof when);
        printf("  Tainted: true (since %s)\n", when);
    } else {
        printf("  Tainted: false\n");
    }
}

/* show: the active, prepared and old authorities, newest first in each state. */
static int authority_show(cli_ctx *c, const authority_kind *k)
{
    static const char *const states[] = {"active", "prepared", "old"};
    static const char *const titles[] = {"Active", "Prepared", "Old"};
    ProtobufCMessage req = PROTOBUF_C_MESSAGE_INIT(k->show_req), *resp = NULL;
    authority_view *v;
    char method[64];
    size_t n;
    sg_err err;
    int rc = 0;

    snprintf(method, sizeof method, "Get%sAuthorities", k->infix);
    sg_err_clear(&err);
    if (admin_call(c, method, &req, k->show_resp, CALL_TIMEOUT_MS, &resp, &err) < 0)
        return fail_err(&err);
    n = k->views(resp, NULL, 0);
    v = calloc(n ? n : 1, sizeof *v);
    if (v == NULL) {
        protobuf_c_message_free_unpacked(resp, NULL);
        return fail_msg("out of memory");
    }
    k->views(resp, v, n);
    if (c->json) {
        /* SPIRE's shape (active, prepared, old: the newest old one), plus every authority. */
        json_t *root = json_object(), *all = json_array();
        for (size_t i = 0; root != NULL && all != NULL && i < n; i++) {
            json_t *o = authority_json(&v[i]);
            json_object_set_new(root, v[i].state, authority_json(&v[i]));
            if (o != NULL)
                json_object_set_new(o, "state", json_string(v[i].state));
            json_array_append_new(all, o);
        }
        if (root != NULL)
            json_object_set_new(root, "authorities", all);
        else
            json_decref(all);
        rc = print_json(root);
    } else {
        for (size_t s = 0; s < 3; s++) {
            bool any = false;
            printf("%s%s %s authority:\n", s ? "\n" : "", titles[s], k->title);
            for (size_t i = n; i-- > 0;) {
                if (strcmp(v[i].state, states[s]) != 0)
                    continue;
                if (any)
                    printf("\n");
                print_authority(&v[i]);
                any = true;
            }
            if (!any)
                printf("  No %s %s authority found\n", states[s], k->title);
        }
    }
    free(v);
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

/* prepare, activate, taint, revoke: one call, then the authority it acted on. */
static int authority_act(cli_ctx *c, const authority_kind *k, const struct authority_action *a)
{
    ProtobufCMessage preq = PROTOBUF_C_MESSAGE_INIT(k->prepare_req), *resp = NULL;
    authority_id_req idreq;
    authority_view v;
    const char *id = c->val[FL_AUTHORITYID];
    char method[64];
    sg_err err;
    int rc = 0;

    if (a->needs_id && (id == NULL || id[0] == '\0'))
        return fail_msg("an authority ID is required (-authorityID)");
    k->id_req(&idreq, id ? id : "");
    snprintf(method, sizeof method, "%s%sAuthority", a->verb, k->infix);
    sg_err_clear(&err);
    if (admin_call(c, method, a->needs_id ? &idreq.base : &preq, k->action_resp, CALL_TIMEOUT_MS,
                   &resp, &err) < 0)
        return fail_err(&err);
    if (k->views(resp, &v, 1) == 0) {
        rc = fail_msg("the server returned no authority");
    } else if (c->json) {
        rc = print_json(json_pack("{s:o}", a->key, authority_json(&v)));
    } else {
        printf("%s %s authority:\n", a->title, k->title);
        print_authority(&v);
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

/* localauthority <kind> <action>, as the command table names it ("x509 show"). */
static int cmd_localauthority(cli_ctx *c)
{
    const char *name = c->cmd->name, *action = strchr(name, ' ') + 1;
    size_t len = (size_t)(action - 1 - name);

    for (size_t i = 0; i < sizeof authority_kinds / sizeof authority_kinds[0]; i++) {
        const authority_kind *k = &authority_kinds[i];
        if (strlen(k->word) != len || strncmp(name, k->word, len) != 0)
            continue;
        if (strcmp(action, "show") == 0)
            return authority_show(c, k);
        for (size_t j = 0; j < sizeof authority_actions / sizeof authority_actions[0]; j++)
            if (strcmp(action, authority_actions[j].word) == 0)
                return authority_act(c, k, &authority_actions[j]);
    }
    return fail_msg("unknown localauthority command");
}

/* ------------------------------------------------------------ jwt mint, x509 mint */

/* -ttl of a mint command: 0 (the server's default) when absent. */
static int mint_ttl(cli_ctx *c, int32_t *ttl)
{
    *ttl = 0;
    if (c->val[FL_SVIDTTL] == NULL)
        return 0;
    if (parse_ttl("ttl", c->val[FL_SVIDTTL], ttl) != 0)
        return 1;
    if (*ttl <= 0) {
        fprintf(stderr, "Error: invalid value \"%s\" for -ttl: must be at least 1s\n",
                c->val[FL_SVIDTTL]);
        return 1;
    }
    return 0;
}

static int need_spiffe_id(cli_ctx *c)
{
    if (c->val[FL_SPIFFE] == NULL || c->val[FL_SPIFFE][0] == '\0')
        return fail_msg("a SPIFFE ID is required (-spiffeID)");
    return 0;
}

static int write_out(const char *path, const char *data, mode_t mode)
{
    sg_err err;

    sg_err_clear(&err);
    if (sg_fs_write_atomic(path, data, strlen(data), mode, &err) < 0)
        return fail_err(&err);
    return 0;
}

static int cmd_jwt_mint(cli_ctx *c)
{
    Sigil__Admin__V1__MintJWTSVIDRequest req = SIGIL__ADMIN__V1__MINT_JWTSVIDREQUEST__INIT;
    Sigil__Admin__V1__MintJWTSVIDResponse *r;
    ProtobufCMessage *resp = NULL;
    const char *out = c->val[FL_WRITE];
    sg_err err;
    int rc;

    if (need_spiffe_id(c) != 0)
        return 1;
    if (c->nlist[FL_AUDIENCE] == 0)
        return fail_msg("at least one audience is required (-audience)");
    if (mint_ttl(c, &req.ttl) != 0)
        return 1;
    req.spiffe_id = (char *)(uintptr_t)c->val[FL_SPIFFE];
    req.audience = (char **)(uintptr_t)c->list[FL_AUDIENCE];
    req.n_audience = c->nlist[FL_AUDIENCE];
    sg_err_clear(&err);
    if (admin_call(c, "MintJWTSVID", &req.base, &sigil__admin__v1__mint_jwtsvidresponse__descriptor,
                   CALL_TIMEOUT_MS, &resp, &err) < 0)
        return fail_err(&err);
    r = (Sigil__Admin__V1__MintJWTSVIDResponse *)resp;
    if (out != NULL && out[0] != '\0') {
        size_t len = strlen(r->token) + 2;
        char *text = malloc(len);
        if (text == NULL) {
            rc = fail_msg("out of memory");
        } else {
            snprintf(text, len, "%s\n", r->token);
            rc = write_out(out, text, 0600);
            free(text);
        }
        if (rc == 0 && !c->json)
            printf("JWT-SVID written to %s\n", out);
    } else {
        rc = 0;
    }
    if (rc == 0 && c->json)
        rc = print_json(
            json_pack("{s:s,s:o}", "token", r->token, "expires_at", i64_str(r->expires_at)));
    else if (rc == 0 && (out == NULL || out[0] == '\0'))
        printf("%s\n", r->token);
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

/* Concatenated PEM of DER certificates (malloc'd), or NULL after printing the error. */
static char *certs_pem(ProtobufCBinaryData *v, size_t n)
{
    sg_der *d = calloc(n ? n : 1, sizeof *d);
    char *pem = NULL;
    sg_err err;

    if (d == NULL) {
        fail_msg("out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        d[i].data = v[i].data;
        d[i].len = v[i].len;
    }
    sg_err_clear(&err);
    if (sg_x509_der_list_to_pem(d, n, &pem, &err) < 0) {
        fail_err(&err);
        pem = NULL;
    }
    free(d);
    return pem;
}

static int cmd_x509_mint(cli_ctx *c)
{
    Sigil__Admin__V1__MintX509SVIDRequest req = SIGIL__ADMIN__V1__MINT_X509_SVIDREQUEST__INIT;
    Sigil__Admin__V1__MintX509SVIDResponse *r;
    ProtobufCMessage *resp = NULL;
    const char *dir = c->val[FL_WRITE];
    EVP_PKEY *key = NULL;
    sg_der csr = {0};
    char *key_pem = NULL, *chain = NULL, *bundle = NULL;
    sg_err err;
    int rc = 1;

    if (need_spiffe_id(c) != 0 || mint_ttl(c, &req.ttl) != 0)
        return 1;
    sg_err_clear(&err);
    /* The key never leaves this process: the server gets a CSR. */
    if (sg_key_generate(SG_KEY_EC_P256, &key, &err) < 0 || sg_key_to_pem(key, &key_pem, &err) < 0 ||
        sg_x509_csr_create(key, NULL, &csr, &err) < 0) {
        rc = fail_err(&err);
        goto out;
    }
    req.spiffe_id = (char *)(uintptr_t)c->val[FL_SPIFFE];
    req.csr.data = csr.data;
    req.csr.len = csr.len;
    req.dns_names = (char **)(uintptr_t)c->list[FL_DNS];
    req.n_dns_names = c->nlist[FL_DNS];
    if (admin_call(c, "MintX509SVID", &req.base,
                   &sigil__admin__v1__mint_x509_svidresponse__descriptor, CALL_TIMEOUT_MS, &resp,
                   &err) < 0) {
        rc = fail_err(&err);
        goto out;
    }
    r = (Sigil__Admin__V1__MintX509SVIDResponse *)resp;
    if (r->n_cert_chain == 0) {
        rc = fail_msg("the server returned no certificate");
        goto out;
    }
    chain = certs_pem(r->cert_chain, r->n_cert_chain);
    bundle = chain ? certs_pem(r->root_cas, r->n_root_cas) : NULL;
    if (chain == NULL || bundle == NULL)
        goto out;
    if (dir != NULL && dir[0] != '\0') {
        /* SPIRE's file names: svid.pem, key.pem (0600), bundle.pem. */
        static const char *const names[] = {"svid.pem", "key.pem", "bundle.pem"};
        const char *data[] = {chain, key_pem, bundle};
        const mode_t modes[] = {0644, 0600, 0644};
        if (sg_fs_mkdir_p(dir, 0700, &err) < 0) {
            rc = fail_err(&err);
            goto out;
        }
        rc = 0;
        for (size_t i = 0; i < 3 && rc == 0; i++) {
            char *p = sg_fs_join(dir, names[i]);
            rc = p != NULL ? write_out(p, data[i], modes[i]) : fail_msg("out of memory");
            if (rc == 0 && !c->json)
                printf("%s written to %s\n",
                       i == 0   ? "X509-SVID"
                       : i == 1 ? "Private key"
                                : "Root CAs",
                       p);
            free(p);
        }
        if (rc == 0 && c->json)
            rc = print_json(
                json_pack("{s:s,s:o}", "directory", dir, "expires_at", i64_str(r->expires_at)));
    } else if (c->json) {
        rc = print_json(json_pack("{s:s,s:s,s:s,s:o}", "x509_svid", chain, "private_key", key_pem,
                                  "root_cas", bundle, "expires_at", i64_str(r->expires_at)));
    } else {
        printf("X509-SVID:\n%s\nPrivate key:\n%s\nRoot CAs:\n%s", chain, key_pem, bundle);
        rc = 0;
    }
out:
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    free(chain);
    free(bundle);
    sg_key_pem_free(key_pem);
    sg_der_cleanup(&csr);
    EVP_PKEY_free(key);
    return rc;
}

/* ------------------------------------------------------------ upstreamauthority */

static int upstream_action(cli_ctx *c, const char *method, const char *title)
{
    Sigil__Admin__V1__UpstreamAuthorityRequest req =
        SIGIL__ADMIN__V1__UPSTREAM_AUTHORITY_REQUEST__INIT;
    Sigil__Admin__V1__UpstreamAuthorityResponse *r;
    ProtobufCMessage *resp = NULL;
    const char *id = c->val[FL_SKID];
    sg_err err;
    int rc;

    if (id == NULL || id[0] == '\0')
        return fail_msg("a Subject Key ID is required (-subjectKeyID)");
    req.subject_key_id = (char *)(uintptr_t)id;
    sg_err_clear(&err);
    if (admin_call(c, method, &req.base, &sigil__admin__v1__upstream_authority_response__descriptor,
                   CALL_TIMEOUT_MS, &resp, &err) < 0)
        return fail_err(&err);
    r = (Sigil__Admin__V1__UpstreamAuthorityResponse *)resp;
    if (c->json) {
        rc = print_json(
            json_pack("{s:s}", "upstream_x509_authority_subject_key_id", r->subject_key_id));
    } else {
        printf("%s upstream X.509 authority: %s\n", title, r->subject_key_id);
        rc = 0;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

static int cmd_upstreamauthority_taint(cli_ctx *c)
{
    return upstream_action(c, "TaintUpstreamAuthority", "Tainted");
}

static int cmd_upstreamauthority_revoke(cli_ctx *c)
{
    return upstream_action(c, "RevokeUpstreamAuthority", "Revoked");
}

/* ------------------------------------------------------------ dispatch */

static const cmd_def commands[] = {
    {"entry", "create", cmd_entry_create, ENTRY_WRITE_FLAGS | F(FL_DATA),
     "Creates registration entries"},
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
    {"localauthority", "x509 show", cmd_localauthority, COMMON_FLAGS,
     "Shows the active, prepared and old X.509 authorities"},
    {"localauthority", "x509 prepare", cmd_localauthority, COMMON_FLAGS,
     "Prepares the next X.509 authority"},
    {"localauthority", "x509 activate", cmd_localauthority, COMMON_FLAGS | F(FL_AUTHORITYID),
     "Activates the prepared X.509 authority"},
    {"localauthority", "x509 taint", cmd_localauthority, COMMON_FLAGS | F(FL_AUTHORITYID),
     "Taints an old X.509 authority"},
    {"localauthority", "x509 revoke", cmd_localauthority, COMMON_FLAGS | F(FL_AUTHORITYID),
     "Revokes a tainted X.509 authority"},
    {"upstreamauthority", "taint", cmd_upstreamauthority_taint, COMMON_FLAGS | F(FL_SKID),
     "Taints an upstream X.509 authority (its local authorities too)"},
    {"upstreamauthority", "revoke", cmd_upstreamauthority_revoke, COMMON_FLAGS | F(FL_SKID),
     "Revokes a tainted upstream X.509 authority (it leaves the bundle)"},
    {"localauthority", "jwt show", cmd_localauthority, COMMON_FLAGS,
     "Shows the active, prepared and old JWT authorities"},
    {"localauthority", "jwt prepare", cmd_localauthority, COMMON_FLAGS,
     "Prepares the next JWT authority"},
    {"localauthority", "jwt activate", cmd_localauthority, COMMON_FLAGS | F(FL_AUTHORITYID),
     "Activates the prepared JWT authority"},
    {"localauthority", "jwt taint", cmd_localauthority, COMMON_FLAGS | F(FL_AUTHORITYID),
     "Taints an old JWT authority"},
    {"localauthority", "jwt revoke", cmd_localauthority, COMMON_FLAGS | F(FL_AUTHORITYID),
     "Revokes a tainted JWT authority"},
    {"jwt", "mint", cmd_jwt_mint,
     COMMON_FLAGS | F(FL_SPIFFE) | F(FL_AUDIENCE) | F(FL_SVIDTTL) | F(FL_WRITE),
     "Mints a JWT-SVID"},
    {"x509", "mint", cmd_x509_mint,
     COMMON_FLAGS | F(FL_SPIFFE) | F(FL_SVIDTTL) | F(FL_DNS) | F(FL_WRITE), "Mints an X509-SVID"},
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
        fprintf(stderr, "    %-28s %s\n", name, d->summary);
    }
    sg_server_cli_federation_list(stderr, group);
}

static int run_cmd(const cmd_def *cmd, const char *cmdname, int argc, char **argv)
{
    cli_ctx c;
    const char **store[3] = {NULL, NULL, NULL};
    const char *out;
    int rc;

    memset(&c, 0, sizeof c);
    c.cmd = cmd;
    c.cmdname = cmdname;
    store[0] = calloc((size_t)argc + 1, sizeof(char *));
    store[1] = calloc((size_t)argc + 1, sizeof(char *));
    store[2] = calloc((size_t)argc + 1, sizeof(char *));
    if (store[0] == NULL || store[1] == NULL || store[2] == NULL) {
        free(store[0]);
        free(store[1]);
        free(store[2]);
        return fail_msg("out of memory");
    }
    c.list[FL_SELECTOR] = store[0];
    c.list[FL_DNS] = store[1];
    c.list[FL_AUDIENCE] = store[2];
    /* -federatesWith shares -dns's storage size: one slot per argument at most. */
    const char **fed_store = calloc((size_t)argc + 1, sizeof(char *));
    if (fed_store == NULL) {
        free(store[0]);
        free(store[1]);
        free(store[2]);
        return fail_msg("out of memory");
    }
    c.list[FL_FEDERATES] = fed_store;
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
    free(store[2]);
    free(fed_store);
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
    if (sg_server_cli_federation_handles(argc, argv))
        return sg_server_cli_federation_main(argc, argv);
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
