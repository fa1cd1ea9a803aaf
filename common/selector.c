/*
 * Selectors and sorted selector sets. A set is a sorted array so lookups
 * are binary searches and the entry-matching subset test is O(m log n).
 */
#include "common/selector.h"

#include <stdlib.h>
#include <string.h>

#define QUOTE_MAX 80

/* Checks one part of a selector; what names it ("type" or "value") in errors. */
static int check_part(const char *part, size_t len, const char *what, const char *whole,
                      sg_err *err)
{
    if (len == 0)
        return sg_err_set(err, SG_EINVAL, "selector \"%.*s\" has an empty %s", QUOTE_MAX, whole,
                          what);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)part[i];

        if (c < 0x20 || c == 0x7f)
            return sg_err_set(err, SG_EINVAL, "selector \"%.*s\" has a control character in its %s",
                              QUOTE_MAX, whole, what);
    }
    return 0;
}

static int validate(const char *type, size_t tlen, const char *value, size_t vlen,
                    const char *whole, sg_err *err)
{
    int rc;

    if (tlen + 1 + vlen > SG_SELECTOR_MAX_LEN)
        return sg_err_set(err, SG_EINVAL, "selector \"%.*s...\" is longer than %d bytes", QUOTE_MAX,
                          whole, SG_SELECTOR_MAX_LEN);
    rc = check_part(type, tlen, "type", whole, err);
    if (rc == 0)
        rc = check_part(value, vlen, "value", whole, err);
    if (rc == 0 && memchr(type, ':', tlen) != NULL)
        rc = sg_err_set(err, SG_EINVAL, "selector type \"%.*s\" must not contain ':'", QUOTE_MAX,
                        type);
    return rc;
}

static int copy_into(sg_selector *out, const char *type, size_t tlen, const char *value,
                     size_t vlen, sg_err *err)
{
    char *t = strndup(type, tlen);
    char *v = strndup(value, vlen);

    if (t == NULL || v == NULL) {
        free(t);
        free(v);
        return sg_err_set(err, SG_ENOMEM, "out of memory copying a selector");
    }
    out->type = t;
    out->value = v;
    return 0;
}

int sg_selector_parse(const char *s, sg_selector *out, sg_err *err)
{
    const char *colon;
    size_t len;
    int rc;

    if (s == NULL || *s == '\0')
        return sg_err_set(err, SG_EINVAL, "selector is empty (want type:value)");
    len = strnlen(s, SG_SELECTOR_MAX_LEN + 1);
    if (len > SG_SELECTOR_MAX_LEN)
        return sg_err_set(err, SG_EINVAL, "selector \"%.*s...\" is longer than %d bytes", QUOTE_MAX,
                          s, SG_SELECTOR_MAX_LEN);
    colon = strchr(s, ':');
    if (colon == NULL)
        return sg_err_set(err, SG_EINVAL, "selector \"%.*s\" must be type:value", QUOTE_MAX, s);
    rc = validate(s, (size_t)(colon - s), colon + 1, strlen(colon + 1), s, err);
    if (rc < 0)
        return rc;
    return copy_into(out, s, (size_t)(colon - s), colon + 1, strlen(colon + 1), err);
}

int sg_selector_init(sg_selector *out, const char *type, const char *value, sg_err *err)
{
    size_t tlen, vlen;
    int rc;

    if (type == NULL || value == NULL)
        return sg_err_set(err, SG_EINVAL, "selector type and value are required");
    tlen = strnlen(type, SG_SELECTOR_MAX_LEN + 1);
    vlen = strnlen(value, SG_SELECTOR_MAX_LEN + 1);
    rc = validate(type, tlen, value, vlen, type, err);
    if (rc < 0)
        return rc;
    return copy_into(out, type, tlen, value, vlen, err);
}

void sg_selector_cleanup(sg_selector *s)
{
    if (s == NULL)
        return;
    free(s->type);
    free(s->value);
    s->type = NULL;
    s->value = NULL;
}

static int cmp_parts(const char *at, const char *av, const char *bt, const char *bv)
{
    int c = strcmp(at, bt);

    return c != 0 ? c : strcmp(av, bv);
}

int sg_selector_cmp(const sg_selector *a, const sg_selector *b)
{
    return cmp_parts(a->type, a->value, b->type, b->value);
}

/*
 * Binary search: returns whether (type, value) is present and stores in
 * *pos its index or the index where it would be inserted.
 */
static bool find(const sg_selector_set *set, const char *type, const char *value, size_t *pos)
{
    size_t lo = 0, hi = set->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_parts(set->items[mid].type, set->items[mid].value, type, value);

        if (c == 0) {
            *pos = mid;
            return true;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *pos = lo;
    return false;
}

int sg_selector_set_add(sg_selector_set *set, const char *type, const char *value)
{
    sg_selector sel;
    size_t pos;
    int rc;

    if (set == NULL || type == NULL || value == NULL)
        return SG_EINVAL;
    if (find(set, type, value, &pos))
        return 0;
    if (set->n >= SG_SELECTOR_SET_MAX)
        return SG_ETOOBIG;
    /* Same rules as parsing, so a set only ever holds selectors an entry could name. */
    rc = sg_selector_init(&sel, type, value, NULL);
    if (rc < 0)
        return rc;
    if (set->n == set->cap) {
        size_t ncap = set->cap == 0 ? 8 : set->cap * 2;
        sg_selector *items = realloc(set->items, ncap * sizeof *items);

        if (items == NULL) {
            sg_selector_cleanup(&sel);
            return SG_ENOMEM;
        }
        set->items = items;
        set->cap = ncap;
    }
    memmove(&set->items[pos + 1], &set->items[pos], (set->n - pos) * sizeof set->items[0]);
    set->items[pos] = sel;
    set->n++;
    return 0;
}

bool sg_selector_set_contains(const sg_selector_set *set, const char *type, const char *value)
{
    size_t pos;

    if (set == NULL || type == NULL || value == NULL || set->n == 0)
        return false;
    return find(set, type, value, &pos);
}

bool sg_selector_set_matches(const sg_selector_set *have, const sg_selector *want, size_t n)
{
    if (n == 0 || want == NULL)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!sg_selector_set_contains(have, want[i].type, want[i].value))
            return false;
    return true;
}

void sg_selector_set_cleanup(sg_selector_set *set)
{
    if (set == NULL)
        return;
    for (size_t i = 0; i < set->n; i++)
        sg_selector_cleanup(&set->items[i]);
    free(set->items);
    set->items = NULL;
    set->n = 0;
    set->cap = 0;
}
