/*
 * The server's storage interface: registration entries, join tokens,
 * attested agents, federated bundles and federation relationships. One narrow vtable so PostgreSQL
 * can join SQLite without touching callers. Every function is thread-safe on one handle.
 */
#ifndef SG_SERVER_DATASTORE_H
#define SG_SERVER_DATASTORE_H

#include "common/err.h"
#include "common/selector.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SG_ENTRY_ID_LEN 36 /* UUID text */

/* A registration entry. Strings and arrays are heap-owned (sg_entry_cleanup). */
typedef struct sg_entry {
    char id[SG_ENTRY_ID_LEN + 1];
    char *spiffe_id;
    char *parent_id;
    sg_selector *selectors; /* sorted by (type, value), no duplicates */
    size_t nselectors;
    int32_t x509_svid_ttl; /* seconds; 0 = server default */
    int32_t jwt_svid_ttl;  /* seconds; 0 = server default */
    char **dns_names;
    size_t ndns;
    char *hint;            /* may be NULL */
    char **federates_with; /* foreign trust domains as "spiffe://<td>" */
    size_t nfederates_with;
    bool downstream;
    bool admin;
    int64_t revision;   /* bumped on every change; unique across all entries */
    int64_t created_at; /* unix seconds */
} sg_entry;

void sg_entry_cleanup(sg_entry *e);
/* Deep copy; dst is overwritten. */
int sg_entry_copy(sg_entry *dst, const sg_entry *src);
/* Frees an array from a list call. */
void sg_entry_list_free(sg_entry *list, size_t n);

/* Filter for entry listing; NULL / 0 fields match anything. */
typedef struct sg_entry_filter {
    const char *spiffe_id;
    const char *parent_id;
    const sg_selector *selectors; /* entries holding all of these */
    size_t nselectors;
} sg_entry_filter;

/* An attested agent. */
typedef struct sg_agent_rec {
    char *spiffe_id;
    char *attestation_type; /* "join_token" */
    char serial[41];        /* current SVID serial (hex) */
    char prev_serial[41];   /* previous one, accepted until the agent presents serial */
    int64_t expires_at;     /* current SVID notAfter */
    int64_t attested_at;
    bool banned;
    sg_selector *selectors; /* node selectors from attestation */
    size_t nselectors;
} sg_agent_rec;

void sg_agent_rec_cleanup(sg_agent_rec *a);
void sg_agent_rec_list_free(sg_agent_rec *list, size_t n);

typedef struct sg_datastore sg_datastore;

/*
 * Opens a datastore of type ("sqlite3") at conn (a file path for SQLite),
 * creating it (file mode 0600) and running schema migrations. A database
 * with a newer schema than this binary knows is refused.
 */
int sg_datastore_open(sg_datastore **out, const char *type, const char *conn, sg_err *err);
void sg_datastore_close(sg_datastore *ds);

/*
 * Entries. Every federates_with trust domain must have a federated bundle
 * (SG_ENOENT naming it otherwise), as SPIRE requires. create assigns a new UUID when e->id is
 * empty, a new revision and created_at (written back into e), and refuses (SG_EEXIST) an entry with
 * the same spiffe_id, parent_id and selector set, or an existing id.
 */
int sg_ds_entry_create(sg_datastore *ds, sg_entry *e, sg_err *err);
/* Replaces the entry with e->id (SG_ENOENT if missing); new revision written back. */
int sg_ds_entry_update(sg_datastore *ds, sg_entry *e, sg_err *err);
int sg_ds_entry_delete(sg_datastore *ds, const char *id, sg_err *err);
int sg_ds_entry_get(sg_datastore *ds, const char *id, sg_entry *out, sg_err *err);
/* Entries matching f (may be NULL), ordered by id. *list is malloc'd. */
int sg_ds_entry_list(sg_datastore *ds, const sg_entry_filter *f, sg_entry **list, size_t *n,
                     sg_err *err);
/* Highest entry revision ever assigned (deletes count too), 0 when none. */
int sg_ds_entry_revision(sg_datastore *ds, int64_t *out, sg_err *err);

/* Join tokens: only a SHA-256 hash of the token is stored. */
int sg_ds_token_create(sg_datastore *ds, const char *token, int64_t expires_at, sg_err *err);
/*
 * Consumes token atomically: SG_ENOENT when unknown or already used,
 * SG_EEXPIRED when past expires_at (the token is deleted either way).
 */
int sg_ds_token_consume(sg_datastore *ds, const char *token, int64_t now, sg_err *err);
/* Deletes expired tokens. */
int sg_ds_token_prune(sg_datastore *ds, int64_t now, sg_err *err);

/* Agents. put inserts or replaces by spiffe_id. */
int sg_ds_agent_put(sg_datastore *ds, const sg_agent_rec *a, sg_err *err);
int sg_ds_agent_get(sg_datastore *ds, const char *spiffe_id, sg_agent_rec *out, sg_err *err);
int sg_ds_agent_list(sg_datastore *ds, sg_agent_rec **list, size_t *n, sg_err *err);
/* Evict: forget the agent (it must attest again). */
int sg_ds_agent_delete(sg_datastore *ds, const char *spiffe_id, sg_err *err);
int sg_ds_agent_set_banned(sg_datastore *ds, const char *spiffe_id, bool banned, sg_err *err);

/* ------------------------------------------------------------ federation */

/* A foreign trust domain's bundle as stored (SPIFFE bundle JSON). */
typedef struct sg_fed_bundle_rec {
    char *trust_domain; /* the name, without "spiffe://" */
    char *jwks;         /* SPIFFE bundle JSON */
    uint64_t sequence;  /* its spiffe_sequence (0 = absent) */
    int64_t updated_at; /* unix seconds of the last write */
} sg_fed_bundle_rec;

void sg_fed_bundle_rec_cleanup(sg_fed_bundle_rec *b);
void sg_fed_bundle_rec_list_free(sg_fed_bundle_rec *list, size_t n);

/*
 * Stores the bundle of trust_domain (a valid name, not "spiffe://...").
 * A sequence lower than the stored one is refused with SG_EINVAL: a
 * bundle's spiffe_sequence never goes backwards. *changed (may be NULL)
 * tells whether the stored JSON or sequence changed.
 */
int sg_ds_fed_bundle_put(sg_datastore *ds, const char *trust_domain, const char *jwks,
                         uint64_t sequence, bool *changed, sg_err *err);
int sg_ds_fed_bundle_get(sg_datastore *ds, const char *trust_domain, sg_fed_bundle_rec *out,
                         sg_err *err);
/* Every federated bundle, ordered by trust domain. */
int sg_ds_fed_bundle_list(sg_datastore *ds, sg_fed_bundle_rec **list, size_t *n, sg_err *err);

/* What happens to entries that federate with a bundle being deleted (SPIRE's modes). */
typedef enum sg_fed_delete_mode {
    SG_FED_DELETE_RESTRICT,   /* refuse (SG_EPERM) while an entry federates with it */
    SG_FED_DELETE_DELETE,     /* delete those entries too */
    SG_FED_DELETE_DISSOCIATE, /* remove the trust domain from those entries */
} sg_fed_delete_mode;

/* Deletes the bundle; *entries_changed (may be NULL) counts entries deleted or updated. */
int sg_ds_fed_bundle_delete(sg_datastore *ds, const char *trust_domain, sg_fed_delete_mode mode,
                            size_t *entries_changed, sg_err *err);

/*
 * Generation of the federated bundles: bumped by every put that changed
 * something and every delete through this handle. Thread-safe, lock-free.
 */
uint64_t sg_ds_fed_bundle_gen(sg_datastore *ds);

/* A federation relationship (SPIRE's federates_with). */
typedef struct sg_fed_rel {
    char *trust_domain;       /* the name, without "spiffe://" */
    char *url;                /* bundle endpoint URL, https://... */
    char *profile;            /* "https_spiffe" or "https_web" */
    char *endpoint_spiffe_id; /* https_spiffe: the endpoint's SPIFFE ID; else NULL */
} sg_fed_rel;

void sg_fed_rel_cleanup(sg_fed_rel *r);
void sg_fed_rel_list_free(sg_fed_rel *list, size_t n);
int sg_fed_rel_copy(sg_fed_rel *dst, const sg_fed_rel *src);

/*
 * Creates (update false; SG_EEXIST when one exists) or replaces (update
 * true; SG_ENOENT when missing) the relationship of r->trust_domain.
 * Checks the URL (https with a host), profile and endpoint ID.
 */
int sg_ds_fed_rel_put(sg_datastore *ds, const sg_fed_rel *r, bool update, sg_err *err);
int sg_ds_fed_rel_get(sg_datastore *ds, const char *trust_domain, sg_fed_rel *out, sg_err *err);
int sg_ds_fed_rel_list(sg_datastore *ds, sg_fed_rel **list, size_t *n, sg_err *err);
int sg_ds_fed_rel_delete(sg_datastore *ds, const char *trust_domain, sg_err *err);

#endif
