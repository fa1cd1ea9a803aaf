/*
 * Private contract between server/datastore.c (the public functions, input
 * checks and normalisation) and one storage backend. A backend is a const
 * table of function pointers; adding PostgreSQL means one new file and one
 * line in the backend table of datastore.c. Callers never see this header.
 *
 * By the time a backend function runs, datastore.c has checked its
 * arguments: entries carry non-empty IDs, sorted duplicate-free selectors
 * and valid strings; tokens arrive as their SHA-256 hex digest only.
 */
#ifndef SG_SERVER_DATASTORE_INT_H
#define SG_SERVER_DATASTORE_INT_H

#include "server/datastore.h"

#define SG__DS_TOKEN_HASH_LEN 64 /* SHA-256 hex */

typedef struct sg__ds_backend {
    const char *name; /* database_type as written in the config ("sqlite3") */
    int (*open)(void **state, const char *conn, sg_err *err);
    void (*close)(void *state);

    /* e->id is set (a fresh UUID or the caller's); writes revision and created_at. */
    int (*entry_create)(void *st, sg_entry *e, sg_err *err);
    /* Writes revision and created_at (kept from the stored entry). */
    int (*entry_update)(void *st, sg_entry *e, sg_err *err);
    int (*entry_delete)(void *st, const char *id, sg_err *err);
    int (*entry_get)(void *st, const char *id, sg_entry *out, sg_err *err);
    int (*entry_list)(void *st, const sg_entry_filter *f, sg_entry **list, size_t *n, sg_err *err);
    int (*entry_revision)(void *st, int64_t *out, sg_err *err);

    int (*token_create)(void *st, const char *hash, int64_t expires_at, sg_err *err);
    int (*token_consume)(void *st, const char *hash, int64_t now, sg_err *err);
    int (*token_prune)(void *st, int64_t now, sg_err *err);

    int (*agent_put)(void *st, const sg_agent_rec *a, sg_err *err);
    int (*agent_get)(void *st, const char *spiffe_id, sg_agent_rec *out, sg_err *err);
    int (*agent_list)(void *st, sg_agent_rec **list, size_t *n, sg_err *err);
    int (*agent_delete)(void *st, const char *spiffe_id, sg_err *err);
    int (*agent_set_banned)(void *st, const char *spiffe_id, bool banned, sg_err *err);

    int (*fed_bundle_put)(void *st, const char *td, const char *jwks, uint64_t seq, int64_t now,
                          bool *changed, sg_err *err);
    int (*fed_bundle_get)(void *st, const char *td, sg_fed_bundle_rec *out, sg_err *err);
    int (*fed_bundle_list)(void *st, sg_fed_bundle_rec **list, size_t *n, sg_err *err);
    int (*fed_bundle_delete)(void *st, const char *td, sg_fed_delete_mode mode, size_t *changed,
                             sg_err *err);

    /* update: replace an existing one (SG_ENOENT when missing); else insert (SG_EEXIST). */
    int (*fed_rel_put)(void *st, const sg_fed_rel *r, bool update, sg_err *err);
    int (*fed_rel_get)(void *st, const char *td, sg_fed_rel *out, sg_err *err);
    int (*fed_rel_list)(void *st, sg_fed_rel **list, size_t *n, sg_err *err);
    int (*fed_rel_delete)(void *st, const char *td, sg_err *err);
} sg__ds_backend;

extern const sg__ds_backend sg__ds_sqlite;

/* Deep-copies n selectors into a new array (*out; NULL when n == 0). */
int sg__ds_selectors_dup(const sg_selector *src, size_t n, sg_selector **out);
/* Frees n selectors and the array. */
void sg__ds_selectors_free(sg_selector *s, size_t n);
/* A copy of s (NULL for NULL); sets *rc to SG_ENOMEM when the copy fails. */
char *sg__ds_strdup_opt(const char *s, int *rc);

#endif
