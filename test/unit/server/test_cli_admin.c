/*
 * CLI transport and input: the admin socket path is checked before any
 * channel is made, and stdin is read whole up to a limit.
 */
#include "server/cli_admin.h"

#include "test/runner.h"

#include <fcntl.h>
#include <unistd.h>

/* Points stdin at a file holding n bytes of 'x'. */
static void stdin_of(size_t n)
{
    char path[300];
    FILE *f;
    int fd;

    snprintf(path, sizeof path, "%s/in", sg_test_tmpdir());
    f = fopen(path, "w");
    ASSERT(f != NULL);
    for (size_t i = 0; i < n; i++)
        fputc('x', f);
    fclose(f);
    fd = open(path, O_RDONLY);
    ASSERT(fd >= 0);
    ASSERT(dup2(fd, 0) == 0);
    close(fd);
}

TEST(cli_admin_read_stdin_whole)
{
    char *out = NULL;
    size_t len = 0;
    sg_err err;

    stdin_of(200000);
    sg_err_clear(&err);
    ASSERT_OK(sg_cli_admin_read_stdin(200000, &out, &len, &err));
    ASSERT_EQ(len, 200000);
    ASSERT_EQ(strlen(out), 200000);
    free(out);
}

TEST(cli_admin_read_stdin_over_limit)
{
    char *out = NULL;
    size_t len = 0;
    sg_err err;

    stdin_of(70000);
    sg_err_clear(&err);
    ASSERT_EQ(sg_cli_admin_read_stdin(69999, &out, &len, &err), SG_ETOOBIG);
    ASSERT(strstr(err.msg, "more than 69999 bytes") != NULL);
    ASSERT(out == NULL);
}

TEST(cli_admin_connect_refuses_bad_paths)
{
    grpc_channel *ch = NULL;
    char path[300];
    sg_err err;

    sg_err_clear(&err);
    ASSERT_EQ(sg_cli_admin_connect("", &ch, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "-socketPath is empty") != NULL);
    snprintf(path, sizeof path, "%s/missing.sock", sg_test_tmpdir());
    sg_err_clear(&err);
    ASSERT_ERR(sg_cli_admin_connect(path, &ch, &err));
    ASSERT(strstr(err.msg, "cannot reach the server") != NULL);
    snprintf(path, sizeof path, "%s", sg_test_tmpdir());
    sg_err_clear(&err);
    ASSERT_EQ(sg_cli_admin_connect(path, &ch, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "is not a socket") != NULL);
    ASSERT(ch == NULL);
}
