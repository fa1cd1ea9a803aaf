/*
 * Reads SPIRE-format server and agent configuration into typed structs.
 * The HCL tree is walked with per-section key tables; every problem is
 * reported as "file:line: message" naming the key, section or plugin.
 * SPIRE keys sigil does not act on are listed in ignored_* below: they are
 * accepted with a warning. Any other unknown key is an error.
 */
#include "common/config.h"

#include "common/fsutil.h"
#include "common/hcl.h"
#include "common/strparse.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUOTE_MAX 64

typedef struct cfgctx {
    const char *file;
    sg_err *err;
} cfgctx;

static int cerr(cfgctx *c, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Records "file:line: message" (or "file: message" for line 0) as SG_ECONFIG. */
static int cerr(cfgctx *c, int line, const char *fmt, ...)
{
    char msg[SG_ERR_MSG_LEN];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0)
        return sg_err_set(c->err, SG_ECONFIG, "%s:%d: %s", c->file, line, msg);
    return sg_err_set(c->err, SG_ECONFIG, "%s: %s", c->file, msg);
}

/* ------------------------------------------------------------ value setters */

typedef int (*setter_fn)(cfgctx *c, const sg_hcl_node *n, void *field);

typedef struct keydef {
    const char *key;
    setter_fn set;
    size_t off; /* offset of the field in the config struct */
} keydef;

static int want_string(cfgctx *c, const sg_hcl_node *n, const char **out)
{
    if (n->type != SG_HCL_STRING)
        return cerr(c, n->line, "%s must be a string, not a %s", n->key, sg_hcl_type_name(n->type));
    *out = n->str;
    return 0;
}

static int set_string(cfgctx *c, const sg_hcl_node *n, void *field)
{
    char **dst = field;
    const char *s = NULL;
    char *copy;
    int rc = want_string(c, n, &s);

    if (rc < 0)
        return rc;
    copy = strdup(s);
    if (copy == NULL)
        return cerr(c, n->line, "out of memory");
    free(*dst);
    *dst = copy;
    return 0;
}

/* Like set_string but an empty string is an error. */
static int set_nonempty(cfgctx *c, const sg_hcl_node *n, void *field)
{
    if (n->type == SG_HCL_STRING && n->str[0] == '\0')
        return cerr(c, n->line, "%s must not be empty", n->key);
    return set_string(c, n, field);
}

/* Integers may be written bare (8081) or quoted ("8081"), as SPIRE accepts. */
static int get_int(cfgctx *c, const sg_hcl_node *n, int64_t min, int64_t max, int64_t *out)
{
    sg_err e;

    if (n->type == SG_HCL_NUMBER && n->is_int) {
        if (n->ival < min || n->ival > max)
            return cerr(c, n->line, "%s = %lld is out of range [%lld, %lld]", n->key,
                        (long long)n->ival, (long long)min, (long long)max);
        *out = n->ival;
        return 0;
    }
    if (n->type == SG_HCL_STRING) {
        if (sg_parse_int64(n->str, min, max, out, &e) < 0)
            return cerr(c, n->line, "%s: %s", n->key, e.msg);
        return 0;
    }
    if (n->type == SG_HCL_NUMBER)
        return cerr(c, n->line, "%s = %.*s is not an integer", n->key, QUOTE_MAX, n->str);
    return cerr(c, n->line, "%s must be an integer, not a %s", n->key, sg_hcl_type_name(n->type));
}

static int set_port(cfgctx *c, const sg_hcl_node *n, void *field)
{
    int64_t v;
    int rc = get_int(c, n, 1, 65535, &v);

    if (rc == 0)
        *(int *)field = (int)v;
    return rc;
}

static int set_i64(cfgctx *c, const sg_hcl_node *n, void *field)
{
    return get_int(c, n, INT64_MIN, INT64_MAX, field);
}

/* Booleans may be bare or quoted ("true"), as SPIRE's HCL decoding allows. */
static int set_bool(cfgctx *c, const sg_hcl_node *n, void *field)
{
    bool *dst = field;

    if (n->type == SG_HCL_BOOL) {
        *dst = n->bval;
        return 0;
    }
    if (n->type == SG_HCL_STRING && strcmp(n->str, "true") == 0) {
        *dst = true;
        return 0;
    }
    if (n->type == SG_HCL_STRING && strcmp(n->str, "false") == 0) {
        *dst = false;
        return 0;
    }
    if (n->type == SG_HCL_STRING)
        return cerr(c, n->line, "%s = \"%.*s\" is not true or false", n->key, QUOTE_MAX, n->str);
    return cerr(c, n->line, "%s must be true or false, not a %s", n->key,
                sg_hcl_type_name(n->type));
}

/* Durations in Go syntax ("1h", "90s"); a bare integer counts as seconds. */
static int set_ttl(cfgctx *c, const sg_hcl_node *n, void *field)
{
    int64_t ms;
    sg_err e;

    if (n->type == SG_HCL_NUMBER && n->is_int) {
        if (n->ival <= 0)
            return cerr(c, n->line, "%s must be greater than zero", n->key);
        *(int64_t *)field = n->ival;
        return 0;
    }
    if (n->type != SG_HCL_STRING)
        return cerr(c, n->line, "%s must be a duration such as \"1h\", not a %s", n->key,
                    sg_hcl_type_name(n->type));
    if (sg_parse_duration_ms(n->str, &ms, &e) < 0)
        return cerr(c, n->line, "%s: %s", n->key, e.msg);
    if (ms < 1000)
        return cerr(c, n->line, "%s = \"%.*s\" must be at least 1s", n->key, QUOTE_MAX, n->str);
    *(int64_t *)field = ms / 1000;
    return 0;
}

static int set_log_level(cfgctx *c, const sg_hcl_node *n, void *field)
{
    const char *s = NULL;
    int rc = want_string(c, n, &s);

    if (rc < 0)
        return rc;
    if (sg_log_level_parse(s, field) < 0)
        return cerr(c, n->line, "log_level \"%.*s\" is not one of debug, info, warn, error",
                    QUOTE_MAX, s);
    return 0;
}

static int set_key_type(cfgctx *c, const sg_hcl_node *n, void *field)
{
    const char *s = NULL;
    sg_err e;
    int rc = want_string(c, n, &s);

    if (rc < 0)
        return rc;
    if (sg_key_type_parse(s, field, &e) < 0)
        return cerr(c, n->line, "ca_key_type: %s", e.msg);
    return 0;
}

/* jwt_key_type: the key and the alg; field is jwt_key_type in the server config. */
static int set_jwt_key_type(cfgctx *c, const sg_hcl_node *n, void *field)
{
    sg_server_config *s =
        (sg_server_config *)((char *)field - offsetof(sg_server_config, jwt_key_type));
    const char *v = NULL;
    sg_err e;
    int rc = want_string(c, n, &v);

    if (rc < 0)
        return rc;
    if (sg_jwt_key_type_parse(v, &s->jwt_key_type, &s->jwt_alg, &e) < 0)
        return cerr(c, n->line, "jwt_key_type: %s", e.msg);
    s->jwt_key_type_set = true;
    return 0;
}

static int set_trust_domain(cfgctx *c, const sg_hcl_node *n, void *field)
{
    const char *s = NULL;
    sg_err e;
    int rc = want_string(c, n, &s);

    if (rc < 0)
        return rc;
    if (sg_trust_domain_parse(s, field, &e) < 0)
        return cerr(c, n->line, "trust_domain: %s", e.msg);
    return 0;
}

static int set_bundle_format(cfgctx *c, const sg_hcl_node *n, void *field)
{
    if (n->type == SG_HCL_STRING && strcmp(n->str, "pem") != 0 && strcmp(n->str, "spiffe") != 0)
        return cerr(c, n->line, "trust_bundle_format \"%.*s\" must be \"pem\" or \"spiffe\"",
                    QUOTE_MAX, n->str);
    return set_string(c, n, field);
}

/*
 * ca_subject lists (country = ["US"]) hold one value in sigil; a plain
 * string is also accepted. An empty list or string leaves the field unset.
 */
static int set_subject_field(cfgctx *c, const sg_hcl_node *n, void *field)
{
    const sg_hcl_node *v = n;
    char **dst = field;
    char *copy;

    if (n->type == SG_HCL_LIST) {
        if (n->n == 0) {
            free(*dst);
            *dst = NULL;
            return 0;
        }
        if (n->n > 1)
            return cerr(c, n->line, "ca_subject %s: sigil supports a single value, found %zu",
                        n->key, n->n);
        v = n->items[0];
    }
    if (v->type != SG_HCL_STRING)
        return cerr(c, n->line, "ca_subject %s must be a list of strings", n->key);
    copy = v->str[0] != '\0' ? strdup(v->str) : NULL;
    if (v->str[0] != '\0' && copy == NULL)
        return cerr(c, n->line, "out of memory");
    free(*dst);
    *dst = copy;
    return 0;
}

/* ------------------------------------------------------------ sections */

/* Members of one block, checked against a key table. */
static int apply_keys(cfgctx *c, const sg_hcl_node *block, const char *where, const keydef *keys,
                      size_t nkeys, const char *const *ignored, void *base)
{
    int first_line[64] = {0};

    if (block->type != SG_HCL_OBJECT)
        return cerr(c, block->line, "%s must be a block { ... }, not a %s", where,
                    sg_hcl_type_name(block->type));
    for (size_t i = 0; i < block->n; i++) {
        const sg_hcl_node *m = block->items[i];
        size_t k;
        int rc;

        for (k = 0; k < nkeys; k++)
            if (strcmp(m->key, keys[k].key) == 0)
                break;
        if (k == nkeys) {
            bool skip = false;

            for (size_t j = 0; ignored != NULL && ignored[j] != NULL; j++)
                if (strcmp(m->key, ignored[j]) == 0)
                    skip = true;
            if (!skip)
                return cerr(c, m->line, "unknown key \"%.*s\" in %s", QUOTE_MAX, m->key, where);
            sg_log_warn("%s:%d: %s is not supported by sigil yet; ignored", c->file, m->line,
                        m->key);
            continue;
        }
        if (m->nlabels > 0)
            return cerr(c, m->line, "%s in %s takes no label, found \"%.*s\"", m->key, where,
                        QUOTE_MAX, m->labels[0]);
        if (k < 64 && first_line[k] != 0)
            return cerr(c, m->line, "duplicate key \"%s\" in %s (first set on line %d)", m->key,
                        where, first_line[k]);
        if (k < 64)
            first_line[k] = m->line;
        rc = keys[k].set(c, m, (char *)base + keys[k].off);
        if (rc < 0)
            return rc;
    }
    return 0;
}

#define NKEYS(t) (sizeof(t) / sizeof((t)[0]))
#define SK(name, fn, field)                                                                        \
    {                                                                                              \
        name, fn, offsetof(sg_server_config, field)                                                \
    }
#define AK(name, fn, field)                                                                        \
    {                                                                                              \
        name, fn, offsetof(sg_agent_config, field)                                                 \
    }

static const keydef ca_subject_keys[] = {
    SK("country", set_subject_field, ca_subject_country),
    SK("organization", set_subject_field, ca_subject_organization),
    SK("common_name", set_subject_field, ca_subject_common_name),
};

/* ca_subject { } is a block inside server { }; field is the whole server config. */
static int set_ca_subject(cfgctx *c, const sg_hcl_node *n, void *field)
{
    char *base = (char *)field - offsetof(sg_server_config, ca_subject_country);

    return apply_keys(c, n, "ca_subject {}", ca_subject_keys, NKEYS(ca_subject_keys), NULL, base);
}

/* ------------------------------------------------------------ federation */

/* A block member with exactly one label (profile "https_web" { }); its label in *label. */
static int one_label(cfgctx *c, const sg_hcl_node *m, const char *where, const char **label)
{
    if (m->nlabels != 1)
        return cerr(c, m->line, "%s in %s needs exactly one label (%s \"<name>\" { ... })", m->key,
                    where, m->key);
    if (m->type != SG_HCL_OBJECT)
        return cerr(c, m->line, "%s \"%.*s\" must be a block { ... }", m->key, QUOTE_MAX,
                    m->labels[0]);
    *label = m->labels[0];
    return 0;
}

static const keydef serving_cert_keys[] = {
    SK("cert_file_path", set_nonempty, fed_endpoint_cert_file),
    SK("key_file_path", set_nonempty, fed_endpoint_key_file),
};
static const char *const serving_cert_ignored[] = {"file_sync_interval", NULL};

/* bundle_endpoint { profile "https_web" { serving_cert_file { } } }; base is the server config. */
static int fed_endpoint_profile(cfgctx *c, const sg_hcl_node *m, sg_server_config *s)
{
    const char *name;
    int rc = one_label(c, m, "bundle_endpoint {}", &name);

    if (rc < 0)
        return rc;
    if (strcmp(name, "https_spiffe") == 0) {
        if (m->n > 0)
            return cerr(c, m->items[0]->line,
                        "unknown key \"%.*s\" in profile \"https_spiffe\" (it takes none)",
                        QUOTE_MAX, m->items[0]->key);
        s->fed_endpoint_https_web = false;
        return 0;
    }
    if (strcmp(name, "https_web") != 0)
        return cerr(c, m->line,
                    "bundle endpoint profile \"%.*s\" is unknown (use \"https_spiffe\" "
                    "or \"https_web\")",
                    QUOTE_MAX, name);
    s->fed_endpoint_https_web = true;
    for (size_t i = 0; i < m->n; i++) {
        const sg_hcl_node *k = m->items[i];
        if (strcmp(k->key, "serving_cert_file") == 0) {
            rc = apply_keys(c, k, "serving_cert_file {}", serving_cert_keys,
                            NKEYS(serving_cert_keys), serving_cert_ignored, s);
            if (rc < 0)
                return rc;
        } else if (strcmp(k->key, "acme") == 0) {
            return cerr(c, k->line,
                        "profile \"https_web\" acme { } is not supported by sigil; use "
                        "serving_cert_file { cert_file_path, key_file_path }");
        } else {
            return cerr(c, k->line, "unknown key \"%.*s\" in profile \"https_web\"", QUOTE_MAX,
                        k->key);
        }
    }
    if (s->fed_endpoint_cert_file == NULL || s->fed_endpoint_key_file == NULL)
        return cerr(c, m->line,
                    "profile \"https_web\" needs serving_cert_file { cert_file_path, "
                    "key_file_path }");
    return 0;
}

static int set_fed_address(cfgctx *c, const sg_hcl_node *n, void *field)
{
    return set_nonempty(c, n, field);
}

static const keydef bundle_endpoint_keys[] = {
    SK("address", set_fed_address, fed_endpoint_address),
    SK("port", set_port, fed_endpoint_port),
    SK("refresh_hint", set_ttl, fed_endpoint_refresh_hint_s),
};

static int fed_bundle_endpoint(cfgctx *c, const sg_hcl_node *m, sg_server_config *s)
{
    bool have_profile = false;

    if (m->nlabels > 0)
        return cerr(c, m->line, "bundle_endpoint takes no label");
    if (m->type != SG_HCL_OBJECT)
        return cerr(c, m->line, "bundle_endpoint must be a block { ... }");
    s->fed_endpoint_enabled = true;
    for (size_t i = 0; i < m->n; i++) {
        const sg_hcl_node *k = m->items[i];
        int rc;
        if (strcmp(k->key, "profile") == 0) {
            if (have_profile)
                return cerr(c, k->line, "bundle_endpoint has more than one profile");
            have_profile = true;
            rc = fed_endpoint_profile(c, k, s);
        } else if (strcmp(k->key, "acme") == 0) {
            rc = cerr(c, k->line,
                      "bundle_endpoint acme { } is not supported by sigil; use "
                      "profile \"https_web\" { serving_cert_file { ... } }");
        } else {
            sg_hcl_node one = *m;
            one.items = (sg_hcl_node **)&m->items[i];
            one.n = 1;
            rc = apply_keys(c, &one, "bundle_endpoint {}", bundle_endpoint_keys,
                            NKEYS(bundle_endpoint_keys), NULL, s);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int fed_federates_with(cfgctx *c, const sg_hcl_node *m, sg_server_config *s)
{
    sg_config_federates_with fw, *nv;
    const char *label;
    bool have_profile = false;
    sg_err e;
    int rc = one_label(c, m, "federation {}", &label);

    if (rc < 0)
        return rc;
    memset(&fw, 0, sizeof fw);
    if (sg_trust_domain_parse(label, fw.trust_domain, &e) < 0)
        return cerr(c, m->line, "federates_with \"%.*s\": %s", QUOTE_MAX, label, e.msg);
    if (s->trust_domain[0] != '\0' && strcmp(fw.trust_domain, s->trust_domain) == 0)
        return cerr(c, m->line, "federates_with \"%.*s\" names this server's own trust domain",
                    QUOTE_MAX, label);
    for (size_t i = 0; i < s->nfederates_with; i++)
        if (strcmp(s->federates_with[i].trust_domain, fw.trust_domain) == 0)
            return cerr(c, m->line, "duplicate federates_with \"%s\"", fw.trust_domain);
    for (size_t i = 0; rc == 0 && i < m->n; i++) {
        const sg_hcl_node *k = m->items[i];
        const char *pname;
        if (strcmp(k->key, "bundle_endpoint_url") == 0) {
            if (k->nlabels > 0)
                rc = cerr(c, k->line, "bundle_endpoint_url takes no label");
            else if (fw.bundle_endpoint_url != NULL)
                rc = cerr(c, k->line, "duplicate key \"bundle_endpoint_url\"");
            else
                rc = set_nonempty(c, k, &fw.bundle_endpoint_url);
            if (rc == 0 && strncmp(fw.bundle_endpoint_url, "https://", 8) != 0)
                rc = cerr(c, k->line, "bundle_endpoint_url \"%.*s\" must start with https://",
                          QUOTE_MAX, fw.bundle_endpoint_url);
        } else if (strcmp(k->key, "bundle_endpoint_profile") == 0) {
            rc = have_profile ? cerr(c, k->line,
                                     "federates_with \"%s\" has more than one "
                                     "bundle_endpoint_profile",
                                     fw.trust_domain)
                              : one_label(c, k, "federates_with {}", &pname);
            have_profile = true;
            if (rc < 0)
                break;
            if (strcmp(pname, "https_web") == 0) {
                fw.https_web = true;
                if (k->n > 0)
                    rc = cerr(c, k->items[0]->line,
                              "unknown key \"%.*s\" in "
                              "bundle_endpoint_profile \"https_web\"",
                              QUOTE_MAX, k->items[0]->key);
            } else if (strcmp(pname, "https_spiffe") == 0) {
                for (size_t j = 0; rc == 0 && j < k->n; j++) {
                    const sg_hcl_node *v = k->items[j];
                    if (strcmp(v->key, "endpoint_spiffe_id") != 0)
                        rc = cerr(c, v->line,
                                  "unknown key \"%.*s\" in bundle_endpoint_profile "
                                  "\"https_spiffe\"",
                                  QUOTE_MAX, v->key);
                    else
                        rc = set_nonempty(c, v, &fw.endpoint_spiffe_id);
                }
                if (rc == 0 && fw.endpoint_spiffe_id == NULL)
                    rc = cerr(c, k->line,
                              "bundle_endpoint_profile \"https_spiffe\" needs "
                              "endpoint_spiffe_id");
                if (rc == 0) {
                    sg_spiffeid sid;
                    if (sg_spiffeid_parse(fw.endpoint_spiffe_id, &sid, &e) < 0)
                        rc = cerr(c, k->line, "endpoint_spiffe_id: %s", e.msg);
                }
            } else {
                rc = cerr(c, k->line,
                          "bundle_endpoint_profile \"%.*s\" is unknown (use "
                          "\"https_spiffe\" or \"https_web\")",
                          QUOTE_MAX, pname);
            }
        } else {
            rc = cerr(c, k->line, "unknown key \"%.*s\" in federates_with \"%s\"", QUOTE_MAX,
                      k->key, fw.trust_domain);
        }
    }
    if (rc == 0 && fw.bundle_endpoint_url == NULL)
        rc = cerr(c, m->line, "federates_with \"%s\" needs bundle_endpoint_url", fw.trust_domain);
    if (rc == 0 && !have_profile)
        rc = cerr(c, m->line,
                  "federates_with \"%s\" needs bundle_endpoint_profile "
                  "\"https_spiffe\" { endpoint_spiffe_id = ... } or \"https_web\" {}",
                  fw.trust_domain);
    if (rc == 0) {
        nv = realloc(s->federates_with, (s->nfederates_with + 1) * sizeof *nv);
        if (nv == NULL) {
            rc = cerr(c, m->line, "out of memory");
        } else {
            s->federates_with = nv;
            nv[s->nfederates_with++] = fw;
            return 0;
        }
    }
    free(fw.bundle_endpoint_url);
    free(fw.endpoint_spiffe_id);
    return rc;
}

/* server { federation { } }; field is the first federation field of the server config. */
static int set_federation(cfgctx *c, const sg_hcl_node *n, void *field)
{
    sg_server_config *s =
        (sg_server_config *)(void *)((char *)field -
                                     offsetof(sg_server_config, fed_endpoint_enabled));
    bool have_endpoint = false;

    if (n->type != SG_HCL_OBJECT)
        return cerr(c, n->line, "federation must be a block { ... }");
    for (size_t i = 0; i < n->n; i++) {
        const sg_hcl_node *m = n->items[i];
        int rc;
        if (strcmp(m->key, "bundle_endpoint") == 0) {
            if (have_endpoint)
                return cerr(c, m->line, "duplicate key \"bundle_endpoint\" in federation {}");
            have_endpoint = true;
            rc = fed_bundle_endpoint(c, m, s);
        } else if (strcmp(m->key, "federates_with") == 0) {
            rc = fed_federates_with(c, m, s);
        } else {
            rc = cerr(c, m->line, "unknown key \"%.*s\" in federation {}", QUOTE_MAX, m->key);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static const keydef server_keys[] = {
    SK("bind_address", set_nonempty, bind_address),
    SK("bind_port", set_port, bind_port),
    SK("socket_path", set_nonempty, socket_path),
    SK("trust_domain", set_trust_domain, trust_domain),
    SK("data_dir", set_nonempty, data_dir),
    SK("log_level", set_log_level, log_level),
    SK("ca_key_type", set_key_type, ca_key_type),
    SK("ca_ttl", set_ttl, ca_ttl_s),
    SK("default_x509_svid_ttl", set_ttl, default_x509_svid_ttl_s),
    SK("agent_ttl", set_ttl, agent_ttl_s),
    SK("jwt_key_type", set_jwt_key_type, jwt_key_type),
    SK("default_jwt_svid_ttl", set_ttl, default_jwt_svid_ttl_s),
    SK("jwt_issuer", set_nonempty, jwt_issuer),
    SK("ca_subject", set_ca_subject, ca_subject_country),
    SK("federation", set_federation, fed_endpoint_enabled),
};

/* SPIRE server keys that change nothing sigil does yet. */
static const char *const server_ignored[] = {
    "log_format",     "log_file",       "audit_log_enabled", "profiling_enabled",
    "profiling_port", "profiling_freq", "profiling_names",   NULL,
};

static const keydef agent_keys[] = {
    AK("data_dir", set_nonempty, data_dir),
    AK("log_level", set_log_level, log_level),
    AK("server_address", set_nonempty, server_address),
    AK("server_port", set_port, server_port),
    AK("socket_path", set_nonempty, socket_path),
    AK("trust_bundle_path", set_nonempty, trust_bundle_path),
    AK("trust_bundle_format", set_bundle_format, trust_bundle_format),
    AK("trust_domain", set_trust_domain, trust_domain),
    AK("join_token", set_nonempty, join_token),
    AK("insecure_bootstrap", set_bool, insecure_bootstrap),
};

static const char *const agent_ignored[] = {
    "log_format",      "log_file", "profiling_enabled", "profiling_port", "profiling_freq",
    "profiling_names", NULL,
};

/* Top-level sections SPIRE allows that sigil accepts and ignores. */
static const char *const ignored_sections[] = {"health_checks", "telemetry", NULL};

/* ------------------------------------------------------------ plugins */

typedef struct plugin_def {
    const char *type; /* "DataStore" */
    const char *name; /* "sql" */
    const keydef *keys;
    size_t nkeys;
    /* Marks the plugin as present in the config struct. */
    void (*enable)(void *base);
} plugin_def;

static const keydef sql_keys[] = {
    SK("database_type", set_nonempty, db_type),
    SK("connection_string", set_nonempty, db_connection_string),
};
static const keydef server_disk_km_keys[] = {
    SK("keys_path", set_nonempty, keys_path),
};
static const keydef upstream_disk_keys[] = {
    SK("key_file_path", set_nonempty, upstream_key_file),
    SK("cert_file_path", set_nonempty, upstream_cert_file),
    SK("bundle_file_path", set_nonempty, upstream_bundle_file),
};
static const keydef agent_disk_km_keys[] = {
    AK("directory", set_nonempty, keys_directory),
};
static const keydef unix_keys[] = {
    AK("discover_workload_path", set_bool, discover_workload_path),
    AK("workload_size_limit", set_i64, workload_size_limit),
};

static void srv_nothing(void *base)
{
    (void)base;
}
static void srv_join_token(void *base)
{
    ((sg_server_config *)base)->join_token_enabled = true;
}
static void srv_km_disk(void *base)
{
    ((sg_server_config *)base)->keys_on_disk = true;
}
static void srv_km_memory(void *base)
{
    ((sg_server_config *)base)->keys_on_disk = false;
}
static void srv_upstream(void *base)
{
    ((sg_server_config *)base)->has_upstream = true;
}
static void agt_join_token(void *base)
{
    ((sg_agent_config *)base)->join_token_enabled = true;
}
static void agt_km_disk(void *base)
{
    ((sg_agent_config *)base)->keys_on_disk = true;
}
static void agt_km_memory(void *base)
{
    ((sg_agent_config *)base)->keys_on_disk = false;
}
static void agt_unix(void *base)
{
    ((sg_agent_config *)base)->unix_attestor_enabled = true;
}

static const plugin_def server_plugins[] = {
    {"DataStore", "sql", sql_keys, NKEYS(sql_keys), srv_nothing},
    {"KeyManager", "disk", server_disk_km_keys, NKEYS(server_disk_km_keys), srv_km_disk},
    {"KeyManager", "memory", NULL, 0, srv_km_memory},
    {"NodeAttestor", "join_token", NULL, 0, srv_join_token},
    {"UpstreamAuthority", "disk", upstream_disk_keys, NKEYS(upstream_disk_keys), srv_upstream},
};

static const plugin_def agent_plugins[] = {
    {"KeyManager", "disk", agent_disk_km_keys, NKEYS(agent_disk_km_keys), agt_km_disk},
    {"KeyManager", "memory", NULL, 0, agt_km_memory},
    {"NodeAttestor", "join_token", NULL, 0, agt_join_token},
    {"WorkloadAttestor", "unix", unix_keys, NKEYS(unix_keys), agt_unix},
};

/* How many plugins of each type a daemon allows (SPIRE's catalog constraints). */
typedef struct plugin_rule {
    const char *type;
    int min, max;
    const char *need; /* wording for the "missing" error */
} plugin_rule;

static const plugin_rule server_rules[] = {
    {"DataStore", 1, 1, "exactly one DataStore (\"sql\")"},
    {"KeyManager", 1, 1, "exactly one KeyManager (\"disk\" or \"memory\")"},
    {"NodeAttestor", 1, 64, "at least one NodeAttestor (\"join_token\")"},
    {"UpstreamAuthority", 0, 1, "at most one UpstreamAuthority (\"disk\")"},
};

static const plugin_rule agent_rules[] = {
    {"KeyManager", 1, 1, "exactly one KeyManager (\"disk\" or \"memory\")"},
    {"NodeAttestor", 1, 1, "exactly one NodeAttestor (\"join_token\")"},
    {"WorkloadAttestor", 1, 64, "at least one WorkloadAttestor (\"unix\")"},
};

typedef struct plugin_seen {
    int count[8];        /* per rule index */
    int line[8];         /* line of the first plugin of that type */
    int plugin_line[16]; /* per plugin_def index: line where configured, 0 if absent */
} plugin_seen;

/* Lists the names of every plugin of type into buf ("disk, memory"). */
static void names_of(const plugin_def *defs, size_t ndefs, const char *type, char *buf, size_t n)
{
    size_t o = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < ndefs && o < n; i++) {
        if (strcmp(defs[i].type, type) != 0)
            continue;
        o += (size_t)snprintf(buf + o, n - o, "%s%s", o > 0 ? ", " : "", defs[i].name);
    }
}

/* Lists the distinct plugin types into buf. */
static void types_of(const plugin_rule *rules, size_t nrules, char *buf, size_t n)
{
    size_t o = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < nrules && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%s", i > 0 ? ", " : "", rules[i].type);
}

/* One `Type "name" { plugin_data { } enabled = bool }` member. */
static int apply_plugin(cfgctx *c, const sg_hcl_node *m, const plugin_def *defs, size_t ndefs,
                        const plugin_rule *rules, size_t nrules, plugin_seen *seen, void *base)
{
    const sg_hcl_node *data = NULL;
    char where[160], list[160];
    bool enabled = true;
    size_t r, d;
    int rc;

    for (r = 0; r < nrules; r++)
        if (strcmp(m->key, rules[r].type) == 0)
            break;
    if (r == nrules) {
        types_of(rules, nrules, list, sizeof list);
        return cerr(c, m->line, "unknown plugin type \"%.*s\" (sigil has: %s)", QUOTE_MAX, m->key,
                    list);
    }
    if (m->nlabels != 1)
        return cerr(c, m->line, "%s needs exactly one plugin name, e.g. %s \"name\" { }", m->key,
                    m->key);
    for (d = 0; d < ndefs; d++)
        if (strcmp(defs[d].type, m->key) == 0 && strcmp(defs[d].name, m->labels[0]) == 0)
            break;
    if (d == ndefs) {
        names_of(defs, ndefs, m->key, list, sizeof list);
        return cerr(c, m->line, "unknown %s plugin \"%.*s\" (sigil has: %s)", m->key, QUOTE_MAX,
                    m->labels[0], list);
    }
    if (m->type != SG_HCL_OBJECT)
        return cerr(c, m->line, "%s \"%s\" must be a block { ... }", m->key, m->labels[0]);
    snprintf(where, sizeof where, "%s \"%s\"", m->key, m->labels[0]);
    for (size_t i = 0; i < m->n; i++) {
        const sg_hcl_node *k = m->items[i];

        if (strcmp(k->key, "plugin_data") == 0 && k->nlabels == 0) {
            if (data != NULL)
                return cerr(c, k->line, "duplicate plugin_data in %s (first on line %d)", where,
                            data->line);
            data = k;
        } else if (strcmp(k->key, "enabled") == 0 && k->nlabels == 0) {
            rc = set_bool(c, k, &enabled);
            if (rc < 0)
                return rc;
        } else if (strcmp(k->key, "plugin_cmd") == 0 || strcmp(k->key, "plugin_checksum") == 0) {
            return cerr(c, k->line, "%s in %s: external plugins are not supported", k->key, where);
        } else {
            return cerr(c, k->line, "unknown key \"%.*s\" in %s", QUOTE_MAX, k->key, where);
        }
    }
    if (!enabled)
        return 0;
    if (d < 16 && seen->plugin_line[d] != 0)
        return cerr(c, m->line, "%s is configured twice (first on line %d)", where,
                    seen->plugin_line[d]);
    if (d < 16)
        seen->plugin_line[d] = m->line;
    if (r < 8) {
        if (seen->count[r] == 0)
            seen->line[r] = m->line;
        seen->count[r]++;
        if (seen->count[r] > rules[r].max)
            return cerr(c, m->line, "%s: sigil allows %s (another is on line %d)", where,
                        rules[r].need, seen->line[r]);
    }
    if (data != NULL) {
        char dwhere[200];

        snprintf(dwhere, sizeof dwhere, "plugin_data of %s", where);
        rc = apply_keys(c, data, dwhere, defs[d].keys, defs[d].nkeys, NULL, base);
        if (rc < 0)
            return rc;
    }
    defs[d].enable(base);
    return 0;
}

static int apply_plugins(cfgctx *c, const sg_hcl_node *plugins, const plugin_def *defs,
                         size_t ndefs, const plugin_rule *rules, size_t nrules, plugin_seen *seen,
                         void *base)
{
    if (plugins->type != SG_HCL_OBJECT)
        return cerr(c, plugins->line, "plugins must be a block { ... }");
    if (plugins->nlabels > 0)
        return cerr(c, plugins->line, "plugins takes no label, found \"%.*s\"", QUOTE_MAX,
                    plugins->labels[0]);
    for (size_t i = 0; i < plugins->n; i++) {
        int rc = apply_plugin(c, plugins->items[i], defs, ndefs, rules, nrules, seen, base);

        if (rc < 0)
            return rc;
    }
    return 0;
}

static int check_plugin_counts(cfgctx *c, const plugin_rule *rules, size_t nrules,
                               const plugin_seen *seen, int plugins_line)
{
    for (size_t r = 0; r < nrules && r < 8; r++)
        if (seen->count[r] < rules[r].min)
            return cerr(c, plugins_line, "plugins { } needs %s", rules[r].need);
    return 0;
}

/* ------------------------------------------------------------ files */

static bool is_name_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

static bool is_name_char(char ch)
{
    return is_name_start(ch) || (ch >= '0' && ch <= '9');
}

/*
 * Replaces $VAR and ${VAR} from the environment (unset means empty), as
 * SPIRE's -expandEnv does. A '$' not followed by a name stays as is.
 */
static int expand_env(cfgctx *c, const char *in, size_t len, char **out, size_t *outlen)
{
    size_t cap = len + 1, o = 0;
    char *buf = malloc(cap);

    if (buf == NULL)
        return cerr(c, 0, "out of memory");
    for (size_t i = 0; i < len;) {
        const char *name = NULL;
        size_t nlen = 0, skip = 0;
        const char *val = NULL;
        size_t vlen;

        if (in[i] == '$' && i + 1 < len && in[i + 1] == '{') {
            size_t j = i + 2;

            while (j < len && is_name_char(in[j]))
                j++;
            if (j < len && in[j] == '}' && j > i + 2) {
                name = in + i + 2;
                nlen = j - i - 2;
                skip = j + 1 - i;
            }
        } else if (in[i] == '$' && i + 1 < len && is_name_start(in[i + 1])) {
            size_t j = i + 1;

            while (j < len && is_name_char(in[j]))
                j++;
            name = in + i + 1;
            nlen = j - i - 1;
            skip = j - i;
        }
        if (name == NULL) {
            val = in + i;
            vlen = 1;
            skip = 1;
        } else {
            char key[256];

            if (nlen >= sizeof key) {
                free(buf);
                return cerr(c, 0, "environment variable name \"%.32s...\" is too long", name);
            }
            memcpy(key, name, nlen);
            key[nlen] = '\0';
            val = getenv(key);
            if (val == NULL)
                val = "";
            vlen = strlen(val);
        }
        if (o + vlen + 1 > cap) {
            size_t ncap = (o + vlen + 1) * 2;
            char *nb;

            if (ncap > 2 * (size_t)SG_HCL_MAX_INPUT) {
                free(buf);
                return cerr(c, 0, "larger than %u bytes after expanding variables",
                            (unsigned)SG_HCL_MAX_INPUT);
            }
            nb = realloc(buf, ncap);
            if (nb == NULL) {
                free(buf);
                return cerr(c, 0, "out of memory");
            }
            buf = nb;
            cap = ncap;
        }
        memcpy(buf + o, val, vlen);
        o += vlen;
        i += skip;
    }
    buf[o] = '\0';
    *out = buf;
    *outlen = o;
    return 0;
}

/* Reads and parses path, optionally expanding the environment first. */
static int load_tree(cfgctx *c, const char *path, bool expand, sg_hcl_node **root)
{
    uint8_t *data = NULL;
    char *text = NULL;
    size_t len = 0, tlen = 0;
    sg_err e;
    int rc;

    if (path == NULL || *path == '\0')
        return sg_err_set(c->err, SG_ECONFIG, "no config file given");
    rc = sg_fs_read_file(path, SG_HCL_MAX_INPUT, &data, &len, &e);
    if (rc < 0)
        return sg_err_set(c->err, rc == SG_ETOOBIG ? SG_ETOOBIG : SG_ECONFIG,
                          "cannot read config: %s", e.msg);
    if (expand) {
        rc = expand_env(c, (const char *)data, len, &text, &tlen);
        free(data);
        if (rc < 0)
            return rc;
    } else {
        text = (char *)data;
        tlen = len;
    }
    rc = sg_hcl_parse(path, text, tlen, root, &e);
    free(text);
    if (rc < 0)
        return sg_err_set(c->err, SG_ECONFIG, "%s", e.msg);
    return 0;
}

/*
 * Walks the top level: exactly one `main_name { }` section, at most one
 * plugins { }, ignored sections with a warning, anything else an error.
 */
static int split_top(cfgctx *c, const sg_hcl_node *root, const char *main_name,
                     const sg_hcl_node **main_sec, const sg_hcl_node **plugins)
{
    *main_sec = NULL;
    *plugins = NULL;
    for (size_t i = 0; i < root->n; i++) {
        const sg_hcl_node *m = root->items[i];
        const sg_hcl_node **slot = NULL;
        bool ignored = false;

        if (strcmp(m->key, main_name) == 0)
            slot = main_sec;
        else if (strcmp(m->key, "plugins") == 0)
            slot = plugins;
        for (size_t j = 0; ignored_sections[j] != NULL; j++)
            if (strcmp(m->key, ignored_sections[j]) == 0)
                ignored = true;
        if (ignored) {
            sg_log_warn("%s:%d: section %s is not supported by sigil yet; ignored", c->file,
                        m->line, m->key);
            continue;
        }
        if (slot == NULL)
            return cerr(c, m->line, "unknown section \"%.*s\" (expected %s { } and plugins { })",
                        QUOTE_MAX, m->key, main_name);
        if (*slot != NULL)
            return cerr(c, m->line, "duplicate %s section (first on line %d)", m->key,
                        (*slot)->line);
        if (m->nlabels > 0)
            return cerr(c, m->line, "%s takes no label, found \"%.*s\"", m->key, QUOTE_MAX,
                        m->labels[0]);
        *slot = m;
    }
    if (*main_sec == NULL)
        return cerr(c, 0, "missing %s { } section", main_name);
    return 0;
}

/* Line of the key in block, or the block's own line when absent. */
static int line_of(const sg_hcl_node *block, const char *key)
{
    for (size_t i = 0; block != NULL && i < block->n; i++)
        if (strcmp(block->items[i]->key, key) == 0)
            return block->items[i]->line;
    return block != NULL ? block->line : 0;
}

static bool has_key(const sg_hcl_node *block, const char *key)
{
    for (size_t i = 0; block != NULL && i < block->n; i++)
        if (strcmp(block->items[i]->key, key) == 0)
            return true;
    return false;
}

/* Line of the plugin Type "name" in plugins, or the plugins line. */
static int plugin_line(const sg_hcl_node *plugins, const char *type, const char *name)
{
    for (size_t i = 0; plugins != NULL && i < plugins->n; i++) {
        const sg_hcl_node *m = plugins->items[i];

        if (strcmp(m->key, type) == 0 && m->nlabels == 1 && strcmp(m->labels[0], name) == 0)
            return m->line;
    }
    return plugins != NULL ? plugins->line : 0;
}

static int dup_default(char **field, const char *value)
{
    if (*field != NULL || value == NULL)
        return 0;
    *field = strdup(value);
    return *field == NULL ? SG_ENOMEM : 0;
}

/* ------------------------------------------------------------ server */

void sg_server_config_cleanup(sg_server_config *s)
{
    if (s == NULL)
        return;
    free(s->bind_address);
    free(s->socket_path);
    free(s->data_dir);
    free(s->ca_subject_country);
    free(s->ca_subject_organization);
    free(s->ca_subject_common_name);
    free(s->jwt_issuer);
    free(s->db_type);
    free(s->db_connection_string);
    free(s->keys_path);
    free(s->upstream_key_file);
    free(s->upstream_cert_file);
    free(s->upstream_bundle_file);
    free(s->fed_endpoint_address);
    free(s->fed_endpoint_cert_file);
    free(s->fed_endpoint_key_file);
    for (size_t i = 0; i < s->nfederates_with; i++) {
        free(s->federates_with[i].bundle_endpoint_url);
        free(s->federates_with[i].endpoint_spiffe_id);
    }
    free(s->federates_with);
    memset(s, 0, sizeof *s);
}

static int server_validate(cfgctx *c, sg_server_config *s, const sg_hcl_node *sec,
                           const sg_hcl_node *plugins)
{
    int pl;

    if (s->trust_domain[0] == '\0')
        return cerr(c, sec->line, "server { } needs trust_domain");
    if (s->data_dir == NULL)
        return cerr(c, sec->line, "server { } needs data_dir");
    if (s->default_x509_svid_ttl_s >= s->ca_ttl_s)
        return cerr(c, line_of(sec, "default_x509_svid_ttl"),
                    "default_x509_svid_ttl (%llds) must be shorter than ca_ttl (%llds)",
                    (long long)s->default_x509_svid_ttl_s, (long long)s->ca_ttl_s);
    if (s->agent_ttl_s >= s->ca_ttl_s)
        return cerr(c, line_of(sec, "agent_ttl"),
                    "agent_ttl (%llds) must be shorter than ca_ttl (%llds)",
                    (long long)s->agent_ttl_s, (long long)s->ca_ttl_s);
    /* JWT signing keys live as long as CA certificates (ca_ttl). The default
     * TTL is only checked when set: tokens never outlive their key anyway. */
    if (s->default_jwt_svid_ttl_s >= s->ca_ttl_s && has_key(sec, "default_jwt_svid_ttl"))
        return cerr(c, line_of(sec, "default_jwt_svid_ttl"),
                    "default_jwt_svid_ttl (%llds) must be shorter than ca_ttl (%llds)",
                    (long long)s->default_jwt_svid_ttl_s, (long long)s->ca_ttl_s);
    if (s->jwt_issuer != NULL) {
        size_t n = strlen(s->jwt_issuer);
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)s->jwt_issuer[i] < 0x20 || s->jwt_issuer[i] == 0x7f)
                return cerr(c, line_of(sec, "jwt_issuer"),
                            "jwt_issuer \"%.*s\" contains a control character", QUOTE_MAX,
                            s->jwt_issuer);
        if (n > 1024)
            return cerr(c, line_of(sec, "jwt_issuer"),
                        "jwt_issuer is too long: %zu bytes (at most 1024)", n);
    }
    if (!s->jwt_key_type_set) {
        /* As SPIRE: the JWT key type defaults to ca_key_type. */
        sg_err e;
        if (sg_jwt_key_type_parse(sg_key_type_name(s->ca_key_type), &s->jwt_key_type, &s->jwt_alg,
                                  &e) < 0)
            return cerr(c, line_of(sec, "ca_key_type"), "ca_key_type: %s", e.msg);
    }
    pl = plugin_line(plugins, "DataStore", "sql");
    if (s->db_type == NULL)
        return cerr(c, pl, "DataStore \"sql\" needs database_type (\"sqlite3\")");
    if (strcmp(s->db_type, "postgres") == 0 || strcmp(s->db_type, "mysql") == 0)
        return cerr(c, pl,
                    "DataStore \"sql\" database_type \"%s\" is not supported yet (sigil has: "
                    "sqlite3)",
                    s->db_type);
    if (strcmp(s->db_type, "sqlite3") != 0)
        return cerr(c, pl,
                    "DataStore \"sql\" database_type \"%.*s\" is unknown (sigil has: sqlite3)",
                    QUOTE_MAX, s->db_type);
    if (s->db_connection_string == NULL)
        return cerr(c, pl, "DataStore \"sql\" needs connection_string");
    if (s->keys_on_disk && s->keys_path == NULL)
        return cerr(c, plugin_line(plugins, "KeyManager", "disk"),
                    "KeyManager \"disk\" needs keys_path");
    if (s->has_upstream) {
        pl = plugin_line(plugins, "UpstreamAuthority", "disk");
        if (s->upstream_key_file == NULL)
            return cerr(c, pl, "UpstreamAuthority \"disk\" needs key_file_path");
        if (s->upstream_cert_file == NULL)
            return cerr(c, pl, "UpstreamAuthority \"disk\" needs cert_file_path");
    }
    return 0;
}

/*
 * Replaces (or adds) each override's key in the main section with a string
 * value, so flags pass through the same setters and checks as the file.
 * The tree is ours: the const in split_top's result is only for readers.
 */
static int apply_overrides(cfgctx *c, const sg_hcl_node *sec_const, const sg_config_override *ov,
                           size_t n)
{
    sg_hcl_node *sec = (sg_hcl_node *)(uintptr_t)sec_const;

    for (size_t i = 0; i < n; i++) {
        sg_hcl_node *m = NULL;
        char *v = strdup(ov[i].value);

        if (v == NULL)
            return cerr(c, 0, "out of memory");
        for (size_t j = 0; j < sec->n && m == NULL; j++)
            if (sec->items[j]->key != NULL && strcmp(sec->items[j]->key, ov[i].key) == 0)
                m = sec->items[j];
        if (m == NULL) {
            sg_hcl_node **items = realloc(sec->items, (sec->n + 1) * sizeof *items);
            if (items != NULL)
                sec->items = items;
            m = items != NULL ? calloc(1, sizeof *m) : NULL;
            if (m != NULL)
                m->key = strdup(ov[i].key);
            if (m == NULL || m->key == NULL) {
                free(m);
                free(v);
                return cerr(c, 0, "out of memory");
            }
            sec->items[sec->n++] = m;
        } else if (m->type == SG_HCL_LIST || m->type == SG_HCL_OBJECT) {
            free(v);
            return cerr(c, m->line, "%s cannot be overridden from the command line", m->key);
        }
        free(m->str);
        m->type = SG_HCL_STRING;
        m->str = v;
        m->len = strlen(v);
        m->is_int = false;
        m->line = 0; /* errors then name the file only: the value came from a flag */
    }
    return 0;
}

int sg_server_config_load(const char *path, bool expand_env_vars, sg_server_config *out,
                          sg_err *err)
{
    return sg_server_config_load_with(path, expand_env_vars, NULL, 0, out, err);
}

int sg_server_config_load_with(const char *path, bool expand_env_vars,
                               const sg_config_override *overrides, size_t noverrides,
                               sg_server_config *out, sg_err *err)
{
    cfgctx c = {path, err};
    sg_server_config s;
    sg_hcl_node *root = NULL;
    const sg_hcl_node *sec, *plugins;
    plugin_seen seen;
    int rc;

    memset(&s, 0, sizeof s);
    memset(&seen, 0, sizeof seen);
    s.bind_port = 8081;
    s.log_level = SG_LOG_INFO;
    s.ca_key_type = SG_KEY_EC_P256;
    s.ca_ttl_s = 24 * 3600;
    s.default_x509_svid_ttl_s = 3600;
    s.default_jwt_svid_ttl_s = 300;
    s.fed_endpoint_port = 443;
    s.fed_endpoint_refresh_hint_s = 300;
    /* Set before parsing so an explicit `organization = []` can clear it. */
    s.ca_subject_organization = strdup("SPIFFE");
    if (s.ca_subject_organization == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    rc = load_tree(&c, path, expand_env_vars, &root);
    if (rc < 0) {
        sg_server_config_cleanup(&s);
        return rc;
    }
    rc = split_top(&c, root, "server", &sec, &plugins);
    if (rc == 0)
        rc = apply_overrides(&c, sec, overrides, noverrides);
    if (rc == 0)
        rc = apply_keys(&c, sec, "server {}", server_keys, NKEYS(server_keys), server_ignored, &s);
    if (rc == 0 && plugins != NULL)
        rc = apply_plugins(&c, plugins, server_plugins, NKEYS(server_plugins), server_rules,
                           NKEYS(server_rules), &seen, &s);
    if (rc == 0)
        rc = check_plugin_counts(&c, server_rules, NKEYS(server_rules), &seen,
                                 plugins != NULL ? plugins->line : 0);
    if (rc == 0)
        rc = server_validate(&c, &s, sec, plugins);
    if (rc == 0 && (dup_default(&s.fed_endpoint_address, "0.0.0.0") < 0 ||
                    dup_default(&s.bind_address, "0.0.0.0") < 0 ||
                    dup_default(&s.socket_path, "/tmp/spire-server/private/api.sock") < 0))
        rc = cerr(&c, 0, "out of memory");
    sg_hcl_free(root);
    if (rc < 0) {
        sg_server_config_cleanup(&s);
        return rc;
    }
    *out = s;
    return 0;
}

/* ------------------------------------------------------------ agent */

void sg_agent_config_cleanup(sg_agent_config *a)
{
    if (a == NULL)
        return;
    free(a->data_dir);
    free(a->server_address);
    free(a->socket_path);
    free(a->trust_bundle_path);
    free(a->trust_bundle_format);
    free(a->join_token);
    free(a->keys_directory);
    memset(a, 0, sizeof *a);
}

static int agent_validate(cfgctx *c, sg_agent_config *a, const sg_hcl_node *sec)
{
    if (a->data_dir == NULL)
        return cerr(c, sec->line, "agent { } needs data_dir");
    if (a->server_address == NULL)
        return cerr(c, sec->line, "agent { } needs server_address");
    if (a->trust_domain[0] == '\0')
        return cerr(c, sec->line, "agent { } needs trust_domain");
    if (a->trust_bundle_path == NULL && !a->insecure_bootstrap)
        return cerr(c, sec->line,
                    "agent { } needs trust_bundle_path (or insecure_bootstrap = true)");
    return 0;
}

int sg_agent_config_load(const char *path, bool expand_env_vars, sg_agent_config *out, sg_err *err)
{
    return sg_agent_config_load_with(path, expand_env_vars, NULL, 0, out, err);
}

int sg_agent_config_load_with(const char *path, bool expand_env_vars,
                              const sg_config_override *overrides, size_t noverrides,
                              sg_agent_config *out, sg_err *err)
{
    cfgctx c = {path, err};
    sg_agent_config a;
    sg_hcl_node *root = NULL;
    const sg_hcl_node *sec, *plugins;
    plugin_seen seen;
    int rc;

    memset(&a, 0, sizeof a);
    memset(&seen, 0, sizeof seen);
    a.server_port = 8081;
    a.log_level = SG_LOG_INFO;
    rc = load_tree(&c, path, expand_env_vars, &root);
    if (rc < 0)
        return rc;
    rc = split_top(&c, root, "agent", &sec, &plugins);
    if (rc == 0)
        rc = apply_overrides(&c, sec, overrides, noverrides);
    if (rc == 0)
        rc = apply_keys(&c, sec, "agent {}", agent_keys, NKEYS(agent_keys), agent_ignored, &a);
    if (rc == 0 && plugins != NULL)
        rc = apply_plugins(&c, plugins, agent_plugins, NKEYS(agent_plugins), agent_rules,
                           NKEYS(agent_rules), &seen, &a);
    if (rc == 0)
        rc = check_plugin_counts(&c, agent_rules, NKEYS(agent_rules), &seen,
                                 plugins != NULL ? plugins->line : 0);
    if (rc == 0)
        rc = agent_validate(&c, &a, sec);
    if (rc == 0 && (dup_default(&a.socket_path, "/tmp/spire-agent/public/api.sock") < 0 ||
                    dup_default(&a.trust_bundle_format, "pem") < 0 ||
                    dup_default(&a.keys_directory, a.data_dir) < 0))
        rc = cerr(&c, 0, "out of memory");
    sg_hcl_free(root);
    if (rc < 0) {
        sg_agent_config_cleanup(&a);
        return rc;
    }
    *out = a;
    return 0;
}
