/*
 * Parsing of numbers and Go-syntax durations without atoi/sscanf.
 */
#ifndef SG_COMMON_STRPARSE_H
#define SG_COMMON_STRPARSE_H

#include "common/err.h"

#include <stddef.h>
#include <stdint.h>

/* Parses a whole decimal integer (optional leading '-') within [min, max]. */
int sg_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out, sg_err *err);

/*
 * Parses a Go duration ("90s", "1h30m", "1.5h", "300ms", "2h45m10s") into
 * milliseconds. A bare integer is taken as seconds, as SPIRE's CLI TTL flags
 * are. Negative values, unknown units and overflow are errors quoting s.
 */
int sg_parse_duration_ms(const char *s, int64_t *out_ms, sg_err *err);

/* Formats ms as a Go duration ("1h30m0s", "90s", "250ms") into out. */
void sg_format_duration(int64_t ms, char *out, size_t outlen);

#endif
