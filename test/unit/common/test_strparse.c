/* Unit tests for common/strparse.c. */
#include "common/strparse.h"
#include "test/runner.h"

#include <stdint.h>

static int64_t dur(const char *s)
{
    int64_t ms = -42;
    sg_err err;

    sg_err_clear(&err);
    if (sg_parse_duration_ms(s, &ms, &err) < 0) {
        fprintf(stderr, "  %s: %s\n", s, err.msg);
        exit(1);
    }
    return ms;
}

TEST(strparse_int64_accepts_plain_and_negative)
{
    int64_t v = 0;

    ASSERT_OK(sg_parse_int64("8081", 1, 65535, &v, NULL));
    ASSERT_EQ(v, 8081);
    ASSERT_OK(sg_parse_int64("-17", INT64_MIN, INT64_MAX, &v, NULL));
    ASSERT_EQ(v, -17);
    ASSERT_OK(sg_parse_int64("9223372036854775807", INT64_MIN, INT64_MAX, &v, NULL));
    ASSERT_EQ(v, INT64_MAX);
    ASSERT_OK(sg_parse_int64("-9223372036854775808", INT64_MIN, INT64_MAX, &v, NULL));
    ASSERT(v == INT64_MIN);
}

TEST(strparse_int64_rejects_junk_and_overflow)
{
    const char *bad[] = {"",
                         "-",
                         "+1",
                         " 1",
                         "1 ",
                         "1a",
                         "0x10",
                         "1.0",
                         "9223372036854775808",
                         "-9223372036854775809",
                         "--1"};
    int64_t v = 7;
    sg_err err;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ASSERT_EQ(sg_parse_int64(bad[i], INT64_MIN, INT64_MAX, &v, &err), SG_EINVAL);
        ASSERT_EQ(v, 7);
    }
    ASSERT_ERR(sg_parse_int64("1a", 0, 10, &v, &err));
    ASSERT(strstr(err.msg, "\"1a\"") != NULL);
}

TEST(strparse_int64_checks_range)
{
    int64_t v;
    sg_err err;

    ASSERT_EQ(sg_parse_int64("0", 1, 65535, &v, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "out of range") != NULL);
    ASSERT_EQ(sg_parse_int64("65536", 1, 65535, &v, &err), SG_EINVAL);
}

TEST(strparse_duration_units)
{
    ASSERT_EQ(dur("1h"), 3600000);
    ASSERT_EQ(dur("90s"), 90000);
    ASSERT_EQ(dur("300ms"), 300);
    ASSERT_EQ(dur("2m"), 120000);
    ASSERT_EQ(dur("5000000ns"), 5);
    ASSERT_EQ(dur("7000us"), 7);
    ASSERT_EQ(dur("8000\xc2\xb5s"), 8);
    ASSERT_EQ(dur("9000\xce\xbcs"), 9);
}

TEST(strparse_duration_fractions_and_combos)
{
    ASSERT_EQ(dur("1.5h"), 5400000);
    ASSERT_EQ(dur("1h30m"), 5400000);
    ASSERT_EQ(dur("2h45m10s"), (2 * 3600 + 45 * 60 + 10) * 1000LL);
    ASSERT_EQ(dur("1.5s"), 1500);
    ASSERT_EQ(dur(".5s"), 500);
    ASSERT_EQ(dur("1m0.25s"), 60250);
    ASSERT_EQ(dur("0"), 0);
    ASSERT_EQ(dur("0s"), 0);
    ASSERT_EQ(dur("+10s"), 10000);
}

TEST(strparse_duration_bare_integer_is_seconds)
{
    ASSERT_EQ(dur("3600"), 3600000);
}

TEST(strparse_duration_rejects_bad_input)
{
    const char *bad[] = {"",
                         "-1s",
                         "1x",
                         "1.5",
                         "s",
                         "1hh",
                         "1h 30m",
                         ".s",
                         "1..5s",
                         "h1",
                         "99999999999999999999h",
                         "3000000h"};
    int64_t ms = 5;
    sg_err err;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (sg_parse_duration_ms(bad[i], &ms, &err) != SG_EINVAL) {
            fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
            exit(1);
        }
        ASSERT_EQ(ms, 5);
    }
    ASSERT_ERR(sg_parse_duration_ms("10q", &ms, &err));
    ASSERT(strstr(err.msg, "\"10q\"") != NULL);
    ASSERT(strstr(err.msg, "unit") != NULL);
}

TEST(strparse_format_duration_go_style)
{
    char buf[32];

    sg_format_duration(0, buf, sizeof buf);
    ASSERT_STREQ(buf, "0s");
    sg_format_duration(250, buf, sizeof buf);
    ASSERT_STREQ(buf, "250ms");
    sg_format_duration(90000, buf, sizeof buf);
    ASSERT_STREQ(buf, "1m30s");
    sg_format_duration(5400000, buf, sizeof buf);
    ASSERT_STREQ(buf, "1h30m0s");
    sg_format_duration(1500, buf, sizeof buf);
    ASSERT_STREQ(buf, "1.5s");
    sg_format_duration(-2000, buf, sizeof buf);
    ASSERT_STREQ(buf, "-2s");
    sg_format_duration(5400000, buf, 4);
    ASSERT_STREQ(buf, "1h3");
}
