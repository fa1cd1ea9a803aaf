/*
 * Error codes and the caller-owned detail buffer used across sigil.
 * Functions return 0 or a negative SG_E* code; those that check untrusted
 * input also fill an sg_err with a message that quotes the bad value.
 */
#ifndef SG_COMMON_ERR_H
#define SG_COMMON_ERR_H

#include <stddef.h>

/* X(name, value, message). One list generates the enum and both tables. */
#define SG_ERR_MAP(X)                                                                              \
    X(EINVAL, -1, "invalid argument")                                                              \
    X(ENOMEM, -2, "out of memory")                                                                 \
    X(ENOENT, -3, "not found")                                                                     \
    X(EEXIST, -4, "already exists")                                                                \
    X(EPERM, -5, "permission denied")                                                              \
    X(EEXPIRED, -6, "expired")                                                                     \
    X(EUNTRUSTED, -7, "not trusted")                                                               \
    X(ETIMEDOUT, -8, "timed out")                                                                  \
    X(EIO, -9, "input/output error")                                                               \
    X(EPROTO, -10, "protocol error")                                                               \
    X(ESYS, -11, "system error")                                                                   \
    X(ECRYPTO, -12, "cryptographic failure")                                                       \
    X(EDB, -13, "datastore error")                                                                 \
    X(EUNAVAIL, -14, "unavailable")                                                                \
    X(ETOOBIG, -15, "too large")                                                                   \
    X(EUNSUPPORTED, -16, "not supported")                                                          \
    X(ECONFIG, -17, "configuration error")                                                         \
    X(EUNAUTH, -18, "unauthenticated")                                                             \
    X(ECANCELLED, -19, "cancelled")

enum {
    SG_OK = 0,
#define SG__ERR_ENUM(name, val, msg) SG_##name = val,
    SG_ERR_MAP(SG__ERR_ENUM)
#undef SG__ERR_ENUM
};

#define SG_ERR_MSG_LEN 256

/* Detail buffer for one failed call; owned by the caller, no allocation. */
typedef struct sg_err {
    int code;                 /* SG_E* of the failure, 0 when unset */
    int sys_errno;            /* errno for SG_ESYS, else 0 */
    char msg[SG_ERR_MSG_LEN]; /* human-readable reason, never a secret */
} sg_err;

/* Resets err to "no error". NULL is a no-op. */
void sg_err_clear(sg_err *err);

/*
 * Records code and a printf-style message in err (NULL is allowed) and
 * returns code, so callers can write `return sg_err_set(err, SG_EINVAL, ...)`.
 */
int sg_err_set(sg_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Like sg_err_set with SG_ESYS, appending strerror(errno) and keeping errno. */
int sg_err_sys(sg_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Like sg_err_set with SG_ECRYPTO, appending OpenSSL's first queued error
 * and clearing the OpenSSL error queue.
 */
int sg_err_ssl(sg_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Static description of code ("invalid argument"); never NULL. */
const char *sg_strerror(int code);

/* Static name of code ("SG_EINVAL"); never NULL. */
const char *sg_err_name(int code);

#endif
