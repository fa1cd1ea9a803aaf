/*
 * Authority slots: the prepared -> active -> old state machine shared by the
 * X.509 CA (server/ca.c) and the JWT signing keys (server/jwt_authority.c):
 * the rotation schedule, the operator actions with their checks and wording,
 * the high-water mark of what each slot signed, and the slots state file.
 * A table holds up to SG_SLOTS_MAX slots, oldest first. Each slot owns an
 * object (the CA snapshot, the JWT key) that only the owner understands,
 * through the hooks of its sg_slots_kind, which also names the authority in
 * every message. Slot changes run under the owner's rot_mu; the table takes
 * the owner's mu around every change that signers and readers can see.
 */
#ifndef SG_SERVER_SLOTS_H
#define SG_SERVER_SLOTS_H

#include "common/err.h"
#include "common/key.h"

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SG_SLOTS_MAX   16
#define SG_SLOT_ID_MAX 80

typedef enum sg_slot_state { SG_SLOT_PREPARED, SG_SLOT_ACTIVE, SG_SLOT_OLD } sg_slot_state;

/* "prepared", "active", "old" ("unknown" otherwise). */
const char *sg_slot_state_name(sg_slot_state s);

/*
 * The high-water mark of what a slot signed: signed_until is exact for this
 * process; reserved_until is what the state file promises; prior_until is
 * the mark read from the state file (-1: a file without one).
 */
typedef struct sg_slot_mark {
    _Atomic int64_t signed_until;
    _Atomic int64_t reserved_until;
    int64_t prior_until;
} sg_slot_mark;

/* Sets the mark read from a state file (reserved and prior); signed_until becomes 0. */
void sg_slot_mark_init(sg_slot_mark *m, int64_t prior);
/* Raises signed_until to not_after. Lock-free. */
void sg_slot_mark_signed(sg_slot_mark *m, int64_t not_after);

typedef struct sg_slot {
    char id[SG_SLOT_ID_MAX + 1]; /* authority ID (CA: hex SKID; JWT: kid) */
    sg_slot_state state;
    bool tainted;
    int64_t tainted_at;            /* unix seconds, 0 unless tainted */
    bool on_disk;                  /* its files are written */
    int64_t not_before, not_after; /* its validity (JWT keys: issued_at, expires_at) */
    sg_slot_mark *mark;            /* inside obj */
    void *obj;                     /* owned: kind->release */
} sg_slot;

typedef struct sg_slots sg_slots;

/* How one kind of authority is named, and the owner's hooks (owner: sg_slots.owner). */
typedef struct sg_slots_kind {
    const char *noun;     /* in errors: "authority" / "JWT authority" */
    const char *name;     /* "CA authority" / "JWT authority" */
    const char *log_noun; /* in logs, before the ID: "CA authority " / "JWT authority kid=" */
    const char *plural;   /* "CA authorities" / "JWT authorities" */
    const char *svids;    /* what it signs: "SVIDs" / "JWT-SVIDs" */
    const char *on_taint; /* logged after a taint: "agents re-mint every SVID it signed" */
    const char *id_hint;  /* what a valid ID is */
    int id_quote;         /* how much of a bad ID an operator error quotes */
    bool gen_on_change;   /* bump *gen on every change, not only on a taint */
    bool (*id_ok)(const char *id);
    void (*release)(void *obj);
    void (*activated)(void *owner);          /* a slot became active; may be NULL */
    int (*commit)(sg_slots *t, sg_err *err); /* saves the state after a change */
    int (*report)(const sg_slot *sl, void *out, sg_err *err); /* fills the owner's struct */
    /* The next slot at now: 1, or 0 (dropped) when it would not expire after must_outlive;
     * *changed: something else (the bundle) changed on the way. */
    int (*make)(void *owner, int64_t now, int64_t must_outlive, sg_slot *out, bool *changed,
                sg_err *err);
    int (*write_files)(sg_slots *t, const sg_slot *sl, sg_err *err); /* of a new slot */
    /* Adds the owner's fields to a state file entry (sl NULL: to the document). May be NULL. */
    void (*decorate)(void *owner, const sg_slot *sl, json_t *o);
    /* Loads entry o into sl (id, state and taint set; mark: -1 when absent): 1, 0 when
     * dropped (logged), or an error. */
    int (*load)(void *owner, const char *path, json_t *o, sg_slot *sl, int64_t mark, int64_t now,
                sg_err *err);
    int (*load_doc)(void *owner, const char *path, json_t *root, sg_err *err); /* may be NULL */
    /* The state file: {"version":1, gen_key: *gen, array_key: [entries]}. */
    const char *file;        /* its name in keys_dir */
    const char *file_prefix; /* of each slot's files: <prefix><id>.key (and .crt) */
    bool has_cert;           /* each slot has a .crt file too */
    const char *file_noun;   /* "CA state file" / "JWT authority state file" */
    const char *file_remedy; /* after "is not valid JSON (...); " */
    const char *array_key;   /* "authorities" / "keys" */
    const char *array_desc;  /* "an \"authorities\" array" */
    const char *gen_key;     /* "bundle_sequence" / "generation" */
    const char *item;        /* "authority" / "key" */
    const char *id_key;      /* "id" / "kid" */
    int id_quote_file;       /* how much of a bad ID a state file error quotes */
    const char *bad_tail;    /* after the state in that error: ", tainted_at or signed_until" */
    bool has_expiry;         /* entries hold "issued_at" and (required) "expires_at" */
} sg_slots_kind;

struct sg_slots {
    const sg_slots_kind *kind;
    void *owner;
    pthread_mutex_t *mu;       /* the owner's lock readers take */
    pthread_mutex_t *rot_mu;   /* the owner's lock serialising slot changes and files */
    pthread_mutex_t *state_mu; /* serialises state file writes (NULL: rot_mu does) */
    uint64_t *gen;             /* bumped on a taint (on every change with gen_on_change) */
    int64_t max_ttl;           /* longest TTL signed: bounds revoke; <= 0: the expiry does */
    const char *dir;           /* keys_dir of KeyManager "disk"; NULL: memory only */
    sg_slot v[SG_SLOTS_MAX];
    size_t n;
};

/* Releases every slot's object; no file is touched. */
void sg_slots_cleanup(sg_slots *t);
/* Releases the object of sl (not in the table) and zeroes it. */
void sg_slot_clear(const sg_slots *t, sg_slot *sl);
sg_slot *sg_slots_find_state(sg_slots *t, sg_slot_state st);
/* dir/<file_prefix><id>.<ext> (malloc'd), or NULL without a dir (or memory). */
char *sg_slots_path(const sg_slots *t, const char *id, const char *ext);
/* Removes slot i (under mu), then its files, then releases it. rot_mu held. */
void sg_slots_drop(sg_slots *t, size_t i);
/*
 * With a dir: creates it (0700) and reads its state file when there is one
 * (*found): *gen, every entry (SG_ECONFIG naming one with a bad ID, state or
 * time; a repeated one is skipped) through kind->load, then kind->load_doc.
 * At most one active and one prepared slot remain: the newest wins.
 */
int sg_slots_open(sg_slots *t, int64_t now, bool *found, sg_err *err);
/*
 * At start: makes the prepared slot active when none is, or a new one
 * (kind->make; *created) when there is neither.
 */
int sg_slots_ensure_active(sg_slots *t, int64_t now, bool *created, sg_err *err);
/* Whether key is of type (EC keys: by curve name). */
bool sg_slot_key_is_type(EVP_PKEY *key, sg_key_type type);
/*
 * The scheduled step, rot_mu held: drops expired slots but the active one,
 * makes a prepared one (kind->make) when the active one has less than
 * min(ttl/2, 30d) left and activates it below min(ttl/6, 7d). *dirty: a
 * slot changed (the caller commits); *changed: kind->make said so.
 */
int sg_slots_rotate(sg_slots *t, int64_t ttl, int64_t now, bool *dirty, bool *changed, sg_err *err);

/*
 * Operator actions, committed, then reported into out (may be NULL):
 * sg_slots_prepare adds sl (taken; rot_mu held by the caller, who made it)
 * as the prepared slot, replacing one. sg_slots_act takes rot_mu and acts on
 * slot id: only the prepared slot can be activated, only an old one
 * tainted, only a tainted one revoked, once nothing it signed can be live
 * (sg_slot_live_until); it is reported before it is dropped.
 */
int sg_slots_prepare(sg_slots *t, sg_slot *sl, void *out, sg_err *err);
typedef enum sg_slots_op { SG_SLOTS_ACTIVATE, SG_SLOTS_TAINT, SG_SLOTS_REVOKE } sg_slots_op;
int sg_slots_act(sg_slots *t, sg_slots_op op, const char *id, int64_t now, void *out, sg_err *err);
/*
 * Until when what sl signed may be live: the latest of tainted_at + max_ttl,
 * what it signed in this run and the mark read at start, capped by its
 * not_after. Without max_ttl (<= 0): its not_after.
 */
int64_t sg_slot_live_until(const sg_slot *sl, int64_t max_ttl);
/* "YYYY-MM-DDTHH:MM:SSZ" (the number when it cannot be formatted). */
void sg_slots_fmt_utc(int64_t t, char *out, size_t len);
/*
 * Every slot, reported (by fill, or kind->report when NULL) into a
 * malloc'd array of *n elements of size bytes, under mu. On an error *out
 * and *n still say what to free.
 */
int sg_slots_list(sg_slots *t, size_t size, int (*fill)(const sg_slot *, void *, sg_err *),
                  void **out, size_t *n, sg_err *err);
/* IDs of the tainted slots (under mu). Free with sg_slots_ids_free. */
int sg_slots_tainted_ids(sg_slots *t, char ***ids, size_t *n, sg_err *err);
void sg_slots_ids_free(char **ids, size_t n);

/* Writes the files of new slots (kind->write_files), then the state file. rot_mu held. */
int sg_slots_save(sg_slots *t, sg_err *err);
/*
 * Makes the state file promise m covers not_after before a credential is
 * handed out: raises it to now + 2 x ttl (at least not_after, at most cap)
 * and writes the state (under state_mu, or rot_mu), so a steady stream of
 * signatures writes about once per TTL. On failure the mark goes back.
 */
int sg_slots_reserve(sg_slots *t, sg_slot_mark *m, int64_t now, int64_t ttl, int64_t not_after,
                     int64_t cap, sg_err *err);

#endif
