/*
 * Selectors ("type:value", e.g. "unix:uid:1000") and sorted, duplicate-free
 * selector sets with the subset test used to match entries to workloads.
 */
#ifndef SG_COMMON_SELECTOR_H
#define SG_COMMON_SELECTOR_H

#include "common/err.h"

#include <stdbool.h>
#include <stddef.h>

#define SG_SELECTOR_MAX_LEN 1024 /* bytes of type + ":" + value */
#define SG_SELECTOR_SET_MAX 1024 /* selectors in one set */

/* One selector. Both strings are heap-owned by whoever owns the selector. */
typedef struct sg_selector {
    char *type;  /* "unix", "spiffe_id", ... ; non-empty, no ':' */
    char *value; /* "uid:1000"; non-empty, may contain ':' */
} sg_selector;

/*
 * Parses "type:value" (splitting at the first ':') into out, which receives
 * new heap strings (free with sg_selector_cleanup). Rejects an empty type or
 * value, control characters and over-long input, quoting s in err.
 */
int sg_selector_parse(const char *s, sg_selector *out, sg_err *err);

/* Validates and copies type/value into out. Same rules as sg_selector_parse. */
int sg_selector_init(sg_selector *out, const char *type, const char *value, sg_err *err);

/* Frees the strings of s; s itself is caller storage. NULL-safe. */
void sg_selector_cleanup(sg_selector *s);

/* Total order on (type, value) for sorting; strcmp-like result. */
int sg_selector_cmp(const sg_selector *a, const sg_selector *b);

/* A sorted set of selectors without duplicates. Caller storage; init with {0}. */
typedef struct sg_selector_set {
    sg_selector *items;
    size_t n;
    size_t cap;
} sg_selector_set;

/* Adds a copy of (type, value) keeping the set sorted; a duplicate is a no-op. */
int sg_selector_set_add(sg_selector_set *set, const char *type, const char *value);

/* Whether set holds (type, value). O(log n). */
bool sg_selector_set_contains(const sg_selector_set *set, const char *type, const char *value);

/*
 * Whether every selector in want[0..n) is in have: the matching rule for
 * entries (an entry applies when all its selectors are among the workload's).
 * n == 0 never matches, since entries must have at least one selector.
 */
bool sg_selector_set_matches(const sg_selector_set *have, const sg_selector *want, size_t n);

/* Frees every selector and the array. */
void sg_selector_set_cleanup(sg_selector_set *set);

#endif
