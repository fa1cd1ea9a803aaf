/*
 * Authority slots shared by the X.509 CA and the JWT signing keys: the
 * prepared -> active -> old state machine, the rotation thresholds, the
 * operator checks and their wording, the high-water mark of what a slot
 * signed and the common part of the slots state file.
 */
#include "server/slots.h"

#include "common/fsutil.h"
#include "common/log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PREPARE_MAX_S  (30 * 86400)
#define ACTIVATE_MAX_S (7 * 86400)
#define STATE_FILE_MAX (256 * 1024)

const char *sg_slot_state_name(sg_slot_state s)
{
    static const char *const names[] = {"prepared", "active", "old"};

    return (unsigned)s <= SG_SLOT_OLD ? names[s] : "unknown";
}

static int state_parse(const char *s, sg_slot_state *out)
{
    for (int i = SG_SLOT_PREPARED; s != NULL && i <= SG_SLOT_OLD; i++)
        if (strcmp(s, sg_slot_state_name((sg_slot_state)i)) == 0) {
            *out = (sg_slot_state)i;
            return 0;
        }
    return -1;
}

/* ------------------------------------------------------------ high-water mark */

void sg_slot_mark_init(sg_slot_mark *m, int64_t prior)
{
    atomic_init(&m->signed_until, 0);
    atomic_init(&m->reserved_until, prior);
    m->prior_until = prior;
}

void sg_slot_mark_signed(sg_slot_mark *m, int64_t not_after)
{
    int64_t seen = atomic_load(&m->signed_until);

    while (not_after > seen && !atomic_compare_exchange_weak(&m->signed_until, &seen, not_after))
        ;
}

static int64_t mark_persisted(sg_slot_mark *m)
{
    int64_t v = atomic_load(&m->reserved_until), s = atomic_load(&m->signed_until);

    if (s > v)
        v = s;
    return m->prior_until > v ? m->prior_until : v;
}

/* ------------------------------------------------------------ the table */

void sg_slot_clear(const sg_slots *t, sg_slot *sl)
{
    if (sl->obj != NULL)
        t->kind->release(sl->obj);
    memset(sl, 0, sizeof *sl);
}

void sg_slots_cleanup(sg_slots *t)
{
    for (size_t i = 0; i < t->n; i++)
        sg_slot_clear(t, &t->v[i]);
    t->n = 0;
}

sg_slot *sg_slots_find_state(sg_slots *t, sg_slot_state st)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].state == st)
            return &t->v[i];
    return NULL;
}

static sg_slot *find(sg_slots *t, const char *id)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].id, id) == 0)
            return &t->v[i];
    return NULL;
}

static void bump(sg_slots *t)
{
    if (t->kind->gen_on_change)
        (*t->gen)++;
}

static int append(sg_slots *t, sg_slot *sl, sg_err *err)
{
    if (t->n >= SG_SLOTS_MAX) {
        sg_slot_clear(t, sl);
        return sg_err_set(err, SG_ETOOBIG,
                          "%d %s are kept already; revoke or wait for old ones to expire",
                          SG_SLOTS_MAX, t->kind->plural);
    }
    pthread_mutex_lock(t->mu);
    t->v[t->n++] = *sl;
    bump(t);
    pthread_mutex_unlock(t->mu);
    return 0;
}

char *sg_slots_path(const sg_slots *t, const char *id, const char *ext)
{
    char name[SG_SLOT_ID_MAX + 32];

    snprintf(name, sizeof name, "%s%s.%s", t->kind->file_prefix, id, ext);
    return t->dir != NULL ? sg_fs_join(t->dir, name) : NULL;
}

void sg_slots_drop(sg_slots *t, size_t i)
{
    sg_slot gone;

    pthread_mutex_lock(t->mu);
    gone = t->v[i];
    memmove(&t->v[i], &t->v[i + 1], (t->n - i - 1) * sizeof t->v[0]);
    t->n--;
    memset(&t->v[t->n], 0, sizeof t->v[0]);
    bump(t);
    pthread_mutex_unlock(t->mu);
    for (int f = 0; t->dir != NULL && f < (t->kind->has_cert ? 2 : 1); f++) {
        char *p = sg_slots_path(t, gone.id, f == 0 ? "key" : "crt");
        if (p != NULL)
            unlink(p);
        free(p);
    }
    sg_slot_clear(t, &gone);
}

static int add_prepared(sg_slots *t, sg_slot *sl, sg_err *err)
{
    sg_slot *prev = sg_slots_find_state(t, SG_SLOT_PREPARED);
    int rc;

    if (prev != NULL) {
        sg_log_info("replacing prepared %s%s", t->kind->log_noun, prev->id);
        sg_slots_drop(t, (size_t)(prev - t->v));
    }
    sl->state = SG_SLOT_PREPARED;
    rc = append(t, sl, err);
    if (rc == 0)
        sg_log_info("prepared %s%s", t->kind->log_noun, t->v[t->n - 1].id);
    return rc;
}

static void activate(sg_slots *t, sg_slot *prep)
{
    sg_slot *act = sg_slots_find_state(t, SG_SLOT_ACTIVE);

    pthread_mutex_lock(t->mu);
    if (act != NULL)
        act->state = SG_SLOT_OLD;
    prep->state = SG_SLOT_ACTIVE;
    bump(t);
    pthread_mutex_unlock(t->mu);
    if (t->kind->activated != NULL)
        t->kind->activated(t->owner);
    sg_log_info("activated %s%s (previous: %s)", t->kind->log_noun, prep->id,
                act ? act->id : "none");
}

int sg_slots_rotate(sg_slots *t, int64_t ttl, int64_t now, bool *dirty, bool *changed, sg_err *err)
{
    int64_t prep_at = ttl / 2 < PREPARE_MAX_S ? ttl / 2 : PREPARE_MAX_S;
    int64_t act_at = ttl / 6 < ACTIVATE_MAX_S ? ttl / 6 : ACTIVATE_MAX_S, remaining;
    sg_slot *act, *prep, next;
    int rc;

    for (size_t i = 0; i < t->n;) {
        const sg_slot *sl = &t->v[i];
        if (sl->state != SG_SLOT_ACTIVE && sl->not_after <= now) {
            sg_log_info("%s%s (%s) expired: removing it", t->kind->log_noun, sl->id,
                        sg_slot_state_name(sl->state));
            sg_slots_drop(t, i);
            *dirty = true;
        } else {
            i++;
        }
    }
    act = sg_slots_find_state(t, SG_SLOT_ACTIVE);
    remaining = act ? act->not_after - now : 0;
    prep = sg_slots_find_state(t, SG_SLOT_PREPARED);
    if (prep == NULL && remaining < prep_at) {
        bool ch = false;
        rc = t->kind->make(t->owner, now, act != NULL ? act->not_after + act_at : 0, &next, &ch,
                           err);
        if (ch) {
            *dirty = true;
            *changed = true;
        }
        if (rc == 1) {
            rc = add_prepared(t, &next, err);
            *dirty = *dirty || rc == 0;
        }
        if (rc < 0)
            return rc;
        act = sg_slots_find_state(t, SG_SLOT_ACTIVE);
        prep = sg_slots_find_state(t, SG_SLOT_PREPARED);
    }
    if (prep != NULL && (act == NULL || remaining < act_at)) {
        activate(t, prep);
        *dirty = true;
    }
    return 0;
}

static void normalize(sg_slots *t)
{
    for (size_t i = 0; i < t->n; i++)
        for (size_t j = i + 1; j < t->n; j++)
            if (t->v[i].state != SG_SLOT_OLD && t->v[i].state == t->v[j].state)
                t->v[i].state = SG_SLOT_OLD;
}

int sg_slots_ensure_active(sg_slots *t, int64_t now, bool *created, sg_err *err)
{
    sg_slot *prep = sg_slots_find_state(t, SG_SLOT_PREPARED);
    bool ch = false;
    int rc;

    *created = false;
    if (sg_slots_find_state(t, SG_SLOT_ACTIVE) != NULL)
        return 0;
    if (prep != NULL) {
        prep->state = SG_SLOT_ACTIVE;
        sg_log_info("activating prepared %s%s", t->kind->log_noun, prep->id);
        return 0;
    }
    if (t->n >= SG_SLOTS_MAX)
        return sg_err_set(err, SG_ETOOBIG, "no room for a new %s", t->kind->name);
    rc = t->kind->make(t->owner, now, 0, &t->v[t->n], &ch, err);
    if (rc <= 0)
        return rc < 0 ? rc : sg_err_set(err, SG_ECRYPTO, "cannot create a %s", t->kind->name);
    t->v[t->n++].state = SG_SLOT_ACTIVE;
    *created = true;
    return 0;
}

bool sg_slot_key_is_type(EVP_PKEY *key, sg_key_type type)
{
    char group[64];

    switch (type) {
    case SG_KEY_EC_P256:
    case SG_KEY_EC_P384:
        if (!EVP_PKEY_is_a(key, "EC") ||
            EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof group, NULL) != 1)
            return false;
        return strcmp(group, type == SG_KEY_EC_P256 ? "prime256v1" : "secp384r1") == 0;
    case SG_KEY_RSA_2048:
        return EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) == 2048;
    case SG_KEY_RSA_4096:
        return EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) == 4096;
    }
    return false;
}

/* ------------------------------------------------------------ operator actions */

/* The slot with ID id: SG_EINVAL for a missing or malformed ID, SG_ENOENT for an unknown one. */
static int lookup(sg_slots *t, const char *id, sg_slot **out, sg_err *err)
{
    const sg_slots_kind *k = t->kind;

    if (id == NULL || id[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "an authority ID is required (-authorityID)");
    if (!k->id_ok(id))
        return sg_err_set(err, SG_EINVAL, "authority ID \"%.*s\" is not valid: it is %s",
                          k->id_quote, id, k->id_hint);
    *out = find(t, id);
    if (*out == NULL)
        return sg_err_set(err, SG_ENOENT, "no %s with ID %s", k->name, id);
    return 0;
}

static int report(sg_slots *t, const sg_slot *sl, void *out, sg_err *err)
{
    return out != NULL ? t->kind->report(sl, out, err) : 0;
}

int sg_slots_prepare(sg_slots *t, sg_slot *sl, void *out, sg_err *err)
{
    int rc = add_prepared(t, sl, err);

    if (rc == 0)
        rc = t->kind->commit(t, err);
    if (rc == 0)
        rc = report(t, sg_slots_find_state(t, SG_SLOT_PREPARED), out, err);
    return rc;
}

int64_t sg_slot_live_until(const sg_slot *sl, int64_t max_ttl)
{
    int64_t until = sl->not_after, live, s;

    if (max_ttl <= 0)
        return until;
    /* The configured TTLs bound what it signed before the mark existed; what
     * it signed since is known exactly or promised by the persisted mark. */
    live = sl->tainted_at + max_ttl;
    s = atomic_load(&sl->mark->signed_until);
    if (s > live)
        live = s;
    if (sl->mark->prior_until > live)
        live = sl->mark->prior_until;
    return live < until ? live : until;
}

void sg_slots_fmt_utc(int64_t t, char *out, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL || strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, len, "%lld", (long long)t);
}

/* Why sl cannot undergo op at now, or 0. */
static int check(sg_slots *t, sg_slots_op op, const sg_slot *sl, int64_t now, sg_err *err)
{
    const char *noun = t->kind->noun, *st = sg_slot_state_name(sl->state);
    int64_t until;
    char when[32];

    if (op == SG_SLOTS_ACTIVATE && sl->state != SG_SLOT_PREPARED)
        return sg_err_set(err, SG_EINVAL,
                          "authority %s is the %s %s: only the prepared authority can be "
                          "activated",
                          sl->id, st, noun);
    if (op == SG_SLOTS_TAINT && sl->state != SG_SLOT_OLD)
        return sg_err_set(err, SG_EINVAL,
                          "authority %s is the %s %s: only an old authority can be tainted; "
                          "prepare and activate a new one first",
                          sl->id, st, noun);
    if (op == SG_SLOTS_TAINT && sl->tainted)
        return sg_err_set(err, SG_EEXIST, "%s %s is already tainted", noun, sl->id);
    if (op == SG_SLOTS_REVOKE && !sl->tainted)
        return sg_err_set(err, SG_EINVAL,
                          "%s %s is not tainted: only a tainted authority can be revoked", noun,
                          sl->id);
    if (op == SG_SLOTS_REVOKE && now < (until = sg_slot_live_until(sl, t->max_ttl))) {
        sg_slots_fmt_utc(until, when, sizeof when);
        return sg_err_set(err, SG_EINVAL,
                          "%s %s may still have live %s until %s; revoke after that", noun, sl->id,
                          t->kind->svids, when);
    }
    return 0;
}

int sg_slots_act(sg_slots *t, sg_slots_op op, const char *id, int64_t now, void *out, sg_err *err)
{
    sg_slot *sl = NULL;
    int rc;

    pthread_mutex_lock(t->rot_mu);
    rc = lookup(t, id, &sl, err);
    if (rc == 0)
        rc = check(t, op, sl, now, err);
    if (rc == 0 && op == SG_SLOTS_ACTIVATE) {
        activate(t, sl);
    } else if (rc == 0 && op == SG_SLOTS_TAINT) {
        pthread_mutex_lock(t->mu);
        sl->tainted = true;
        sl->tainted_at = now;
        (*t->gen)++; /* agents learn of the taint with the next bundle */
        pthread_mutex_unlock(t->mu);
        sg_log_warn("%s%s tainted: %s", t->kind->log_noun, id, t->kind->on_taint);
    } else if (rc == 0 && (rc = report(t, sl, out, err)) == 0) {
        sg_slots_drop(t, (size_t)(sl - t->v));
        sg_log_warn("%s%s revoked: removed from the bundle", t->kind->log_noun, id);
    }
    if (rc == 0)
        rc = t->kind->commit(t, err);
    if (rc == 0 && op != SG_SLOTS_REVOKE)
        rc = report(t, sl, out, err);
    pthread_mutex_unlock(t->rot_mu);
    return rc;
}

int sg_slots_list(sg_slots *t, size_t size, int (*fill)(const sg_slot *, void *, sg_err *),
                  void **out, size_t *n, sg_err *err)
{
    char *v;
    size_t i;
    int rc = 0;

    pthread_mutex_lock(t->mu);
    v = calloc(t->n ? t->n : 1, size);
    for (i = 0; v != NULL && i < t->n && rc == 0; i++)
        rc = (fill ? fill : t->kind->report)(&t->v[i], v + i * size, err);
    pthread_mutex_unlock(t->mu);
    *out = v;
    *n = i;
    return v == NULL ? sg_err_set(err, SG_ENOMEM, "out of memory listing %s", t->kind->plural) : rc;
}

void sg_slots_ids_free(char **ids, size_t n)
{
    for (size_t i = 0; ids != NULL && i < n; i++)
        free(ids[i]);
    free(ids);
}

int sg_slots_tainted_ids(sg_slots *t, char ***ids, size_t *n, sg_err *err)
{
    char **v;
    size_t k = 0;

    pthread_mutex_lock(t->mu);
    v = calloc(t->n ? t->n : 1, sizeof *v);
    for (size_t i = 0; v != NULL && i < t->n; i++) {
        if (!t->v[i].tainted)
            continue;
        v[k] = strdup(t->v[i].id);
        if (v[k] == NULL) {
            sg_slots_ids_free(v, k);
            v = NULL;
            break;
        }
        k++;
    }
    pthread_mutex_unlock(t->mu);
    if (v == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory listing tainted %s", t->kind->plural);
    *ids = v;
    *n = k;
    return 0;
}

/* ------------------------------------------------------------ state file */

static bool int_or_absent(const json_t *v)
{
    return v == NULL || json_is_integer(v);
}

/* Checks entry i (o) and reads its common fields into sl: 0, 1 to skip it, or an error. */
static int entry(sg_slots *t, const char *path, size_t i, json_t *o, sg_slot *sl, int64_t *mark,
                 sg_err *err)
{
    const sg_slots_kind *k = t->kind;
    const char *id = json_string_value(json_object_get(o, k->id_key));
    const char *st = json_string_value(json_object_get(o, "state"));
    json_t *ta = json_object_get(o, "tainted_at"), *su = json_object_get(o, "signed_until");
    json_t *ea = json_object_get(o, "expires_at"), *ia = json_object_get(o, "issued_at");

    memset(sl, 0, sizeof *sl);
    if (id == NULL || !k->id_ok(id) || state_parse(st, &sl->state) < 0 || !int_or_absent(ta) ||
        !int_or_absent(su) || !int_or_absent(ia) || (k->has_expiry && !json_is_integer(ea)))
        return sg_err_set(err, SG_ECONFIG,
                          "%s %.150s: %s %zu has a bad %s \"%.*s\", state \"%.20s\"%s",
                          k->file_noun, path, k->item, i, k->id_key, k->id_quote_file,
                          id ? id : "(none)", st ? st : "(none)", k->bad_tail);
    if (t->n >= SG_SLOTS_MAX || find(t, id) != NULL) {
        sg_log_warn("%s %s: ignoring extra or repeated %s %s", k->file_noun, path, k->item, id);
        return 1;
    }
    snprintf(sl->id, sizeof sl->id, "%s", id);
    sl->not_before = ia ? (int64_t)json_integer_value(ia) : 0;
    sl->not_after = (int64_t)json_integer_value(ea);
    sl->tainted = json_is_true(json_object_get(o, "tainted"));
    sl->tainted_at = ta ? (int64_t)json_integer_value(ta) : 0;
    *mark = su ? (int64_t)json_integer_value(su) : -1;
    return 0;
}

static int load(sg_slots *t, const char *path, int64_t now, sg_err *err)
{
    const sg_slots_kind *k = t->kind;
    uint8_t *data = NULL;
    size_t len = 0;
    json_t *root, *arr, *g;
    json_error_t je;
    int rc = sg_fs_read_file(path, STATE_FILE_MAX, &data, &len, err);

    if (rc < 0)
        return rc;
    root = json_loadb((const char *)data, len, 0, &je);
    free(data);
    if (root == NULL)
        return sg_err_set(err, SG_ECONFIG, "%s %.150s is not valid JSON (line %d: %.60s); %s",
                          k->file_noun, path, je.line, je.text, k->file_remedy);
    arr = json_object_get(root, k->array_key);
    g = json_object_get(root, k->gen_key);
    if (!json_is_array(arr) || !int_or_absent(g)) {
        json_decref(root);
        return sg_err_set(err, SG_ECONFIG, "%s %.150s lacks %s or has a non-integer \"%s\"",
                          k->file_noun, path, k->array_desc, k->gen_key);
    }
    if (g != NULL && json_integer_value(g) > 0)
        *t->gen = (uint64_t)json_integer_value(g);
    for (size_t i = 0; rc == 0 && i < json_array_size(arr); i++) {
        sg_slot *sl = &t->v[t->n];
        int64_t mark = -1;
        rc = entry(t, path, i, json_array_get(arr, i), sl, &mark, err);
        if (rc == 0 &&
            (rc = k->load(t->owner, path, json_array_get(arr, i), sl, mark, now, err)) == 1) {
            sl->on_disk = true;
            t->n++;
            rc = 0;
        } else {
            memset(sl, 0, sizeof *sl);
            rc = rc < 0 ? rc : 0;
        }
    }
    if (rc == 0 && k->load_doc != NULL)
        rc = k->load_doc(t->owner, path, root, err);
    json_decref(root);
    if (rc == 0)
        normalize(t);
    return rc;
}

/* Writes dir/<file> (0600, atomically) listing the slots whose files are written. */
static int write_state(sg_slots *t, sg_err *err)
{
    const sg_slots_kind *k = t->kind;
    json_t *arr = json_array(), *root;
    char *text = NULL, *path;
    int rc;

    pthread_mutex_lock(t->mu);
    root = json_pack("{s:i,s:I,s:o}", "version", 1, k->gen_key, (json_int_t)*t->gen, k->array_key,
                     arr);
    for (size_t i = 0; root != NULL && i < t->n; i++) {
        const sg_slot *sl = &t->v[i];
        json_t *o;
        if (!sl->on_disk)
            continue;
        const char *st = sg_slot_state_name(sl->state);
        json_int_t ta = sl->tainted_at, su = mark_persisted(sl->mark);
        o = k->has_expiry ? json_pack("{s:s,s:s,s:I,s:I,s:b,s:I,s:I}", k->id_key, sl->id, "state",
                                      st, "issued_at", (json_int_t)sl->not_before, "expires_at",
                                      (json_int_t)sl->not_after, "tainted", sl->tainted,
                                      "tainted_at", ta, "signed_until", su)
                          : json_pack("{s:s,s:s,s:b,s:I,s:I}", k->id_key, sl->id, "state", st,
                                      "tainted", sl->tainted, "tainted_at", ta, "signed_until", su);
        if (o != NULL && k->decorate != NULL)
            k->decorate(t->owner, sl, o);
        json_array_append_new(arr, o);
    }
    if (root != NULL && k->decorate != NULL)
        k->decorate(t->owner, NULL, root);
    pthread_mutex_unlock(t->mu);
    text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    path = sg_fs_join(t->dir, k->file);
    if (text == NULL || path == NULL)
        rc = sg_err_set(err, SG_ENOMEM, "out of memory saving the %s state", k->name);
    else
        rc = sg_fs_write_atomic(path, text, strlen(text), 0600, err);
    free(text);
    free(path);
    return rc;
}

int sg_slots_reserve(sg_slots *t, sg_slot_mark *m, int64_t now, int64_t ttl, int64_t not_after,
                     int64_t cap, sg_err *err)
{
    pthread_mutex_t *mu = t->state_mu ? t->state_mu : t->rot_mu;
    int64_t prev, want;
    int rc = 0;

    if (t->dir == NULL || not_after <= atomic_load(&m->reserved_until))
        return 0;
    pthread_mutex_lock(mu);
    prev = atomic_load(&m->reserved_until);
    if (not_after > prev) {
        want = now + 2 * (ttl > 0 ? ttl : 0);
        want = want < not_after ? not_after : want;
        want = want > cap ? cap : want;
        atomic_store(&m->reserved_until, want);
        rc = t->state_mu ? write_state(t, err) : sg_slots_save(t, err);
        if (rc < 0)
            atomic_store(&m->reserved_until, prev);
    }
    pthread_mutex_unlock(mu);
    return rc;
}

int sg_slots_save(sg_slots *t, sg_err *err)
{
    int rc;

    if (t->dir == NULL)
        return 0;
    for (size_t i = 0; i < t->n; i++) {
        if (t->v[i].on_disk)
            continue;
        rc = t->kind->write_files(t, &t->v[i], err);
        if (rc < 0)
            return rc;
        pthread_mutex_lock(t->mu);
        t->v[i].on_disk = true;
        pthread_mutex_unlock(t->mu);
    }
    if (t->state_mu != NULL)
        pthread_mutex_lock(t->state_mu);
    rc = write_state(t, err);
    if (t->state_mu != NULL)
        pthread_mutex_unlock(t->state_mu);
    return rc;
}

int sg_slots_open(sg_slots *t, int64_t now, bool *found, sg_err *err)
{
    char *path;
    int rc = t->dir ? sg_fs_mkdir_p(t->dir, 0700, err) : 0;

    *found = false;
    if (rc < 0 || t->dir == NULL)
        return rc;
    path = sg_fs_join(t->dir, t->kind->file);
    if (path == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    if (access(path, F_OK) == 0) {
        *found = true;
        rc = load(t, path, now, err);
    }
    free(path);
    return rc;
}
