/*
 * sigil-server and sigil-agent configuration read from SPIRE-format HCL
 * files (same sections and key names). Runtime code sees only these typed
 * structs, never the HCL tree. Unknown keys and plugins are errors naming
 * the key and its line; SPIRE keys sigil does not implement yet are
 * accepted with a warning only where listed in config.c.
 */
#ifndef SG_COMMON_CONFIG_H
#define SG_COMMON_CONFIG_H

#include "common/err.h"
#include "common/jwt.h"
#include "common/key.h"
#include "common/log.h"
#include "common/spiffeid.h"

#include <stdbool.h>
#include <stdint.h>

/* server { federation { federates_with "<td>" { } } }: one relationship from the config. */
typedef struct sg_config_federates_with {
    char trust_domain[SG_TRUST_DOMAIN_MAX + 1]; /* the name, without spiffe:// */
    char *bundle_endpoint_url;                  /* https://... */
    bool https_web;                             /* bundle_endpoint_profile "https_web" */
    char *endpoint_spiffe_id;                   /* "https_spiffe" { endpoint_spiffe_id } */
} sg_config_federates_with;

/* Every string below is heap-owned by the struct; free with the matching cleanup. */
typedef struct sg_server_config {
    /* server { } */
    char *bind_address;                         /* default "0.0.0.0" */
    int bind_port;                              /* default 8081 */
    char *socket_path;                          /* default "/tmp/spire-server/private/api.sock" */
    char trust_domain[SG_TRUST_DOMAIN_MAX + 1]; /* required */
    char *data_dir;                             /* required */
    sg_log_level log_level;                     /* default INFO */
    sg_key_type ca_key_type;                    /* default ec-p256 */
    int64_t ca_ttl_s;                           /* default 24h */
    int64_t default_x509_svid_ttl_s;            /* default 1h */
    int64_t agent_ttl_s;                        /* 0 = default: default_x509_svid_ttl */
    char *ca_subject_country;                   /* ca_subject { country = ["US"] }, may be NULL */
    char *ca_subject_organization;              /* default "SPIFFE" */
    char *ca_subject_common_name;               /* may be NULL */
    sg_key_type jwt_key_type;                   /* jwt_key_type; default: ca_key_type's */
    sg_jwt_alg jwt_alg;                         /* the alg jwt_key_type signs with */
    bool jwt_key_type_set;
    int64_t default_jwt_svid_ttl_s; /* default 5m */
    char *jwt_issuer;               /* iss claim of JWT-SVIDs; may be NULL */
    /* plugins { DataStore "sql" } */
    char *db_type;              /* "sqlite3" */
    char *db_connection_string; /* path of the SQLite file */
    /* plugins { NodeAttestor "join_token" } */
    bool join_token_enabled;
    /* plugins { KeyManager "disk" | "memory" } */
    bool keys_on_disk; /* true for "disk" */
    char *keys_path;   /* KeyManager "disk" keys_path */
    /* plugins { UpstreamAuthority "disk" } */
    bool has_upstream;
    char *upstream_key_file;
    char *upstream_cert_file;
    char *upstream_bundle_file; /* may be NULL: cert_file's chain is used */
    /* server { federation { bundle_endpoint { } federates_with "td" { } } } */
    bool fed_endpoint_enabled;           /* bundle_endpoint { } present */
    char *fed_endpoint_address;          /* default "0.0.0.0" */
    int fed_endpoint_port;               /* default 443 */
    int64_t fed_endpoint_refresh_hint_s; /* default 300 */
    bool fed_endpoint_https_web;         /* profile "https_web"; default https_spiffe */
    char *fed_endpoint_cert_file;        /* https_web serving_cert_file { cert_file_path } */
    char *fed_endpoint_key_file;         /* https_web serving_cert_file { key_file_path } */
    sg_config_federates_with *federates_with;
    size_t nfederates_with;
} sg_server_config;

typedef struct sg_agent_config {
    /* agent { } */
    char *data_dir; /* required */
    sg_log_level log_level;
    char *server_address;      /* required */
    int server_port;           /* default 8081 */
    char *socket_path;         /* default "/tmp/spire-agent/public/api.sock" */
    char *trust_bundle_path;   /* required unless insecure_bootstrap */
    char *trust_bundle_format; /* "pem" (default) or "spiffe" */
    char trust_domain[SG_TRUST_DOMAIN_MAX + 1];
    char *join_token; /* may be NULL */
    bool insecure_bootstrap;
    /* plugins { NodeAttestor "join_token" } */
    bool join_token_enabled;
    /* plugins { KeyManager "disk" { directory } | "memory" } */
    bool keys_on_disk;
    char *keys_directory; /* defaults to data_dir */
    /* plugins { WorkloadAttestor "unix" } */
    bool unix_attestor_enabled;
    bool discover_workload_path;
    int64_t
        workload_size_limit; /* bytes; 0 = no hashing limit given (SPIRE default 0 = unlimited) */
} sg_agent_config;

/*
 * A command-line value that replaces key in the main section (server { }
 * or agent { }) before the config is checked, as SPIRE applies its flags:
 * {"log_level", "WARN"} for -logLevel WARN. Borrowed for the load call.
 */
typedef struct sg_config_override {
    const char *key;
    const char *value;
} sg_config_override;

/*
 * Reads and validates the server config at path. With expand_env, $VAR and
 * ${VAR} are replaced from the environment before parsing. Errors name the
 * file, line and key ("server.conf:12: unknown key \"bind_prot\" in server").
 */
int sg_server_config_load(const char *path, bool expand_env, sg_server_config *out, sg_err *err);
/* Same, with overrides[0..n) applied to server { } before checking. */
int sg_server_config_load_with(const char *path, bool expand_env,
                               const sg_config_override *overrides, size_t n, sg_server_config *out,
                               sg_err *err);
void sg_server_config_cleanup(sg_server_config *c);

/* Same for the agent config. */
int sg_agent_config_load(const char *path, bool expand_env, sg_agent_config *out, sg_err *err);
/* Same, with overrides[0..n) applied to agent { } before checking. */
int sg_agent_config_load_with(const char *path, bool expand_env,
                              const sg_config_override *overrides, size_t n, sg_agent_config *out,
                              sg_err *err);
void sg_agent_config_cleanup(sg_agent_config *c);

#endif
