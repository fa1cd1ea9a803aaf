/*
 * Levelled key=value logging to stderr. One process-wide level set once in
 * main; every other call is thread-safe (one write(2) per line).
 * Never pass keys, tokens or other secrets: log fingerprints or serials.
 */
#ifndef SG_COMMON_LOG_H
#define SG_COMMON_LOG_H

typedef enum sg_log_level {
    SG_LOG_DEBUG = 0,
    SG_LOG_INFO = 1,
    SG_LOG_WARN = 2,
    SG_LOG_ERROR = 3,
} sg_log_level;

/* Parses "debug", "INFO", "warn"/"warning", "error" case-insensitively. 0 or SG_EINVAL. */
int sg_log_level_parse(const char *s, sg_log_level *out);

/* Sets the minimum level printed. Call from main before starting threads. */
void sg_log_set_level(sg_log_level level);

/* Sets the component printed on every line ("server", "agent"). Call from main. */
void sg_log_set_component(const char *name);

/* Whether messages at level would be printed. */
int sg_log_enabled(sg_log_level level);

/* Prints one line: time, level, component, then the formatted message. */
void sg_log(sg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sg_log_debug(...) sg_log(SG_LOG_DEBUG, __VA_ARGS__)
#define sg_log_info(...)  sg_log(SG_LOG_INFO, __VA_ARGS__)
#define sg_log_warn(...)  sg_log(SG_LOG_WARN, __VA_ARGS__)
#define sg_log_error(...) sg_log(SG_LOG_ERROR, __VA_ARGS__)

/*
 * Routes gRPC core's own log lines through sg_log (call once in main after
 * grpc_init): errors become warnings, and the per-handshake "No match found
 * for server name" message, which is expected for SPIFFE-ID-only server
 * certificates, becomes debug output.
 */
void sg_log_capture_grpc(void);

#endif
