/*
 * Strict HCL 1 subset parser: a hand-written lexer with one token of
 * lookahead and a recursive-descent parser with explicit limits on input
 * size, nesting and node count, so hostile input fails with a message and
 * never exhausts the stack or memory.
 */
#include "common/hcl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUOTE_MAX 40

typedef enum tok_type {
    T_EOF,
    T_IDENT,
    T_STRING,
    T_NUMBER,
    T_LBRACE,
    T_RBRACE,
    T_LBRACK,
    T_RBRACK,
    T_EQUAL,
    T_COMMA,
} tok_type;

typedef struct tok {
    tok_type type;
    int line;
    const char *start; /* raw text; for strings, just inside the quotes */
    size_t len;
} tok;

typedef struct parser {
    const char *name;
    const char *p;   /* next unread byte */
    const char *end; /* one past the last byte */
    int line;        /* line of *p */
    tok cur;         /* current lookahead token */
    size_t nodes;    /* values created so far */
    sg_err *err;
} parser;

static int perr(parser *ps, int line, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Records "name:line: message" and returns code. */
static int perr(parser *ps, int line, int code, const char *fmt, ...)
{
    char msg[SG_ERR_MSG_LEN];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sg_err_set(ps->err, code, "%s:%d: %s", ps->name, line, msg);
}

static int is_ident_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_ident_char(char c)
{
    return is_ident_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Skips blanks and comments, counting lines. */
static int skip_space(parser *ps)
{
    while (ps->p < ps->end) {
        char c = *ps->p;

        if (c == '\n') {
            ps->line++;
            ps->p++;
        } else if (c == ' ' || c == '\t' || c == '\r') {
            ps->p++;
        } else if (c == '#' || (c == '/' && ps->p + 1 < ps->end && ps->p[1] == '/')) {
            while (ps->p < ps->end && *ps->p != '\n')
                ps->p++;
        } else if (c == '/' && ps->p + 1 < ps->end && ps->p[1] == '*') {
            int start = ps->line;

            ps->p += 2;
            for (;;) {
                if (ps->p + 1 >= ps->end)
                    return perr(ps, start, SG_EINVAL, "unterminated /* comment");
                if (ps->p[0] == '*' && ps->p[1] == '/') {
                    ps->p += 2;
                    break;
                }
                if (*ps->p == '\n')
                    ps->line++;
                ps->p++;
            }
        } else {
            break;
        }
    }
    return 0;
}

/* Reads the next token into ps->cur. */
static int next(parser *ps)
{
    const char *s;
    char c;
    int rc = skip_space(ps);

    if (rc < 0)
        return rc;
    ps->cur.line = ps->line;
    ps->cur.start = ps->p;
    ps->cur.len = 0;
    if (ps->p >= ps->end) {
        ps->cur.type = T_EOF;
        return 0;
    }
    s = ps->p;
    c = *s;
    switch (c) {
    case '{':
        ps->cur.type = T_LBRACE;
        break;
    case '}':
        ps->cur.type = T_RBRACE;
        break;
    case '[':
        ps->cur.type = T_LBRACK;
        break;
    case ']':
        ps->cur.type = T_RBRACK;
        break;
    case '=':
        ps->cur.type = T_EQUAL;
        break;
    case ',':
        ps->cur.type = T_COMMA;
        break;
    default:
        goto multi;
    }
    ps->p++;
    ps->cur.len = 1;
    return 0;

multi:
    if (c == '"') {
        const char *q = s + 1;

        while (q < ps->end && *q != '"') {
            if (*q == '\n')
                return perr(ps, ps->line, SG_EINVAL, "unterminated string (newline in string)");
            if (*q == '\\')
                q++;
            q++;
        }
        if (q >= ps->end)
            return perr(ps, ps->line, SG_EINVAL, "unterminated string");
        ps->cur.type = T_STRING;
        ps->cur.start = s + 1;
        ps->cur.len = (size_t)(q - s - 1);
        ps->p = q + 1;
        return 0;
    }
    if (is_digit(c) || ((c == '-' || c == '+') && s + 1 < ps->end && is_digit(s[1]))) {
        const char *q = s + 1;

        while (q < ps->end && is_digit(*q))
            q++;
        if (q < ps->end && *q == '.') {
            q++;
            if (q >= ps->end || !is_digit(*q))
                return perr(ps, ps->line, SG_EINVAL, "malformed number \"%.*s\"",
                            (int)(q - s > QUOTE_MAX ? QUOTE_MAX : q - s), s);
            while (q < ps->end && is_digit(*q))
                q++;
        }
        if (q < ps->end && (*q == 'e' || *q == 'E')) {
            q++;
            if (q < ps->end && (*q == '+' || *q == '-'))
                q++;
            if (q >= ps->end || !is_digit(*q))
                return perr(ps, ps->line, SG_EINVAL, "malformed number exponent");
            while (q < ps->end && is_digit(*q))
                q++;
        }
        if (q < ps->end && (is_ident_char(*q) || *q == '"')) {
            const char *r = q;

            while (r < ps->end && is_ident_char(*r) && r - s < QUOTE_MAX)
                r++;
            return perr(ps, ps->line, SG_EINVAL,
                        "malformed number \"%.*s\" (durations and other text need quotes)",
                        (int)(r - s), s);
        }
        ps->cur.type = T_NUMBER;
        ps->cur.len = (size_t)(q - s);
        ps->p = q;
        return 0;
    }
    if (is_ident_start(c)) {
        const char *q = s + 1;

        while (q < ps->end && is_ident_char(*q))
            q++;
        ps->cur.type = T_IDENT;
        ps->cur.len = (size_t)(q - s);
        ps->p = q;
        return 0;
    }
    if (c == '<' && s + 1 < ps->end && s[1] == '<')
        return perr(ps, ps->line, SG_EINVAL, "heredoc strings (<<) are not supported");
    if (c == '\0')
        return perr(ps, ps->line, SG_EINVAL, "NUL byte in input");
    if ((unsigned char)c < 0x20 || (unsigned char)c >= 0x7f)
        return perr(ps, ps->line, SG_EINVAL, "unexpected byte 0x%02x", (unsigned char)c);
    return perr(ps, ps->line, SG_EINVAL, "unexpected character '%c'", c);
}

/* Describes the current token for error messages. */
static void describe(const tok *t, char *buf, size_t n)
{
    int l = (int)(t->len > QUOTE_MAX ? QUOTE_MAX : t->len);

    switch (t->type) {
    case T_EOF:
        snprintf(buf, n, "end of file");
        break;
    case T_IDENT:
        snprintf(buf, n, "identifier \"%.*s\"", l, t->start);
        break;
    case T_STRING:
        snprintf(buf, n, "string \"%.*s\"", l, t->start);
        break;
    case T_NUMBER:
        snprintf(buf, n, "number %.*s", l, t->start);
        break;
    default:
        snprintf(buf, n, "'%c'", *t->start);
        break;
    }
}

static int unexpected(parser *ps, const char *wanted)
{
    char what[96];

    describe(&ps->cur, what, sizeof what);
    return perr(ps, ps->cur.line, SG_EINVAL, "expected %s, found %s", wanted, what);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Appends code point cp to out as UTF-8; returns bytes written. */
static size_t put_utf8(char *out, unsigned long cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Unescapes the current string token into a new heap string. */
static int unescape(parser *ps, char **out, size_t *outlen)
{
    const tok *t = &ps->cur;
    /* Escapes never grow: \uXXXX (6 bytes) is at most 3 UTF-8 bytes, \UXXXXXXXX at most 4. */
    char *buf = malloc(t->len + 1);
    size_t o = 0;

    if (buf == NULL)
        return perr(ps, t->line, SG_ENOMEM, "out of memory");
    for (size_t i = 0; i < t->len; i++) {
        char c = t->start[i];
        unsigned long cp = 0;
        size_t digits = 0;

        if (c != '\\') {
            buf[o++] = c;
            continue;
        }
        c = ++i < t->len ? t->start[i] : '\0';
        switch (c) {
        case '"':
        case '\\':
        case '/':
            buf[o++] = c;
            continue;
        case 'n':
            buf[o++] = '\n';
            continue;
        case 't':
            buf[o++] = '\t';
            continue;
        case 'r':
            buf[o++] = '\r';
            continue;
        case 'b':
            buf[o++] = '\b';
            continue;
        case 'f':
            buf[o++] = '\f';
            continue;
        case 'u':
            digits = 4;
            break;
        case 'U':
            digits = 8;
            break;
        default:
            free(buf);
            if (c >= 0x20 && c < 0x7f)
                return perr(ps, t->line, SG_EINVAL, "unknown escape \"\\%c\" in string", c);
            return perr(ps, t->line, SG_EINVAL, "unknown escape in string");
        }
        for (size_t k = 0; k < digits; k++) {
            int h = ++i < t->len ? hexval(t->start[i]) : -1;

            if (h < 0) {
                free(buf);
                return perr(ps, t->line, SG_EINVAL, "malformed \\%c escape in string", c);
            }
            cp = cp * 16u + (unsigned long)h;
        }
        if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
            free(buf);
            return perr(ps, t->line, SG_EINVAL, "escape \\%c%0*lX is not an allowed character", c,
                        (int)digits, cp);
        }
        o += put_utf8(buf + o, cp);
    }
    buf[o] = '\0';
    *out = buf;
    *outlen = o;
    return 0;
}

static int new_node(parser *ps, sg_hcl_type type, int line, sg_hcl_node **out)
{
    sg_hcl_node *n;

    if (ps->nodes >= SG_HCL_MAX_NODES)
        return perr(ps, line, SG_ETOOBIG, "more than %d values", SG_HCL_MAX_NODES);
    n = calloc(1, sizeof *n);
    if (n == NULL)
        return perr(ps, line, SG_ENOMEM, "out of memory");
    ps->nodes++;
    n->type = type;
    n->line = line;
    *out = n;
    return 0;
}

static int add_item(parser *ps, sg_hcl_node *parent, sg_hcl_node *child, size_t *cap)
{
    if (parent->n == *cap) {
        size_t ncap = *cap == 0 ? 4 : *cap * 2;
        sg_hcl_node **items = realloc(parent->items, ncap * sizeof *items);

        if (items == NULL)
            return perr(ps, child->line, SG_ENOMEM, "out of memory");
        parent->items = items;
        *cap = ncap;
    }
    parent->items[parent->n++] = child;
    return 0;
}

static int parse_value(parser *ps, int depth, sg_hcl_node **out);
static int parse_body(parser *ps, int depth, sg_hcl_node *obj, tok_type closer);

/* Parses a number token's text into node n. */
static int number_node(parser *ps, sg_hcl_node *n)
{
    const tok *t = &ps->cur;
    int64_t v = 0;
    bool neg = false, overflow = false;
    size_t i = 0;

    n->str = strndup(t->start, t->len);
    if (n->str == NULL)
        return perr(ps, t->line, SG_ENOMEM, "out of memory");
    n->len = t->len;
    if (memchr(t->start, '.', t->len) != NULL || memchr(t->start, 'e', t->len) != NULL ||
        memchr(t->start, 'E', t->len) != NULL)
        return 0;
    if (t->start[0] == '-' || t->start[0] == '+') {
        neg = t->start[0] == '-';
        i = 1;
    }
    for (; i < t->len; i++) {
        int d = t->start[i] - '0';

        /* Accumulate negatively so INT64_MIN fits. */
        if (v < (INT64_MIN + d) / 10)
            overflow = true;
        else
            v = v * 10 - d;
    }
    if (overflow || (!neg && v == INT64_MIN))
        return 0;
    n->is_int = true;
    n->ival = neg ? v : -v;
    return 0;
}

/* Parses a list; the current token is '['. */
static int parse_list(parser *ps, int depth, sg_hcl_node *list)
{
    size_t cap = 0;
    int rc = next(ps);

    while (rc == 0) {
        sg_hcl_node *item = NULL;

        if (ps->cur.type == T_RBRACK)
            return next(ps);
        rc = parse_value(ps, depth + 1, &item);
        if (rc < 0)
            break;
        rc = add_item(ps, list, item, &cap);
        if (rc < 0) {
            sg_hcl_free(item);
            break;
        }
        if (ps->cur.type == T_COMMA) {
            rc = next(ps);
        } else if (ps->cur.type != T_RBRACK) {
            rc = unexpected(ps, "',' or ']' in list");
        }
    }
    return rc;
}

/* Parses any value starting at the current token into *out. */
static int parse_value(parser *ps, int depth, sg_hcl_node **out)
{
    sg_hcl_node *n = NULL;
    int line = ps->cur.line;
    int rc;

    if (depth > SG_HCL_MAX_DEPTH)
        return perr(ps, line, SG_EINVAL, "nesting deeper than %d levels", SG_HCL_MAX_DEPTH);
    switch (ps->cur.type) {
    case T_STRING:
        rc = new_node(ps, SG_HCL_STRING, line, &n);
        if (rc == 0)
            rc = unescape(ps, &n->str, &n->len);
        if (rc == 0)
            rc = next(ps);
        break;
    case T_NUMBER:
        rc = new_node(ps, SG_HCL_NUMBER, line, &n);
        if (rc == 0)
            rc = number_node(ps, n);
        if (rc == 0)
            rc = next(ps);
        break;
    case T_IDENT:
        if ((ps->cur.len == 4 && memcmp(ps->cur.start, "true", 4) == 0) ||
            (ps->cur.len == 5 && memcmp(ps->cur.start, "false", 5) == 0)) {
            rc = new_node(ps, SG_HCL_BOOL, line, &n);
            if (rc == 0) {
                n->bval = ps->cur.len == 4;
                rc = next(ps);
            }
            break;
        }
        return perr(ps, line, SG_EINVAL, "unexpected identifier \"%.*s\" (strings need quotes)",
                    (int)(ps->cur.len > QUOTE_MAX ? QUOTE_MAX : ps->cur.len), ps->cur.start);
    case T_LBRACK:
        rc = new_node(ps, SG_HCL_LIST, line, &n);
        if (rc == 0)
            rc = parse_list(ps, depth, n);
        break;
    case T_LBRACE:
        rc = new_node(ps, SG_HCL_OBJECT, line, &n);
        if (rc == 0)
            rc = next(ps);
        if (rc == 0)
            rc = parse_body(ps, depth + 1, n, T_RBRACE);
        break;
    default:
        return unexpected(ps, "a value");
    }
    if (rc < 0) {
        sg_hcl_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

/* Copies the current IDENT or STRING token into a heap string. */
static int take_name(parser *ps, char **out)
{
    size_t len;

    if (ps->cur.type == T_STRING)
        return unescape(ps, out, &len);
    *out = strndup(ps->cur.start, ps->cur.len);
    if (*out == NULL)
        return perr(ps, ps->cur.line, SG_ENOMEM, "out of memory");
    return 0;
}

/* Parses one member: key [labels...] ( '=' value | '{' body '}' ). */
static int parse_member(parser *ps, int depth, sg_hcl_node **out)
{
    char *key = NULL;
    char **labels = NULL;
    size_t nlabels = 0;
    sg_hcl_node *val = NULL;
    int line = ps->cur.line;
    int rc = take_name(ps, &key);

    if (rc == 0)
        rc = next(ps);
    while (rc == 0 && (ps->cur.type == T_STRING || ps->cur.type == T_IDENT)) {
        char **nl;

        if (nlabels >= 8) {
            rc =
                perr(ps, ps->cur.line, SG_EINVAL, "too many labels after \"%.*s\"", QUOTE_MAX, key);
            break;
        }
        nl = realloc(labels, (nlabels + 1) * sizeof *nl);
        if (nl == NULL) {
            rc = perr(ps, ps->cur.line, SG_ENOMEM, "out of memory");
            break;
        }
        labels = nl;
        rc = take_name(ps, &labels[nlabels]);
        if (rc < 0)
            break;
        nlabels++;
        rc = next(ps);
    }
    if (rc == 0) {
        if (ps->cur.type == T_EQUAL && nlabels == 0) {
            rc = next(ps);
            if (rc == 0)
                rc = parse_value(ps, depth, &val);
        } else if (ps->cur.type == T_LBRACE) {
            rc = parse_value(ps, depth, &val);
        } else if (nlabels == 0) {
            char what[96];

            describe(&ps->cur, what, sizeof what);
            rc = perr(ps, ps->cur.line, SG_EINVAL,
                      "expected '=' or '{' after key \"%.*s\", found %s", QUOTE_MAX, key, what);
        } else {
            rc = unexpected(ps, "'{' after block labels");
        }
    }
    if (rc < 0) {
        free(key);
        for (size_t i = 0; i < nlabels; i++)
            free(labels[i]);
        free(labels);
        return rc;
    }
    val->key = key;
    val->labels = labels;
    val->nlabels = nlabels;
    val->line = line;
    *out = val;
    return 0;
}

/* Parses members into obj until closer ('}' or end of file) and consumes it. */
static int parse_body(parser *ps, int depth, sg_hcl_node *obj, tok_type closer)
{
    size_t cap = 0;
    int open_line = obj->line;

    if (depth > SG_HCL_MAX_DEPTH)
        return perr(ps, ps->cur.line, SG_EINVAL, "nesting deeper than %d levels", SG_HCL_MAX_DEPTH);
    for (;;) {
        sg_hcl_node *m = NULL;
        int rc;

        if (ps->cur.type == closer)
            return closer == T_EOF ? 0 : next(ps);
        if (ps->cur.type == T_EOF)
            return perr(ps, ps->cur.line, SG_EINVAL, "missing '}' for the '{' on line %d",
                        open_line);
        if (ps->cur.type != T_IDENT && ps->cur.type != T_STRING)
            return unexpected(ps, closer == T_EOF ? "a key" : "a key or '}'");
        rc = parse_member(ps, depth, &m);
        if (rc < 0)
            return rc;
        rc = add_item(ps, obj, m, &cap);
        if (rc < 0) {
            sg_hcl_free(m);
            return rc;
        }
        if (ps->cur.type == T_COMMA) {
            rc = next(ps);
            if (rc < 0)
                return rc;
        }
    }
}

int sg_hcl_parse(const char *name, const char *text, size_t len, sg_hcl_node **out, sg_err *err)
{
    parser ps;
    sg_hcl_node *root = NULL;
    int rc;

    memset(&ps, 0, sizeof ps);
    ps.name = name != NULL ? name : "<input>";
    ps.p = text;
    ps.end = text + len;
    ps.line = 1;
    ps.err = err;
    if (text == NULL && len > 0)
        return sg_err_set(err, SG_EINVAL, "%s: no input", ps.name);
    if (len > SG_HCL_MAX_INPUT)
        return sg_err_set(err, SG_ETOOBIG, "%s: larger than %u bytes", ps.name,
                          (unsigned)SG_HCL_MAX_INPUT);
    if (text != NULL && memchr(text, '\0', len) != NULL) {
        const char *z = memchr(text, '\0', len);
        int line = 1;

        for (const char *q = text; q < z; q++)
            line += *q == '\n';
        return perr(&ps, line, SG_EINVAL, "NUL byte in input");
    }
    rc = new_node(&ps, SG_HCL_OBJECT, 1, &root);
    if (rc == 0)
        rc = next(&ps);
    if (rc == 0)
        rc = parse_body(&ps, 0, root, T_EOF);
    if (rc < 0) {
        sg_hcl_free(root);
        return rc;
    }
    *out = root;
    return 0;
}

void sg_hcl_free(sg_hcl_node *n)
{
    if (n == NULL)
        return;
    for (size_t i = 0; i < n->n; i++)
        sg_hcl_free(n->items[i]);
    free(n->items);
    for (size_t i = 0; i < n->nlabels; i++)
        free(n->labels[i]);
    free(n->labels);
    free(n->key);
    free(n->str);
    free(n);
}

const char *sg_hcl_type_name(sg_hcl_type t)
{
    switch (t) {
    case SG_HCL_STRING:
        return "string";
    case SG_HCL_NUMBER:
        return "number";
    case SG_HCL_BOOL:
        return "bool";
    case SG_HCL_LIST:
        return "list";
    case SG_HCL_OBJECT:
        return "object";
    }
    return "unknown";
}
