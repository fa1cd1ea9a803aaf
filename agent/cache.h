/*
 * The agent's cache: the entries it is authorised for, one X509-SVID per
 * entry, the trust bundle, and the subscribers (open Workload API streams)
 * told when their view changes. Loop-thread-only: no function here may be
 * called from another thread, so it takes no locks.
 */
#ifndef SG_AGENT_CACHE_H
#define SG_AGENT_CACHE_H

#include "agent/node_client.h"
#include "common/bundle.h"
#include "common/err.h"
#include "common/selector.h"
#include "common/x509.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sg_cache sg_cache;
typedef struct sg_cache_sub sg_cache_sub;

/* An SVID held for an entry. Read-only for callers; owned by the cache. */
typedef struct sg_cache_svid {
    char *spiffe_id;
    uint8_t *chain; /* concatenated DER certificates, leaf first */
    size_t chain_len;
    uint8_t *key; /* PKCS#8 DER private key (wiped on free) */
    size_t key_len;
    int64_t not_after; /* unix seconds */
    int64_t renew_at;  /* unix seconds: re-mint from then on */
    int64_t revision;  /* revision of the entry it was minted for */
    char serial[41];
    char authority_id[81]; /* signing CA, "" when unknown */
} sg_cache_svid;

/* One identity of a workload: a matching entry and its SVID (borrowed from the cache). */
typedef struct sg_cache_identity {
    const sg_agent_entry *entry;
    const sg_cache_svid *svid;
} sg_cache_identity;

/* trust_domain (borrowed, copied) names the bundle: "spiffe://<td>". */
int sg_cache_new(sg_cache **out, const char *trust_domain, sg_err *err);

/* Frees the cache, its SVIDs (keys wiped) and any subscriptions left. NULL-safe. */
void sg_cache_free(sg_cache *c);

/*
 * Replaces the entry list. Takes entries (a malloc'd array, or NULL when
 * n == 0) and everything in it, also on error. SVIDs of entries that are
 * still present with the same SPIFFE ID are kept; the rest are dropped.
 */
int sg_cache_set_entries(sg_cache *c, sg_agent_entry *entries, size_t n, sg_err *err);

/* Replaces the bundle; takes b's contents and leaves *b empty. Same bytes: no change. */
int sg_cache_set_bundle(sg_cache *c, sg_agent_bundle *b, sg_err *err);

/*
 * Stores the SVID minted for entry_id (all arguments borrowed and copied):
 * chain[0..nchain) leaf first, key as PKCS#8 DER. revision is the entry
 * revision the mint request was made for. SG_ENOENT when the entry has
 * gone meanwhile (the SVID is then dropped).
 */
int sg_cache_put_svid(sg_cache *c, const char *entry_id, int64_t revision, const sg_der *chain,
                      size_t nchain, const uint8_t *key, size_t key_len, int64_t not_after,
                      int64_t renew_at, const char *serial, const char *authority_id, sg_err *err);

/*
 * Makes every SVID signed by one of the authorities ids[0..n) due now
 * (compromise recovery: the server tainted those CA keys). Returns how many.
 */
size_t sg_cache_taint(sg_cache *c, char *const *ids, size_t n);

/*
 * Entries that need an SVID at time now: none held, minted for an older
 * revision of the entry, or past renew_at. *out is a malloc'd array of
 * borrowed pointers (valid until the entries change); free() it.
 */
int sg_cache_due(const sg_cache *c, int64_t now, const sg_agent_entry ***out, size_t *n);

/*
 * Records that the server refused to mint an SVID for entry_id: the entry
 * is not due again before retry_at (unix seconds), or until it changes.
 */
void sg_cache_mint_refused(sg_cache *c, const char *entry_id, int64_t retry_at);

/*
 * The earliest time (unix seconds) at which some entry needs an SVID: now
 * or earlier when one is due already, INT64_MAX when nothing will come due.
 */
int64_t sg_cache_next_due(const sg_cache *c);

/*
 * The identities of a workload with selectors sels at time now: entries
 * whose selectors are all among sels and that hold an unexpired SVID.
 * *out is malloc'd (free()), its pointers borrowed until the cache next
 * changes. *nentries (may be NULL) counts matching entries with or without
 * an SVID, so callers can tell "no identity" from "not minted yet".
 */
int sg_cache_match(const sg_cache *c, const sg_selector_set *sels, int64_t now,
                   sg_cache_identity **out, size_t *n, size_t *nentries);

/*
 * The entries matching sels, whether or not they hold an SVID, in id
 * order. *out is malloc'd (free()), its pointers borrowed until the
 * entries change.
 */
int sg_cache_match_entries(const sg_cache *c, const sg_selector_set *sels,
                           const sg_agent_entry ***out, size_t *n);

/* Whether a bundle has been stored. */
bool sg_cache_has_bundle(const sg_cache *c);

/* The bundle as concatenated DER certificates (borrowed; NULL/0 before one is set). */
const uint8_t *sg_cache_bundle_der(const sg_cache *c, size_t *len);

/* "spiffe://<td>", the key of the bundle in Workload API maps (borrowed). */
const char *sg_cache_bundle_name(const sg_cache *c);

/* ------------------------------------------------------------ JWT keys, federation */

/*
 * Replaces the JWT signing keys of the agent's own trust domain. Takes
 * keys[0..n) (a malloc'd array, or NULL when n == 0, with heap-owned
 * members), also on error. Same kids and keys: no change.
 */
int sg_cache_set_jwt_keys(sg_cache *c, sg_jwt_key *keys, size_t n, sg_err *err);

/* Whether the own trust domain's JWT keys have been stored (possibly none). */
bool sg_cache_has_jwt_keys(const sg_cache *c);

/*
 * The JWKS (jwt-svid keys only, as FetchJWTBundles sends it) of the own
 * trust domain, borrowed; "{"keys":[]}" before any key is known.
 */
const char *sg_cache_jwt_jwks(const sg_cache *c, size_t *len);

/*
 * Replaces the bundles of foreign trust domains. Takes b[0..n) (a malloc'd
 * array, or NULL, and every member), also on error. A bundle whose
 * authorities did not change keeps its place for subscribers (no new
 * message); a new, changed or removed one notifies those that federate
 * with its trust domain on the next flush.
 */
int sg_cache_set_federated(sg_cache *c, sg_bundle *b, size_t n, sg_err *err);

/* A foreign trust domain's bundle in the forms the Workload API sends. Borrowed. */
typedef struct sg_cache_federated {
    const char *name; /* "spiffe://<td>" */
    const sg_bundle *bundle;
    const uint8_t *der; /* X.509 authorities, concatenated DER (may be empty) */
    size_t der_len;
    const char *jwks; /* jwt-svid keys as a JWKS */
    size_t jwks_len;
} sg_cache_federated;

/* The bundle of foreign trust domain td (name without "spiffe://"), or NULL. */
const sg_cache_federated *sg_cache_federated_get(const sg_cache *c, const char *td);

/* How many foreign bundles are held. */
size_t sg_cache_nfederated(const sg_cache *c);

/*
 * The bundle used to check a JWT-SVID of trust domain td (no "spiffe://"):
 * the own trust domain's (JWT keys only) or a foreign one the agent
 * holds; NULL otherwise. Borrowed until the cache next changes.
 */
const sg_bundle *sg_cache_jwt_bundle(const sg_cache *c, const char *td);

/*
 * The distinct foreign trust domains (names without "spiffe://", sorted)
 * that the entries matching sels federate with. *out is malloc'd (free()),
 * the strings borrowed until the entries change.
 */
int sg_cache_federates_of(const sg_cache *c, const sg_selector_set *sels, const char ***out,
                          size_t *n);

/* The own trust domain name, without "spiffe://" (borrowed). */
const char *sg_cache_trust_domain(const sg_cache *c);

/* The entry with id, or NULL (borrowed until the entries change). */
const sg_agent_entry *sg_cache_entry(const sg_cache *c, const char *id);

size_t sg_cache_nentries(const sg_cache *c);
size_t sg_cache_nsvids(const sg_cache *c);
size_t sg_cache_nsubscribers(const sg_cache *c);

/* ------------------------------------------------------------ subscribers */

/*
 * What a subscriber watches: its identities (and the bundles), only the
 * X.509 bundles, or only the JWT bundles (own and federated).
 */
typedef enum sg_cache_watch {
    SG_CACHE_WATCH_SVIDS,
    SG_CACHE_WATCH_BUNDLES,
    SG_CACHE_WATCH_JWT_BUNDLES,
} sg_cache_watch;

/* Called from sg_cache_flush when the subscriber's view changed. May unsubscribe. */
typedef void (*sg_cache_notify_fn)(sg_cache *c, sg_cache_sub *sub, void *user);

/*
 * Subscribes a workload with selectors sels (borrowed: must stay valid
 * until sg_cache_unsubscribe). The current view is taken as already seen:
 * the caller sends its first message itself.
 */
int sg_cache_subscribe(sg_cache *c, sg_cache_watch what, const sg_selector_set *sels,
                       sg_cache_notify_fn fn, void *user, int64_t now, sg_cache_sub **out,
                       sg_err *err);

/* Ends a subscription; safe inside its own or another notify callback. NULL-safe. */
void sg_cache_unsubscribe(sg_cache *c, sg_cache_sub *sub);

/*
 * Tells every subscriber whose view (its identities and their serials, the
 * bundle) changed since it was last told. Mutators only record changes;
 * call this once after a batch of them.
 */
void sg_cache_flush(sg_cache *c, int64_t now);

#endif
