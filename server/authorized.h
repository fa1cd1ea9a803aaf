/*
 * The server's in-memory authorisation index: every registration entry,
 * held in an immutable snapshot that is swapped whole when entries change,
 * plus a cache of attested-agent records. The node API asks it which
 * entries an agent may fetch and mint, and whether a presented agent
 * certificate is current, without touching the datastore per SVID.
 *
 * Entries authorised for agent A: entries whose parent_id is A; entries
 * whose parent_id is the SPIFFE ID of an entry already in the set
 * (recursively, cycle-safe); and node-alias entries (parent_id
 * spiffe://<td>/spire/server) whose selectors are all among A's node
 * selectors, where every agent implicitly holds spiffe_id:<A> - together
 * with everything parented to those aliases.
 */
#ifndef SG_SERVER_AUTHORIZED_H
#define SG_SERVER_AUTHORIZED_H

#include "common/err.h"
#include "common/selector.h"
#include "server/datastore.h"

#include <stddef.h>
#include <stdint.h>

typedef struct sg_authz sg_authz;

/* The entries one agent is authorised for; immutable, reference-counted. */
typedef struct sg_authz_view sg_authz_view;

/* Creates an empty index for trust domain td (copied). Thread: any. */
int sg_authz_new(sg_authz **out, const char *td, sg_err *err);

/* Frees the index. Views still held keep their snapshot alive. NULL-safe. */
void sg_authz_free(sg_authz *a);

/*
 * Replaces every entry with copies of entries[0..n) and sets the index
 * revision. Cached per-agent views are dropped with the old snapshot.
 * Thread-safe; readers keep using the snapshot they hold.
 */
int sg_authz_set_entries(sg_authz *a, const sg_entry *entries, size_t n, int64_t revision,
                         sg_err *err);

/* Lists every entry and the revision from ds and calls sg_authz_set_entries. */
int sg_authz_reload(sg_authz *a, sg_datastore *ds, sg_err *err);

/* Revision of the current snapshot. Thread-safe. */
int64_t sg_authz_revision(sg_authz *a);

/*
 * The entries authorised for agent_id with node selectors sel[0..nsel).
 * The result is cached per agent in the current snapshot, so a repeated
 * call is a hash lookup. *out must be released with sg_authz_view_release.
 */
int sg_authz_view_get(sg_authz *a, const char *agent_id, const sg_selector *sel, size_t nsel,
                      sg_authz_view **out, sg_err *err);

/* Number of entries in v, the i-th one (ordered by entry id), the snapshot revision. */
size_t sg_authz_view_count(const sg_authz_view *v);
const sg_entry *sg_authz_view_entry(const sg_authz_view *v, size_t i);
int64_t sg_authz_view_revision(const sg_authz_view *v);

/* The entry with id in v, or NULL when v does not hold it. O(log n). */
const sg_entry *sg_authz_view_find(const sg_authz_view *v, const char *entry_id);

/* Releases a view from sg_authz_view_get. NULL-safe. */
void sg_authz_view_release(sg_authz_view *v);

/*
 * Forgets the cached record and cached view of agent_id (after an evict,
 * ban or new attestation). NULL forgets every agent. Thread-safe.
 */
void sg_authz_forget_agent(sg_authz *a, const char *agent_id);

/*
 * Authenticates an agent presenting a certificate with serial (hex): the
 * record must exist (from the cache, else ds), not be banned, and serial
 * must be its current or previous serial. When it is the current serial
 * and a previous one is still recorded, the previous one is cleared (in
 * ds too). On success *view (may be NULL) receives the agent's authorised
 * entries. SG_EPERM with a reason when refused.
 */
int sg_authz_agent_auth(sg_authz *a, sg_datastore *ds, const char *agent_id, const char *serial,
                        sg_authz_view **view, sg_err *err);

/*
 * The entries agent_id is authorised for now, from its record (cache, else
 * ds) without a certificate check: for pushing state to a stream that was
 * authenticated when it opened. SG_ENOENT when the agent has no record
 * (evicted), SG_EPERM when it is banned.
 */
int sg_authz_agent_view(sg_authz *a, sg_datastore *ds, const char *agent_id, sg_authz_view **view,
                        sg_err *err);

/*
 * Stores rec (in ds when ds is not NULL, then in the cache) and drops the
 * agent's cached view, since its node selectors may have changed.
 */
int sg_authz_agent_put(sg_authz *a, sg_datastore *ds, const sg_agent_rec *rec, sg_err *err);

/*
 * Records a renewed agent SVID: prev_serial = current serial, serial =
 * new_serial, expires_at; written to ds and the cache.
 */
int sg_authz_agent_renew(sg_authz *a, sg_datastore *ds, const char *agent_id,
                         const char *new_serial, int64_t expires_at, sg_err *err);

#endif
