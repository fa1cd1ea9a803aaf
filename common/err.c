/*
 * Error code tables and the sg_err detail buffer. The tables are generated
 * from SG_ERR_MAP so the enum, names and messages never drift apart.
 */
#include "common/err.h"

#include <errno.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void sg_err_clear(sg_err *err)
{
    if (err == NULL)
        return;
    err->code = 0;
    err->sys_errno = 0;
    err->msg[0] = '\0';
}

static void err_vset(sg_err *err, int code, const char *fmt, va_list ap)
{
    err->code = code;
    err->sys_errno = 0;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
}

int sg_err_set(sg_err *err, int code, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return code;
    va_start(ap, fmt);
    err_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int sg_err_sys(sg_err *err, const char *fmt, ...)
{
    int saved = errno;
    va_list ap;
    size_t n;

    if (err == NULL)
        return SG_ESYS;
    va_start(ap, fmt);
    err_vset(err, SG_ESYS, fmt, ap);
    va_end(ap);
    n = strlen(err->msg);
    snprintf(err->msg + n, sizeof err->msg - n, ": %s", strerror(saved));
    err->sys_errno = saved;
    errno = saved;
    return SG_ESYS;
}

int sg_err_ssl(sg_err *err, const char *fmt, ...)
{
    unsigned long e = ERR_peek_error();
    char reason[160] = "unknown OpenSSL error";
    va_list ap;
    size_t n;

    if (e != 0)
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    if (err == NULL)
        return SG_ECRYPTO;
    va_start(ap, fmt);
    err_vset(err, SG_ECRYPTO, fmt, ap);
    va_end(ap);
    n = strlen(err->msg);
    snprintf(err->msg + n, sizeof err->msg - n, ": %s", reason);
    return SG_ECRYPTO;
}

const char *sg_strerror(int code)
{
    switch (code) {
    case SG_OK:
        return "success";
#define SG__ERR_MSG(name, val, msg)                                                                \
    case SG_##name:                                                                                \
        return msg;
        SG_ERR_MAP(SG__ERR_MSG)
#undef SG__ERR_MSG
    default:
        return "unknown error";
    }
}

const char *sg_err_name(int code)
{
    switch (code) {
    case SG_OK:
        return "SG_OK";
#define SG__ERR_NAME(name, val, msg)                                                               \
    case SG_##name:                                                                                \
        return "SG_" #name;
        SG_ERR_MAP(SG__ERR_NAME)
#undef SG__ERR_NAME
    default:
        return "SG_EUNKNOWN";
    }
}
