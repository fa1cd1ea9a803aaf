/*
 * Strict number and Go-duration parsing. Every parser consumes the whole
 * string and reports the offending input in err; nothing here uses
 * atoi/strtol, so overflow and trailing junk are always caught.
 */
#include "common/strparse.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Longest input quoted in an error message. */
#define QUOTE_MAX 64

int sg_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out, sg_err *err)
{
    const char *p = s;
    bool neg = false;
    uint64_t acc = 0;
    uint64_t limit;
    int64_t v;

    if (s == NULL || *s == '\0')
        return sg_err_set(err, SG_EINVAL, "empty number");
    if (*p == '-') {
        neg = true;
        p++;
    }
    if (*p < '0' || *p > '9')
        return sg_err_set(err, SG_EINVAL, "not an integer: \"%.*s\"", QUOTE_MAX, s);
    /* Magnitude limit: INT64_MAX, or INT64_MAX + 1 for negative values. */
    limit = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
    for (; *p != '\0'; p++) {
        unsigned d;

        if (*p < '0' || *p > '9')
            return sg_err_set(err, SG_EINVAL, "not an integer: \"%.*s\"", QUOTE_MAX, s);
        d = (unsigned)(*p - '0');
        if (acc > (limit - d) / 10u)
            return sg_err_set(err, SG_EINVAL, "integer out of range: \"%.*s\"", QUOTE_MAX, s);
        acc = acc * 10u + d;
    }
    if (neg)
        v = acc == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)acc;
    else
        v = (int64_t)acc;
    if (v < min || v > max)
        return sg_err_set(err, SG_EINVAL, "%.*s is out of range [%lld, %lld]", QUOTE_MAX, s,
                          (long long)min, (long long)max);
    *out = v;
    return 0;
}

/* Units accepted by Go's time.ParseDuration, in nanoseconds. */
static const struct {
    const char *name;
    uint64_t ns;
} duration_units[] = {
    {"ns", 1ull},
    {"us", 1000ull},
    {"\xc2\xb5s", 1000ull}, /* U+00B5 micro sign */
    {"\xce\xbcs", 1000ull}, /* U+03BC Greek mu */
    {"ms", 1000000ull},
    {"s", 1000000000ull},
    {"m", 60ull * 1000000000ull},
    {"h", 3600ull * 1000000000ull},
};

int sg_parse_duration_ms(const char *s, int64_t *out_ms, sg_err *err)
{
    const char *p = s;
    uint64_t total_ns = 0;
    int64_t secs;

    if (s == NULL || *s == '\0')
        return sg_err_set(err, SG_EINVAL, "empty duration");
    if (*s == '-')
        return sg_err_set(err, SG_EINVAL, "negative duration \"%.*s\"", QUOTE_MAX, s);
    if (*p == '+')
        p++;

    /* A bare integer means seconds, as SPIRE's TTL flags take it. */
    if (sg_parse_int64(p, 0, INT64_MAX / 1000, &secs, NULL) == 0) {
        *out_ms = secs * 1000;
        return 0;
    }
    /* Go accepts a lone "0" without a unit; the branch above covers it. */
    while (*p != '\0') {
        uint64_t whole = 0, frac = 0, scale = 1, unit = 0, v;
        bool have_digits = false, overflow = false;
        size_t ulen = 0;

        while (*p >= '0' && *p <= '9') {
            if (whole > (UINT64_MAX - 9u) / 10u)
                overflow = true;
            else
                whole = whole * 10u + (unsigned)(*p - '0');
            have_digits = true;
            p++;
        }
        if (*p == '.') {
            p++;
            while (*p >= '0' && *p <= '9') {
                /* Digits past 1e18 precision cannot change the result in ns. */
                if (scale < 1000000000000000000ull) {
                    frac = frac * 10u + (unsigned)(*p - '0');
                    scale *= 10u;
                }
                have_digits = true;
                p++;
            }
        }
        if (!have_digits)
            return sg_err_set(err, SG_EINVAL, "invalid duration \"%.*s\"", QUOTE_MAX, s);
        for (size_t i = 0; i < sizeof duration_units / sizeof duration_units[0]; i++) {
            size_t n = strlen(duration_units[i].name);

            /* Longest match wins so "ms" is not read as "m" then "s". */
            if (n > ulen && strncmp(p, duration_units[i].name, n) == 0) {
                ulen = n;
                unit = duration_units[i].ns;
            }
        }
        if (ulen == 0) {
            if (*p == '\0')
                return sg_err_set(err, SG_EINVAL,
                                  "missing unit in duration \"%.*s\" (use ns, us, ms, s, m or h)",
                                  QUOTE_MAX, s);
            return sg_err_set(err, SG_EINVAL,
                              "unknown unit in duration \"%.*s\" (use ns, us, ms, s, m or h)",
                              QUOTE_MAX, s);
        }
        p += ulen;
        if (overflow || (whole != 0 && whole > UINT64_MAX / unit))
            return sg_err_set(err, SG_EINVAL, "duration \"%.*s\" is too large", QUOTE_MAX, s);
        v = whole * unit;
        if (frac != 0) {
            /* frac/scale < 1, and unit <= 3.6e12, so split to avoid overflow. */
            long double f = (long double)frac / (long double)scale * (long double)unit;
            v += (uint64_t)f;
        }
        if (v > (uint64_t)INT64_MAX - total_ns)
            return sg_err_set(err, SG_EINVAL, "duration \"%.*s\" is too large", QUOTE_MAX, s);
        total_ns += v;
    }
    *out_ms = (int64_t)(total_ns / 1000000u);
    return 0;
}

void sg_format_duration(int64_t ms, char *out, size_t outlen)
{
    uint64_t u, h, m, sec, frac;
    const char *sign = "";
    char fracbuf[8] = "";
    size_t pos = 0;
    int n;

    if (out == NULL || outlen == 0)
        return;
    if (ms == 0) {
        snprintf(out, outlen, "0s");
        return;
    }
    if (ms < 0) {
        sign = "-";
        u = (uint64_t)(-(ms + 1)) + 1u;
    } else {
        u = (uint64_t)ms;
    }
    /* Go prints sub-second durations in the largest fitting unit. */
    if (u < 1000u) {
        snprintf(out, outlen, "%s%llums", sign, (unsigned long long)u);
        return;
    }
    h = u / 3600000u;
    m = (u / 60000u) % 60u;
    sec = (u / 1000u) % 60u;
    frac = u % 1000u;
    if (frac != 0) {
        /* Trailing zeros are dropped: 1500ms -> "1.5s". */
        snprintf(fracbuf, sizeof fracbuf, ".%03llu", (unsigned long long)frac);
        for (size_t i = strlen(fracbuf) - 1; i > 0 && fracbuf[i] == '0'; i--)
            fracbuf[i] = '\0';
    }
    n = snprintf(out, outlen, "%s", sign);
    pos = n > 0 ? (size_t)n : 0;
    if (h > 0 && pos < outlen) {
        n = snprintf(out + pos, outlen - pos, "%lluh", (unsigned long long)h);
        pos += n > 0 ? (size_t)n : 0;
    }
    if ((h > 0 || m > 0) && pos < outlen) {
        n = snprintf(out + pos, outlen - pos, "%llum", (unsigned long long)m);
        pos += n > 0 ? (size_t)n : 0;
    }
    if (pos < outlen)
        snprintf(out + pos, outlen - pos, "%llu%ss", (unsigned long long)sec, fracbuf);
}
