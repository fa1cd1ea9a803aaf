/*
 * sigil-server CLI: flag parsing (Go flag syntax), command dispatch and the
 * errors a user sees before any server is reached.
 */
#include "server/cli.h"

#include "test/runner.h"

#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>

static char out_buf[8192];
static char err_buf[8192];

static void slurp(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    size_t n = 0;

    if (f != NULL) {
        n = fread(buf, 1, len - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
}

/* Runs the CLI with argv (NULL-terminated after the program name), capturing output. */
static int run_cli(const char *const *args)
{
    char *argv[64];
    int argc = 0, rc, o, e, so, se;
    char op[300], ep[300];
    const char *dir = sg_test_tmpdir();

    argv[argc++] = "sigil-server";
    for (; *args != NULL && argc < 63; args++)
        argv[argc++] = (char *)(uintptr_t)*args;
    argv[argc] = NULL;
    snprintf(op, sizeof op, "%s/out", dir);
    snprintf(ep, sizeof ep, "%s/err", dir);
    fflush(stdout);
    fflush(stderr);
    so = dup(1);
    se = dup(2);
    o = open(op, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    e = open(ep, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(o, 1);
    dup2(e, 2);
    rc = sg_server_cli_main(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(o);
    close(e);
    close(so);
    close(se);
    slurp(op, out_buf, sizeof out_buf);
    slurp(ep, err_buf, sizeof err_buf);
    return rc;
}

#define HAS(buf, s)                                                                                \
    do {                                                                                           \
        if (strstr((buf), (s)) == NULL)                                                            \
            SG__FAIL("\"%s\" not in output: %s", (s), (buf));                                      \
    } while (0)

#define RUN(...) run_cli((const char *const[]){__VA_ARGS__, NULL})

TEST(cli_unknown_flag_is_named)
{
    ASSERT_EQ(RUN("entry", "create", "-nosuchflag", "x"), 1);
    HAS(err_buf, "flag provided but not defined: -nosuchflag");
    HAS(err_buf, "Usage of entry create:");
    HAS(err_buf, "-spiffeID string");
    /* A flag of another subcommand is unknown here too. */
    ASSERT_EQ(RUN("agent", "list", "-format", "pem"), 1);
    HAS(err_buf, "flag provided but not defined: -format");
}

TEST(cli_flag_needs_argument)
{
    ASSERT_EQ(RUN("entry", "create", "-spiffeID"), 1);
    HAS(err_buf, "flag needs an argument: -spiffeID");
    ASSERT_EQ(RUN("entry", "show", "-selector", "unix:uid:0", "stray"), 1);
    HAS(err_buf, "unexpected argument \"stray\"");
}

TEST(cli_unknown_command_and_subcommand)
{
    ASSERT_EQ(RUN("entry", "frobnicate"), 1);
    HAS(err_buf, "unknown subcommand \"entry frobnicate\"");
    HAS(err_buf, "entry create");
    ASSERT_EQ(RUN("nosuchcommand"), 1);
    HAS(err_buf, "unknown command \"nosuchcommand\"");
    ASSERT_EQ(RUN("entry"), 1);
    HAS(err_buf, "subcommand is required");
}

TEST(cli_help_exits_zero)
{
    ASSERT_EQ(RUN("token", "generate", "-h"), 0);
    HAS(err_buf, "Usage of token generate:");
    HAS(err_buf, "-ttl string");
    HAS(err_buf, "(default \"/tmp/spire-server/private/api.sock\")");
}

TEST(cli_bad_values_are_named)
{
    ASSERT_EQ(RUN("entry", "show", "-output", "yaml"), 1);
    HAS(err_buf, "\"yaml\"");
    ASSERT_EQ(RUN("entry", "create", "-node=maybe"), 1);
    HAS(err_buf, "invalid boolean value \"maybe\" for -node");
    ASSERT_EQ(RUN("entry", "create", "-spiffeID", "spiffe://example.org/w", "-parentID",
                  "spiffe://example.org/a", "-selector", "unix:uid:0", "-x509SVIDTTL", "soon"),
              1);
    HAS(err_buf, "soon");
    HAS(err_buf, "x509SVIDTTL");
    ASSERT_EQ(RUN("entry", "create", "-spiffeID", "spiffe://example.org/w", "-parentID",
                  "spiffe://example.org/a", "-selector", "nocolon"),
              1);
    HAS(err_buf, "nocolon");
    ASSERT_EQ(RUN("bundle", "show", "-format", "der"), 1);
    HAS(err_buf, "\"der\"");
    ASSERT_EQ(RUN("token", "generate", "-ttl", "-5"), 1);
    HAS(err_buf, "-5");
}

TEST(cli_missing_required_flags)
{
    ASSERT_EQ(RUN("entry", "create", "-parentID", "spiffe://example.org/a"), 1);
    HAS(err_buf, "SPIFFE ID is required");
    ASSERT_EQ(RUN("entry", "create", "-spiffeID", "spiffe://example.org/w", "-selector", "a:b"), 1);
    HAS(err_buf, "parent ID is required");
    ASSERT_EQ(RUN("entry", "create", "-spiffeID", "spiffe://example.org/w", "-node", "-parentID",
                  "spiffe://example.org/a", "-selector", "a:b"),
              1);
    HAS(err_buf, "-node");
    ASSERT_EQ(RUN("entry", "create", "-spiffeID", "spiffe://example.org/w", "-node"), 1);
    HAS(err_buf, "selector is required");
    ASSERT_EQ(RUN("entry", "update", "-spiffeID", "spiffe://example.org/w"), 1);
    HAS(err_buf, "entry ID is required");
    ASSERT_EQ(RUN("entry", "delete"), 1);
    HAS(err_buf, "entry ID is required");
    ASSERT_EQ(RUN("agent", "evict"), 1);
    HAS(err_buf, "SPIFFE ID is required");
    ASSERT_EQ(RUN("agent", "ban", "-spiffeID", "not-an-id"), 1);
    HAS(err_buf, "not-an-id");
}

TEST(cli_server_not_running_names_socket)
{
    char sock[300];

    snprintf(sock, sizeof sock, "%s/nope.sock", sg_test_tmpdir());
    ASSERT_EQ(RUN("entry", "show", "-socketPath", sock), 1);
    HAS(err_buf, "nope.sock");
    /* The other flag spellings reach the same point. */
    char eq[320];
    snprintf(eq, sizeof eq, "--socketPath=%s", sock);
    ASSERT_EQ(RUN("agent", "list", eq, "-output=json"), 1);
    HAS(err_buf, "nope.sock");
    ASSERT_EQ(RUN("healthcheck", "-socketPath", sock), 1);
    HAS(err_buf, "Server is unhealthy:");
    HAS(err_buf, "nope.sock");
    /* A path that is not a socket. */
    ASSERT_EQ(RUN("entry", "show", "-socketPath", "/etc/passwd"), 1);
    HAS(err_buf, "not a socket");
}
