/*
 * sigil-server entry point: `run` and `validate` are handled here, every
 * other subcommand goes to the admin CLI. Process-wide setup (signals,
 * OpenSSL, gRPC) happens only in this file.
 */
#include "common/config.h"
#include "common/err.h"
#include "common/log.h"
#include "common/spiffeid.h"
#include "server/cli.h"
#include "server/server.h"

#include <grpc/grpc.h>
#include <grpc/support/log.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_CONFIG "conf/server/server.conf"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: sigil-server <command> [flags]\n"
            "\n"
            "Commands:\n"
            "  run        Runs the server\n"
            "             -config FILE      config file (default %s)\n"
            "             -dataDir DIR      overrides server.data_dir\n"
            "             -expandEnv        expand $VARS in the config file\n"
            "             -logLevel LEVEL   DEBUG, INFO, WARN or ERROR\n"
            "             -trustDomain TD   overrides server.trust_domain\n"
            "  validate   Validates a config file (same flags as run)\n"
            "  entry      create | show | update | delete | count\n"
            "  token      generate\n"
            "  agent      list | show | evict | ban | count\n"
            "  bundle     show | set | list | delete\n"
            "  federation create | update | list | show | delete | refresh\n"
            "  localauthority x509|jwt show | prepare | activate | taint | revoke\n"
            "  upstreamauthority taint | revoke\n"
            "  x509       mint\n"
            "  jwt        mint\n"
            "  healthcheck\n"
            "Run \"sigil-server <command>\" to list its subcommands and \"-h\" after one for its "
            "flags.\n",
            DEFAULT_CONFIG);
}

/*
 * Routes gRPC core's own log lines through sg_log. Its per-handshake
 * "No match found for server name" error is noise for SPIFFE TLS, where
 * the server is identified by URI SAN, so it is demoted to debug.
 */
static void grpc_log_route(gpr_log_func_args *a)
{
    const char *m = a->message ? a->message : "";
    bool noise = strstr(m, "No match found for server name") != NULL;
    sg_log_level lvl = SG_LOG_DEBUG;
    if (!noise && a->severity == GPR_LOG_SEVERITY_ERROR)
        lvl = SG_LOG_WARN;
    sg_log(lvl, "grpc: %s", m);
}

typedef struct run_flags {
    const char *config;
    const char *trust_domain;
    const char *log_level;
    const char *data_dir;
    bool expand_env;
} run_flags;

/* Parses a Go-style boolean flag value. */
static int parse_bool(const char *v, bool *out)
{
    if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcmp(v, "t") == 0 ||
        strcmp(v, "TRUE") == 0 || strcmp(v, "True") == 0) {
        *out = true;
        return 0;
    }
    if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0 || strcmp(v, "f") == 0 ||
        strcmp(v, "FALSE") == 0 || strcmp(v, "False") == 0) {
        *out = false;
        return 0;
    }
    return SG_EINVAL;
}

/*
 * Parses flags in Go's flag style (-f v, -f=v, --f, --f=v; booleans take
 * no separate value) for cmd. allow_run enables the run-only flags.
 */
static int parse_flags(const char *cmd, int argc, char **argv, bool allow_run, run_flags *f)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == 0) {
            fprintf(stderr, "%s: unexpected argument %s\n", cmd, a);
            return SG_EINVAL;
        }
        const char *name = a + 1;
        if (name[0] == '-')
            name++;
        if (strcmp(name, "h") == 0 || strcmp(name, "help") == 0) {
            usage(stdout);
            exit(0);
        }
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const char *val = eq ? eq + 1 : NULL;
#define IS(s) (nlen == strlen(s) && strncmp(name, (s), nlen) == 0)
        if (IS("expandEnv")) {
            bool b = true;
            if (val && parse_bool(val, &b) < 0) {
                fprintf(stderr, "invalid boolean value \"%s\" for flag -expandEnv\n", val);
                return SG_EINVAL;
            }
            f->expand_env = b;
            continue;
        }
        const char **slot = NULL;
        if (IS("config"))
            slot = &f->config;
        else if (allow_run && IS("trustDomain"))
            slot = &f->trust_domain;
        else if (allow_run && IS("logLevel"))
            slot = &f->log_level;
        else if (allow_run && IS("dataDir"))
            slot = &f->data_dir;
#undef IS
        if (!slot) {
            fprintf(stderr, "flag provided but not defined: -%.*s\n", (int)nlen, name);
            return SG_EINVAL;
        }
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "flag needs an argument: -%.*s\n", (int)nlen, name);
                return SG_EINVAL;
            }
            val = argv[++i];
        }
        *slot = val;
    }
    return 0;
}

/* Loads the config with the command-line overrides applied before it is checked. */
static int load_config(const run_flags *f, sg_server_config *cfg, sg_err *err)
{
    const char *path = f->config ? f->config : DEFAULT_CONFIG;
    sg_config_override ov[3];
    size_t n = 0;

    if (f->trust_domain)
        ov[n++] = (sg_config_override){"trust_domain", f->trust_domain};
    if (f->log_level)
        ov[n++] = (sg_config_override){"log_level", f->log_level};
    if (f->data_dir)
        ov[n++] = (sg_config_override){"data_dir", f->data_dir};
    return sg_server_config_load_with(path, f->expand_env, ov, n, cfg, err);
}

static int cmd_validate(int argc, char **argv)
{
    run_flags f = {0};
    if (parse_flags("validate", argc, argv, true, &f) < 0) {
        usage(stderr);
        return 1;
    }
    sg_server_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    sg_err err;
    sg_err_clear(&err);
    int rc = load_config(&f, &cfg, &err);
    sg_server_config_cleanup(&cfg);
    if (rc < 0) {
        fprintf(stderr, "Configuration is invalid: %s\n", err.msg);
        return 1;
    }
    printf("Configuration is valid.\n");
    return 0;
}

static int cmd_run(int argc, char **argv)
{
    run_flags f = {0};
    if (parse_flags("run", argc, argv, true, &f) < 0) {
        usage(stderr);
        return 1;
    }
    sg_server_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    sg_err err;
    sg_err_clear(&err);
    if (load_config(&f, &cfg, &err) < 0) {
        fprintf(stderr, "sigil-server: %s\n", err.msg);
        sg_server_config_cleanup(&cfg);
        return 1;
    }
    sg_log_set_level(cfg.log_level);
    gpr_set_log_function(grpc_log_route);

    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
    grpc_init();
    sg_server *s = NULL;
    int rc = sg_server_new(&s, &cfg, &err);
    if (rc == 0)
        rc = sg_server_run(s, &err);
    if (rc < 0)
        sg_log_error("sigil-server failed: %s", err.msg);
    sg_server_free(s);
    grpc_shutdown_blocking();
    sg_server_config_cleanup(&cfg);
    return rc < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
    /* SIGTERM/SIGINT are taken with sigwait in sg_server_run; block them
     * before any thread exists so every thread inherits the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    sg_log_set_component("server");

    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "run") == 0)
        return cmd_run(argc - 2, argv + 2);
    if (strcmp(cmd, "validate") == 0)
        return cmd_validate(argc - 2, argv + 2);
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0 ||
        strcmp(cmd, "-help") == 0) {
        usage(stdout);
        return 0;
    }
    /* The CLI runs in this process too; it needs no blocked signals. */
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    if (cmd[0] == '-') {
        fprintf(stderr, "sigil-server: unknown command %s\n", cmd);
        usage(stderr);
        return 1;
    }
    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
    grpc_init();
    int rc = sg_server_cli_main(argc, argv);
    grpc_shutdown_blocking();
    return rc;
}
