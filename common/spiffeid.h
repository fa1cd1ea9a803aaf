/*
 * SPIFFE IDs and trust domain names, validated per SPIFFE-ID.md.
 */
#ifndef SG_COMMON_SPIFFEID_H
#define SG_COMMON_SPIFFEID_H

#include "common/err.h"

#include <stdbool.h>

#define SG_TRUST_DOMAIN_MAX 255  /* SPIFFE-ID 2.1: at most 255 bytes */
#define SG_SPIFFEID_MAX     2048 /* SPIFFE-ID 2.3: URIs up to 2048 bytes */

/*
 * A parsed SPIFFE ID. Open value type; all fields are read-only after
 * sg_spiffeid_parse. `path` points into `str` ("" for the trust domain ID).
 */
typedef struct sg_spiffeid {
    char str[SG_SPIFFEID_MAX + 1];    /* the full ID, "spiffe://td/path" */
    char td[SG_TRUST_DOMAIN_MAX + 1]; /* trust domain name */
    const char *path;                 /* "" or "/seg/seg" */
} sg_spiffeid;

/*
 * Parses s as a SPIFFE ID and checks every rule of SPIFFE-ID.md: scheme
 * "spiffe" (lower case), trust domain chars [a-z0-9.-_], path segments of
 * [A-Za-z0-9.-_] that are not empty, "." or "..", no trailing slash, no
 * query, fragment, port, userinfo or percent-encoding. On error err quotes s.
 */
int sg_spiffeid_parse(const char *s, sg_spiffeid *out, sg_err *err);

/*
 * Parses a trust domain name, accepting either "example.org" or
 * "spiffe://example.org" (as SPIRE does), into out (SG_TRUST_DOMAIN_MAX+1 bytes).
 */
int sg_trust_domain_parse(const char *s, char *out, sg_err *err);

/* Whether id belongs to trust domain td. */
bool sg_spiffeid_member_of(const sg_spiffeid *id, const char *td);

/*
 * Whether id lies under the path SPIRE and sigil reserve for their own
 * identities ("/spire", "/spire/server", "/spire/agent/..."). Workload
 * entries must never receive such an ID: an SVID for spiffe://<td>/spire/server
 * would let a workload impersonate the server to agents.
 */
bool sg_spiffeid_is_reserved(const sg_spiffeid *id);

/*
 * Builds "spiffe://<td><path>" into out and validates it. path must start
 * with "/" or be "". Returns 0 or SG_EINVAL.
 */
int sg_spiffeid_from_parts(const char *td, const char *path, sg_spiffeid *out, sg_err *err);

#endif
