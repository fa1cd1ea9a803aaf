/*
 * Transport and input helpers of the sigil-server CLI. Replies may be
 * large (a full entry list), so the channel raises gRPC's receive limit.
 */
#include "server/cli_admin.h"

#include "common/rpc.h"
#include "sigil/admin/v1/admin.pb-c.h"

#include <grpc/grpc_security.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_RECV_BYTES (64 * 1024 * 1024)

int sg_cli_admin_connect(const char *path, grpc_channel **ch, sg_err *err)
{
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
    *ch = grpc_channel_create(target, creds, &args);
    grpc_channel_credentials_release(creds);
    if (*ch == NULL)
        return sg_err_set(err, SG_EUNAVAIL, "connection error: cannot create a channel to \"%s\"",
                          path);
    return 0;
}

int sg_cli_admin_call(grpc_channel **ch, const char *path, const char *method,
                      const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
                      int64_t timeout_ms, ProtobufCMessage **resp, sg_err *err)
{
    char mpath[128];
    int rc;

    if (*ch == NULL) {
        rc = sg_cli_admin_connect(path, ch, err);
        if (rc < 0)
            return rc;
    }
    snprintf(mpath, sizeof mpath, "/%s/%s", sigil__admin__v1__admin__descriptor.name, method);
    rc = sg_rpc_unary(*ch, mpath, req, desc, NULL, 0, timeout_ms, resp, NULL, err);
    if (rc < 0 && err != NULL && err->msg[0] == '\0')
        sg_err_set(err, rc, "%s failed: %s", method, sg_strerror(rc));
    return rc;
}

int sg_cli_admin_read_stdin(size_t max, char **out, size_t *len, sg_err *err)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);

    if (buf == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory reading stdin");
    for (;;) {
        size_t r;

        if (n == cap) {
            size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            char *nb;

            if (ncap <= cap) {
                free(buf);
                return sg_err_set(err, SG_ETOOBIG, "stdin holds more than %zu bytes", max);
            }
            nb = realloc(buf, ncap + 1);
            if (nb == NULL) {
                free(buf);
                return sg_err_set(err, SG_ENOMEM, "out of memory reading stdin");
            }
            buf = nb;
            cap = ncap;
        }
        r = fread(buf + n, 1, cap - n, stdin);
        n += r;
        if (r == 0) {
            if (ferror(stdin)) {
                free(buf);
                return sg_err_sys(err, "cannot read stdin");
            }
            break;
        }
    }
    if (n > max) {
        free(buf);
        return sg_err_set(err, SG_ETOOBIG, "stdin holds more than %zu bytes", max);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}
