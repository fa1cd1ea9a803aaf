/*
 * sigil-agent entry point: `run` starts the daemon, `validate` checks a
 * config, everything else is the CLI (agent/cli.c). Process-wide setup
 * (gRPC, file-descriptor limit, thread-pool size, SIGPIPE) happens here only.
 */
#include "agent/agent.h"
#include "agent/cli.h"
#include "common/config.h"
#include "common/err.h"
#include "common/log.h"
#include "common/spiffeid.h"

#include <grpc/grpc.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define DEFAULT_CONFIG "./conf/agent/agent.conf"

typedef struct run_flags {
    const char *config;
    const char *join_token;
    const char *trust_domain;
    const char *log_level;
    const char *socket_path;
    const char *server_address;
    const char *server_port;
    const char *data_dir;
    bool expand_env;
} run_flags;

static void usage(FILE *f)
{
    fprintf(f, "Usage: sigil-agent <command> [flags]\n"
               "\n"
               "Commands:\n"
               "  run        Runs the agent\n"
               "             -config FILE (default " DEFAULT_CONFIG ") -joinToken T\n"
               "             -trustDomain TD -logLevel LEVEL -expandEnv -socketPath P\n"
               "             -serverAddress A -serverPort N -dataDir D\n"
               "  validate   Validates a configuration file: -config FILE [-expandEnv]\n"
               "  api        Workload API client: api fetch x509|jwt, api validate jwt, api watch\n"
               "  healthcheck  Checks that the agent is up and ready\n");
}

/* Go-style flags as SPIRE's: "-name value", "-name=value", with one or two dashes. */
static int parse_flags(int argc, char **argv, run_flags *f, bool allow_run_flags)
{
    static const struct {
        const char *name;
        size_t off;
        bool run_only;
    } table[] = {
        {"config", offsetof(run_flags, config), false},
        {"joinToken", offsetof(run_flags, join_token), true},
        {"trustDomain", offsetof(run_flags, trust_domain), true},
        {"logLevel", offsetof(run_flags, log_level), true},
        {"socketPath", offsetof(run_flags, socket_path), true},
        {"serverAddress", offsetof(run_flags, server_address), true},
        {"serverPort", offsetof(run_flags, server_port), true},
        {"dataDir", offsetof(run_flags, data_dir), true},
    };
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (arg[0] != '-' || arg[1] == '\0') {
            fprintf(stderr, "sigil-agent: unexpected argument \"%s\"\n", arg);
            return -1;
        }
        const char *name = arg + (arg[1] == '-' ? 2 : 1);
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        if (nlen == 9 && strncmp(name, "expandEnv", 9) == 0) {
            if (eq == NULL || strcmp(eq + 1, "true") == 0 || strcmp(eq + 1, "1") == 0) {
                f->expand_env = true;
            } else if (strcmp(eq + 1, "false") == 0 || strcmp(eq + 1, "0") == 0) {
                f->expand_env = false;
            } else {
                fprintf(stderr, "sigil-agent: -expandEnv: invalid boolean \"%s\"\n", eq + 1);
                return -1;
            }
            continue;
        }
        size_t k;
        for (k = 0; k < sizeof(table) / sizeof(table[0]); k++)
            if (strlen(table[k].name) == nlen && strncmp(table[k].name, name, nlen) == 0)
                break;
        if (k == sizeof(table) / sizeof(table[0]) || (table[k].run_only && !allow_run_flags)) {
            fprintf(stderr, "sigil-agent: flag provided but not defined: -%.*s\n", (int)nlen, name);
            return -1;
        }
        const char *val;
        if (eq != NULL) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            fprintf(stderr, "sigil-agent: flag needs an argument: -%s\n", table[k].name);
            return -1;
        }
        *(const char **)((char *)f + table[k].off) = val;
    }
    return 0;
}

/* Flags override the config file, as in SPIRE. */
/* Loads the config with the command-line overrides applied before it is checked. */
static int load_config(const run_flags *f, sg_agent_config *cfg, sg_err *err)
{
    sg_config_override ov[6];
    size_t n = 0;

    if (f->trust_domain != NULL)
        ov[n++] = (sg_config_override){"trust_domain", f->trust_domain};
    if (f->log_level != NULL)
        ov[n++] = (sg_config_override){"log_level", f->log_level};
    if (f->server_port != NULL)
        ov[n++] = (sg_config_override){"server_port", f->server_port};
    if (f->socket_path != NULL)
        ov[n++] = (sg_config_override){"socket_path", f->socket_path};
    if (f->server_address != NULL)
        ov[n++] = (sg_config_override){"server_address", f->server_address};
    if (f->data_dir != NULL)
        ov[n++] = (sg_config_override){"data_dir", f->data_dir};
    if (f->socket_path != NULL && f->socket_path[0] != '/')
        return sg_err_set(err, SG_ECONFIG, "-socketPath must be an absolute path, got \"%.200s\"",
                          f->socket_path);
    return sg_agent_config_load_with(f->config, f->expand_env, ov, n, cfg, err);
}

/* A thousand Workload API clients need a thousand descriptors. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            sg_log_warn("cannot raise the open file limit");
    }
}

static int cmd_validate(int argc, char **argv)
{
    run_flags f = {.config = DEFAULT_CONFIG};
    if (parse_flags(argc, argv, &f, false) != 0)
        return 1;
    sg_agent_config cfg;
    sg_err err = {0};
    if (sg_agent_config_load(f.config, f.expand_env, &cfg, &err) != 0) {
        fprintf(stderr, "sigil-agent: %s\n", err.msg);
        return 1;
    }
    int rc = 0;
    if (!cfg.unix_attestor_enabled) {
        fprintf(stderr,
                "sigil-agent: %s: at least one WorkloadAttestor plugin must be "
                "configured\n",
                f.config);
        rc = 1;
    } else {
        printf("Agent configuration file is valid.\n");
    }
    sg_agent_config_cleanup(&cfg);
    return rc;
}

static int cmd_run(int argc, char **argv)
{
    run_flags f = {.config = DEFAULT_CONFIG};
    if (parse_flags(argc, argv, &f, true) != 0)
        return 1;
    sg_log_set_component("agent");
    sg_agent_config cfg;
    sg_err err = {0};
    if (load_config(&f, &cfg, &err) != 0) {
        fprintf(stderr, "sigil-agent: %s\n", err.msg);
        return 1;
    }
    sg_log_set_level(cfg.log_level);
    raise_nofile();
    /* Attestation, key generation and node calls share libuv's pool; 4 threads is tight. */
    setenv("UV_THREADPOOL_SIZE", "8", 0);
    signal(SIGPIPE, SIG_IGN);

    grpc_init();
    sg_agent *agent = NULL;
    int rc = sg_agent_new(&agent, &cfg, f.join_token, &err);
    if (rc == 0) {
        rc = sg_agent_run(agent, &err);
        if (rc == 1) {
            /* Work still blocked in the thread pool: leave without tearing it down. */
            fflush(NULL);
            _exit(0);
        }
    }
    if (rc < 0)
        sg_log_error("%s", err.msg);
    sg_agent_free(agent);
    grpc_shutdown_blocking();
    sg_agent_config_cleanup(&cfg);
    return rc < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (strcmp(argv[1], "run") == 0)
        return cmd_run(argc - 2, argv + 2);
    if (strcmp(argv[1], "validate") == 0)
        return cmd_validate(argc - 2, argv + 2);
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    return sg_agent_cli_main(argc, argv);
}
