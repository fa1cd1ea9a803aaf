/*
 * stderr logger. The level and component are written once by main before
 * any thread starts; lines are formatted into a local buffer and written
 * with a single write(2) so concurrent threads never interleave.
 */
#include "common/log.h"

#include "common/err.h"

#include <grpc/support/log.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static sg_log_level min_level = SG_LOG_INFO;
static const char *component = "sigil";

int sg_log_level_parse(const char *s, sg_log_level *out)
{
    static const struct {
        const char *name;
        sg_log_level level;
    } names[] = {
        {"debug", SG_LOG_DEBUG},  {"info", SG_LOG_INFO},   {"warn", SG_LOG_WARN},
        {"warning", SG_LOG_WARN}, {"error", SG_LOG_ERROR},
    };

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return SG_EINVAL;
}

void sg_log_set_level(sg_log_level level)
{
    min_level = level;
}

void sg_log_set_component(const char *name)
{
    component = name;
}

int sg_log_enabled(sg_log_level level)
{
    return level >= min_level;
}

void sg_log(sg_log_level level, const char *fmt, ...)
{
    static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    char line[2048];
    struct timespec ts;
    struct tm tm;
    va_list ap;
    int n, m;

    if (level < min_level)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(line, sizeof line,
                 "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                 level_names[level], component);
    va_start(ap, fmt);
    m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += m;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, (size_t)n) < 0)
        return;
}

static void grpc_log_sink(gpr_log_func_args *args)
{
    sg_log_level level = SG_LOG_DEBUG;

    if (args->severity == GPR_LOG_SEVERITY_ERROR &&
        strstr(args->message, "No match found for server name") == NULL)
        level = SG_LOG_WARN;
    sg_log(level, "grpc: %s (%s:%d)", args->message, args->file, args->line);
}

void sg_log_capture_grpc(void)
{
    gpr_set_log_function(grpc_log_sink);
}
