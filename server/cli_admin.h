/*
 * The admin API socket as the sigil-server CLI commands reach it: one
 * channel per command, unary calls that carry the server's error text,
 * and bounded reads of stdin for -data and bundle input.
 */
#ifndef SG_SERVER_CLI_ADMIN_H
#define SG_SERVER_CLI_ADMIN_H

#include "common/err.h"

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

/* A channel to the admin socket at path, which must exist and be a socket, into *ch. */
int sg_cli_admin_connect(const char *path, grpc_channel **ch, sg_err *err);

/*
 * One unary call of sigil.admin.v1.Admin's method, connecting *ch to path
 * first when it is NULL (the caller destroys it). *resp is freed by the
 * caller with protobuf_c_message_free_unpacked.
 */
int sg_cli_admin_call(grpc_channel **ch, const char *path, const char *method,
                      const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
                      int64_t timeout_ms, ProtobufCMessage **resp, sg_err *err);

/* Reads all of stdin, refusing more than max bytes (SG_ETOOBIG); *out malloc'd, NUL-terminated. */
int sg_cli_admin_read_stdin(size_t max, char **out, size_t *len, sg_err *err);

#endif
