/*
 * A small, strict parser for the subset of HCL 1 that SPIRE configuration
 * files use: comments (#, //, / * * /), `key = value`, quoted strings with
 * escapes, numbers, true/false, lists with an optional trailing comma,
 * objects, and blocks with any number of labels
 * (`plugins { DataStore "sql" { plugin_data { ... } } }`), with or without
 * `=` before `{`. Duplicate keys are kept in file order. Every node records
 * the line it starts on so callers can report "file:line: message".
 */
#ifndef SG_COMMON_HCL_H
#define SG_COMMON_HCL_H

#include "common/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SG_HCL_MAX_INPUT (1u << 20) /* bytes of source text */
#define SG_HCL_MAX_DEPTH 32         /* nesting of objects and lists */
#define SG_HCL_MAX_NODES 100000     /* values in one document */

typedef enum sg_hcl_type {
    SG_HCL_STRING, /* str holds the unescaped text */
    SG_HCL_NUMBER, /* str holds the literal; is_int/ival set for integers */
    SG_HCL_BOOL,   /* bval */
    SG_HCL_LIST,   /* items[0..n) in order, key == NULL */
    SG_HCL_OBJECT, /* items[0..n) are members in file order, each with key set */
} sg_hcl_type;

/*
 * One value. When the value is a member of an object, `key` is its name and
 * `labels` the block labels that followed the name, so
 * `DataStore "sql" { }` is a member with key "DataStore", labels {"sql"} and
 * an OBJECT value. All fields are read-only for callers; the whole tree is
 * owned by its root and freed with sg_hcl_free.
 */
typedef struct sg_hcl_node sg_hcl_node;
struct sg_hcl_node {
    sg_hcl_type type;
    int line;      /* 1-based line where the member (or value) starts */
    char *key;     /* member name, or NULL for list items and the root */
    char **labels; /* block labels, nlabels of them */
    size_t nlabels;
    char *str;           /* STRING and NUMBER text, NUL-terminated */
    size_t len;          /* bytes in str (strings may hold NUL via \u0000: refused) */
    bool is_int;         /* NUMBER fits int64 with no fraction or exponent */
    int64_t ival;        /* value when is_int */
    bool bval;           /* BOOL value */
    sg_hcl_node **items; /* LIST items or OBJECT members */
    size_t n;
};

/*
 * Parses text[0..len) into a tree whose root is an OBJECT holding the
 * top-level members. name (e.g. the file path) prefixes error messages:
 * "server.conf:12: expected '=' or '{' after key \"bind_port\"". Input over
 * SG_HCL_MAX_INPUT, nesting deeper than SG_HCL_MAX_DEPTH and NUL bytes are
 * errors (SG_EINVAL or SG_ETOOBIG). *out is freed with sg_hcl_free.
 */
int sg_hcl_parse(const char *name, const char *text, size_t len, sg_hcl_node **out, sg_err *err);

/* Frees a tree from sg_hcl_parse. NULL-safe. */
void sg_hcl_free(sg_hcl_node *root);

/* Static name of t for messages ("string", "number", "bool", "list", "object"). */
const char *sg_hcl_type_name(sg_hcl_type t);

#endif
