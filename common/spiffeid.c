/*
 * SPIFFE ID and trust domain validation. Each check cites the clause of
 * SPIFFE-ID.md it enforces. Parsing is a single left-to-right scan with no
 * URI library, so nothing the spec forbids can slip through normalisation.
 */
#include "common/spiffeid.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define SCHEME     "spiffe://"
#define SCHEME_LEN (sizeof SCHEME - 1)
#define QUOTE_MAX  80

/* SPIFFE-ID 2.1: trust domain chars are [a-z0-9.-_]. */
static int td_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

/* SPIFFE-ID 2.2: path segment chars are [a-zA-Z0-9.-_]. */
static int path_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

/* Explains why td char c is refused; s is the whole input for quoting. */
static int td_char_error(const char *s, char c, sg_err *err)
{
    if (c >= 'A' && c <= 'Z')
        return sg_err_set(err, SG_EINVAL, "trust domain must be lower case in \"%.*s\"", QUOTE_MAX,
                          s);
    if (c == ':')
        return sg_err_set(err, SG_EINVAL, "trust domain must not have a port in \"%.*s\"",
                          QUOTE_MAX, s);
    if (c == '@')
        return sg_err_set(err, SG_EINVAL, "trust domain must not have userinfo in \"%.*s\"",
                          QUOTE_MAX, s);
    if (c == '%')
        return sg_err_set(err, SG_EINVAL, "trust domain must not be percent-encoded in \"%.*s\"",
                          QUOTE_MAX, s);
    if (c == '?' || c == '#')
        return sg_err_set(err, SG_EINVAL, "SPIFFE ID must not have a query or fragment: \"%.*s\"",
                          QUOTE_MAX, s);
    return sg_err_set(err, SG_EINVAL,
                      "trust domain has a character outside [a-z0-9.-_] in \"%.*s\"", QUOTE_MAX, s);
}

/*
 * Validates the trust domain name td[0..len) (no scheme). s is the whole
 * input, quoted in errors.
 */
static int check_td(const char *s, const char *td, size_t len, sg_err *err)
{
    /* SPIFFE-ID 2.1: the host part MUST NOT be empty. */
    if (len == 0)
        return sg_err_set(err, SG_EINVAL, "trust domain is empty in \"%.*s\"", QUOTE_MAX, s);
    /* SPIFFE-ID 2.3: the host is at most 255 bytes. */
    if (len > SG_TRUST_DOMAIN_MAX)
        return sg_err_set(err, SG_EINVAL, "trust domain is longer than %d bytes in \"%.*s...\"",
                          SG_TRUST_DOMAIN_MAX, QUOTE_MAX, s);
    for (size_t i = 0; i < len; i++)
        if (!td_char_ok(td[i]))
            return td_char_error(s, td[i], err);
    return 0;
}

/* Validates path (possibly "") per SPIFFE-ID 2.2. s is quoted in errors. */
static int check_path(const char *s, const char *path, sg_err *err)
{
    const char *p = path;

    if (*p == '\0')
        return 0;
    if (*p != '/')
        return sg_err_set(err, SG_EINVAL, "path must start with '/' in \"%.*s\"", QUOTE_MAX, s);
    while (*p == '/') {
        const char *seg = ++p;
        size_t n;

        while (*p != '\0' && *p != '/') {
            if (*p == '%')
                return sg_err_set(err, SG_EINVAL, "path must not be percent-encoded in \"%.*s\"",
                                  QUOTE_MAX, s);
            if (*p == '?' || *p == '#')
                return sg_err_set(err, SG_EINVAL,
                                  "SPIFFE ID must not have a query or fragment: \"%.*s\"",
                                  QUOTE_MAX, s);
            if (!path_char_ok(*p))
                return sg_err_set(err, SG_EINVAL,
                                  "path segment has a character outside [a-zA-Z0-9.-_] in "
                                  "\"%.*s\"",
                                  QUOTE_MAX, s);
            p++;
        }
        n = (size_t)(p - seg);
        if (n == 0 && *p == '\0')
            return sg_err_set(err, SG_EINVAL, "path must not end with '/' in \"%.*s\"", QUOTE_MAX,
                              s);
        if (n == 0)
            return sg_err_set(err, SG_EINVAL, "path has an empty segment in \"%.*s\"", QUOTE_MAX,
                              s);
        if ((n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
            return sg_err_set(err, SG_EINVAL,
                              "path must not contain \".\" or \"..\" segments in \"%.*s\"",
                              QUOTE_MAX, s);
    }
    return 0;
}

/* Checks the scheme; on success *rest points just past "spiffe://". */
static int check_scheme(const char *s, const char **rest, sg_err *err)
{
    /* SPIFFE-ID 2: the scheme MUST be "spiffe"; sigil accepts the canonical lower case only. */
    if (strncmp(s, SCHEME, SCHEME_LEN) != 0) {
        if (strncasecmp(s, SCHEME, SCHEME_LEN) == 0)
            return sg_err_set(err, SG_EINVAL, "scheme must be lower case \"spiffe\" in \"%.*s\"",
                              QUOTE_MAX, s);
        return sg_err_set(err, SG_EINVAL, "SPIFFE ID must start with \"spiffe://\": \"%.*s\"",
                          QUOTE_MAX, s);
    }
    *rest = s + SCHEME_LEN;
    return 0;
}

int sg_spiffeid_parse(const char *s, sg_spiffeid *out, sg_err *err)
{
    const char *td = NULL, *slash;
    size_t len, tdlen;
    int rc;

    if (s == NULL || *s == '\0')
        return sg_err_set(err, SG_EINVAL, "SPIFFE ID is empty");
    len = strlen(s);
    /* SPIFFE-ID 2.3: IDs up to 2048 bytes; longer ones are refused. */
    if (len > SG_SPIFFEID_MAX)
        return sg_err_set(err, SG_EINVAL, "SPIFFE ID is longer than %d bytes: \"%.*s...\"",
                          SG_SPIFFEID_MAX, QUOTE_MAX, s);
    rc = check_scheme(s, &td, err);
    if (rc < 0)
        return rc;
    slash = strchr(td, '/');
    tdlen = slash != NULL ? (size_t)(slash - td) : strlen(td);
    rc = check_td(s, td, tdlen, err);
    if (rc < 0)
        return rc;
    rc = check_path(s, td + tdlen, err);
    if (rc < 0)
        return rc;
    memcpy(out->str, s, len + 1);
    memcpy(out->td, td, tdlen);
    out->td[tdlen] = '\0';
    out->path = out->str + SCHEME_LEN + tdlen;
    return 0;
}

int sg_trust_domain_parse(const char *s, char *out, sg_err *err)
{
    const char *td = s;
    size_t len;
    int rc;

    if (s == NULL || *s == '\0')
        return sg_err_set(err, SG_EINVAL, "trust domain is empty");
    if (strstr(s, "://") != NULL) {
        rc = check_scheme(s, &td, err);
        if (rc < 0)
            return rc;
    }
    len = strcspn(td, "/");
    if (td[len] == '/' && td[len + 1] != '\0')
        return sg_err_set(err, SG_EINVAL, "trust domain must not have a path: \"%.*s\"", QUOTE_MAX,
                          s);
    if (td[len] == '/')
        return sg_err_set(err, SG_EINVAL, "trust domain must not end with '/': \"%.*s\"", QUOTE_MAX,
                          s);
    rc = check_td(s, td, len, err);
    if (rc < 0)
        return rc;
    memcpy(out, td, len);
    out[len] = '\0';
    return 0;
}

bool sg_spiffeid_member_of(const sg_spiffeid *id, const char *td)
{
    return id != NULL && td != NULL && strcmp(id->td, td) == 0;
}

int sg_spiffeid_from_parts(const char *td, const char *path, sg_spiffeid *out, sg_err *err)
{
    char buf[SG_SPIFFEID_MAX + 2];
    int n;

    if (td == NULL || path == NULL)
        return sg_err_set(err, SG_EINVAL, "trust domain and path are required");
    if (*path != '\0' && *path != '/')
        return sg_err_set(err, SG_EINVAL, "path \"%.*s\" must start with '/'", QUOTE_MAX, path);
    n = snprintf(buf, sizeof buf, SCHEME "%s%s", td, path);
    if (n < 0 || (size_t)n > SG_SPIFFEID_MAX)
        return sg_err_set(err, SG_EINVAL, "SPIFFE ID for \"%.*s\" is longer than %d bytes",
                          QUOTE_MAX, path, SG_SPIFFEID_MAX);
    /* The trust domain must not smuggle in a path of its own. */
    if (strchr(td, '/') != NULL)
        return sg_err_set(err, SG_EINVAL, "trust domain \"%.*s\" must not contain '/'", QUOTE_MAX,
                          td);
    return sg_spiffeid_parse(buf, out, err);
}

bool sg_spiffeid_is_reserved(const sg_spiffeid *id)
{
    return strcmp(id->path, "/spire") == 0 || strncmp(id->path, "/spire/", 7) == 0;
}
