/*
 * Unit tests for server/slots.c: the authority slot machine, driven through
 * a minimal kind whose objects are counters, so every rule (schedule,
 * operator checks, high-water mark, state file) is checked without keys.
 */
#include "server/slots.h"

#include "common/fsutil.h"
#include "test/runner.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NOW ((int64_t)1700000000)
#define TTL ((int64_t)6000)

/* The owner: counts what the hooks saw. */
typedef struct fake {
    sg_slots t;
    pthread_mutex_t mu, rot_mu;
    uint64_t gen;
    int next_id, released, activated, commits;
    int64_t life; /* lifetime of what make creates */
} fake;

typedef struct fobj {
    sg_slot_mark mark;
    int *released;
} fobj;

typedef struct finfo {
    char id[SG_SLOT_ID_MAX + 1];
    sg_slot_state state;
    bool tainted;
} finfo;

static bool f_id_ok(const char *id)
{
    return id[0] == 'k' && strlen(id) <= 8;
}

static void f_release(void *obj)
{
    fobj *o = obj;

    (*o->released)++;
    free(o);
}

static void f_activated(void *owner)
{
    ((fake *)owner)->activated++;
}

static int f_commit(sg_slots *t, sg_err *err)
{
    ((fake *)t->owner)->commits++;
    return sg_slots_save(t, err);
}

static int f_report(const sg_slot *sl, void *out, sg_err *err)
{
    finfo *i = out;

    (void)err;
    snprintf(i->id, sizeof i->id, "%s", sl->id);
    i->state = sl->state;
    i->tainted = sl->tainted;
    return 0;
}

static void fill(fake *f, sg_slot *sl, const char *id, int64_t not_after)
{
    fobj *o = calloc(1, sizeof *o);

    ASSERT(o != NULL);
    o->released = &f->released;
    sg_slot_mark_init(&o->mark, 0);
    memset(sl, 0, sizeof *sl);
    snprintf(sl->id, sizeof sl->id, "%s", id);
    sl->not_after = not_after;
    sl->mark = &o->mark;
    sl->obj = o;
}

static int f_make(void *owner, int64_t now, int64_t must_outlive, sg_slot *out, bool *changed,
                  sg_err *err)
{
    fake *f = owner;
    char id[16];

    (void)changed;
    (void)err;
    snprintf(id, sizeof id, "k%d", f->next_id++);
    fill(f, out, id, now + f->life);
    if (out->not_after > must_outlive)
        return 1;
    f_release(out->obj);
    return 0;
}

static int f_write_files(sg_slots *t, const sg_slot *sl, sg_err *err)
{
    char *p = sg_slots_path(t, sl->id, "key");
    int rc = sg_fs_write_atomic(p, "k", 1, 0600, err);

    free(p);
    return rc;
}

static int f_load(void *owner, const char *path, json_t *o, sg_slot *sl, int64_t mark, int64_t now,
                  sg_err *err)
{
    sg_slot want = *sl;

    (void)path;
    (void)o;
    (void)err;
    if (want.not_after <= now)
        return 0;
    fill(owner, sl, want.id, want.not_after);
    sl->state = want.state;
    sl->tainted = want.tainted;
    sl->tainted_at = want.tainted_at;
    sg_slot_mark_init(sl->mark, mark);
    return 1;
}

static const sg_slots_kind FAKE = {
    .noun = "test authority",
    .name = "test authority",
    .log_noun = "test authority ",
    .plural = "test authorities",
    .svids = "tokens",
    .on_taint = "agents drop what it signed",
    .id_hint = "k and up to 7 characters",
    .id_quote = 20,
    .gen_on_change = true,
    .id_ok = f_id_ok,
    .release = f_release,
    .activated = f_activated,
    .commit = f_commit,
    .report = f_report,
    .make = f_make,
    .write_files = f_write_files,
    .load = f_load,
    .file = "test-slots.json",
    .file_prefix = "t-",
    .file_noun = "test state file",
    .file_remedy = "remove it",
    .array_key = "slots",
    .array_desc = "a \"slots\" array",
    .gen_key = "generation",
    .item = "slot",
    .id_key = "id",
    .id_quote_file = 20,
    .bad_tail = " or times",
    .has_expiry = true,
};

static fake *fake_new(const char *dir)
{
    fake *f = calloc(1, sizeof *f);

    ASSERT(f != NULL);
    pthread_mutex_init(&f->mu, NULL);
    pthread_mutex_init(&f->rot_mu, NULL);
    f->life = TTL;
    f->t = (sg_slots){.kind = &FAKE,
                      .owner = f,
                      .mu = &f->mu,
                      .rot_mu = &f->rot_mu,
                      .gen = &f->gen,
                      .max_ttl = 300,
                      .dir = dir};
    return f;
}

/* A table with one active slot "k0" made at NOW. */
static fake *fake_started(const char *dir)
{
    fake *f = fake_new(dir);
    bool found = false, created = false;
    sg_err err;

    ASSERT_OK(sg_slots_open(&f->t, NOW, &found, &err));
    ASSERT_OK(sg_slots_ensure_active(&f->t, NOW, &created, &err));
    ASSERT(created);
    ASSERT_OK(sg_slots_save(&f->t, &err));
    return f;
}

static void fake_free(fake *f)
{
    sg_slots_cleanup(&f->t);
    pthread_mutex_destroy(&f->mu);
    pthread_mutex_destroy(&f->rot_mu);
    free(f);
}

static const char *state_of(fake *f, const char *id)
{
    for (size_t i = 0; i < f->t.n; i++)
        if (strcmp(f->t.v[i].id, id) == 0)
            return sg_slot_state_name(f->t.v[i].state);
    return "none";
}

static int rotate(fake *f, int64_t now, bool *dirty)
{
    bool ch = false;
    sg_err err;
    int rc;

    *dirty = false;
    pthread_mutex_lock(&f->rot_mu);
    rc = sg_slots_rotate(&f->t, TTL, now, dirty, &ch, &err);
    pthread_mutex_unlock(&f->rot_mu);
    return rc;
}

TEST(slots_state_names)
{
    ASSERT_STREQ(sg_slot_state_name(SG_SLOT_PREPARED), "prepared");
    ASSERT_STREQ(sg_slot_state_name(SG_SLOT_ACTIVE), "active");
    ASSERT_STREQ(sg_slot_state_name(SG_SLOT_OLD), "old");
    ASSERT_STREQ(sg_slot_state_name((sg_slot_state)7), "unknown");
}

TEST(slots_rotation_follows_the_schedule)
{
    fake *f = fake_started(NULL);
    bool dirty;

    /* 6000 s of life: prepare below 3000 s left, activate below 1000 s left. */
    ASSERT_OK(rotate(f, NOW + 2999, &dirty));
    ASSERT(!dirty);
    ASSERT_EQ(f->t.n, (size_t)1);
    ASSERT_OK(rotate(f, NOW + 3001, &dirty));
    ASSERT(dirty);
    ASSERT_STREQ(state_of(f, "k1"), "prepared");
    ASSERT_OK(rotate(f, NOW + 4999, &dirty));
    ASSERT(!dirty);
    ASSERT_OK(rotate(f, NOW + 5001, &dirty));
    ASSERT(dirty);
    ASSERT_STREQ(state_of(f, "k0"), "old");
    ASSERT_STREQ(state_of(f, "k1"), "active");
    ASSERT_EQ(f->activated, 1);
    /* The old slot leaves once it has expired, with its files. */
    ASSERT_OK(rotate(f, NOW + 6000, &dirty));
    ASSERT(dirty);
    ASSERT_STREQ(state_of(f, "k0"), "none");
    ASSERT_EQ(f->released, 1);
    fake_free(f);
}

TEST(slots_rotation_skips_a_slot_that_would_not_outlive_the_active_one)
{
    fake *f = fake_started(NULL);
    bool dirty;

    f->life = 100; /* expires before the active one: make drops it */
    ASSERT_OK(rotate(f, NOW + 3001, &dirty));
    ASSERT(!dirty);
    ASSERT_EQ(f->t.n, (size_t)1);
    ASSERT_EQ(f->released, 1);
    fake_free(f);
}

TEST(slots_operator_actions_check_state)
{
    fake *f = fake_started(NULL);
    finfo info;
    sg_slot sl;
    sg_err err;

    fill(f, &sl, "k9", NOW + TTL);
    pthread_mutex_lock(&f->rot_mu);
    ASSERT_OK(sg_slots_prepare(&f->t, &sl, &info, &err));
    pthread_mutex_unlock(&f->rot_mu);
    ASSERT_STREQ(info.id, "k9");
    ASSERT_EQ(info.state, SG_SLOT_PREPARED);

    ASSERT_EQ(sg_slots_act(&f->t, SG_SLOTS_ACTIVATE, "k0", NOW, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "authority k0 is the active test authority: only the prepared") != NULL);
    ASSERT_EQ(sg_slots_act(&f->t, SG_SLOTS_TAINT, "k9", NOW, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "only an old authority can be tainted") != NULL);
    ASSERT_EQ(sg_slots_act(&f->t, SG_SLOTS_REVOKE, "k0", NOW, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "test authority k0 is not tainted") != NULL);

    ASSERT_OK(sg_slots_act(&f->t, SG_SLOTS_ACTIVATE, "k9", NOW, &info, &err));
    ASSERT_EQ(info.state, SG_SLOT_ACTIVE);
    ASSERT_STREQ(state_of(f, "k0"), "old");
    uint64_t g = f->gen;
    ASSERT_OK(sg_slots_act(&f->t, SG_SLOTS_TAINT, "k0", NOW + 10, &info, &err));
    ASSERT(info.tainted);
    ASSERT(f->gen > g);
    ASSERT_EQ(sg_slots_act(&f->t, SG_SLOTS_TAINT, "k0", NOW, NULL, &err), SG_EEXIST);

    /* Live until tainted_at + max_ttl (300 s) at least. */
    ASSERT_EQ(sg_slots_act(&f->t, SG_SLOTS_REVOKE, "k0", NOW + 309, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "test authority k0 may still have live tokens until") != NULL);
    ASSERT_OK(sg_slots_act(&f->t, SG_SLOTS_REVOKE, "k0", NOW + 310, &info, &err));
    ASSERT_STREQ(info.id, "k0");
    ASSERT_STREQ(state_of(f, "k0"), "none");
    ASSERT(f->commits >= 4);
    fake_free(f);
}

TEST(slots_lookup_names_bad_and_unknown_ids)
{
    fake *f = fake_started(NULL);
    sg_err err;

    ASSERT_EQ(sg_slots_act(&f->t, SG_SLOTS_TAINT, "", NOW, NULL, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "an authority ID is required") != NULL);
    ASSERT_EQ(sg_slots_act(&f->t, SG_SLOTS_TAINT, "zzzzzzzzzzzzzzzzzzzzzzzzzzzz", NOW, NULL, &err),
              SG_EINVAL);
    ASSERT(strstr(err.msg, "\"zzzzzzzzzzzzzzzzzzzz\" is not valid: it is k and up") != NULL);
    ASSERT_EQ(sg_slots_act(&f->t, SG_SLOTS_TAINT, "k42", NOW, NULL, &err), SG_ENOENT);
    ASSERT_STREQ(err.msg, "no test authority with ID k42");
    fake_free(f);
}

TEST(slots_live_until_uses_ttl_signed_and_prior_marks)
{
    fake *f = fake_started(NULL);
    sg_slot *sl = &f->t.v[0];

    sl->tainted_at = NOW;
    ASSERT_EQ(sg_slot_live_until(sl, 0), NOW + TTL);
    ASSERT_EQ(sg_slot_live_until(sl, 300), NOW + 300);
    sg_slot_mark_signed(sl->mark, NOW + 1000);
    sg_slot_mark_signed(sl->mark, NOW + 500); /* never lowers it */
    ASSERT_EQ(sg_slot_live_until(sl, 300), NOW + 1000);
    sl->mark->prior_until = NOW + 2000;
    ASSERT_EQ(sg_slot_live_until(sl, 300), NOW + 2000);
    sl->mark->prior_until = NOW + 99999;
    ASSERT_EQ(sg_slot_live_until(sl, 300), NOW + TTL); /* capped by its expiry */
    fake_free(f);
}

static json_t *read_state(const char *dir)
{
    char path[512];
    json_error_t je;

    snprintf(path, sizeof path, "%s/test-slots.json", dir);
    return json_load_file(path, 0, &je);
}

TEST(slots_reserve_writes_ahead_and_rolls_back_on_failure)
{
    const char *dir = sg_test_tmpdir();
    fake *f = fake_started(dir);
    sg_slot *sl = &f->t.v[0];
    char path[512];
    json_t *root;
    sg_err err;

    /* Raised to now + 2 x ttl before the credential is handed out. */
    ASSERT_OK(sg_slots_reserve(&f->t, sl->mark, NOW, 100, NOW + 100, sl->not_after, &err));
    ASSERT_EQ(atomic_load(&sl->mark->reserved_until), NOW + 200);
    root = read_state(dir);
    ASSERT(root != NULL);
    ASSERT_EQ(json_integer_value(json_object_get(json_array_get(json_object_get(root, "slots"), 0),
                                                 "signed_until")),
              NOW + 200);
    json_decref(root);
    /* Capped by the slot's expiry. */
    ASSERT_OK(sg_slots_reserve(&f->t, sl->mark, NOW, 5000, NOW + 300, NOW + 4000, &err));
    ASSERT_EQ(atomic_load(&sl->mark->reserved_until), NOW + 4000);
    /* Covered already: no write. A failed write leaves the mark where it was. */
    snprintf(path, sizeof path, "%s/test-slots.json", dir);
    ASSERT_OK(unlink(path));
    ASSERT_OK(mkdir(path, 0700)); /* the state file cannot be replaced any more */
    ASSERT_OK(sg_slots_reserve(&f->t, sl->mark, NOW, 100, NOW + 3000, sl->not_after, &err));
    ASSERT(sg_slots_reserve(&f->t, sl->mark, NOW, 100, NOW + 4500, sl->not_after, &err) < 0);
    ASSERT_EQ(atomic_load(&sl->mark->reserved_until), NOW + 4000);
    fake_free(f);
}

TEST(slots_state_file_round_trip)
{
    const char *dir = sg_test_tmpdir();
    fake *f = fake_started(dir), *g;
    bool found = false, created = false;
    sg_slot sl;
    sg_err err;

    fill(f, &sl, "k7", NOW + TTL);
    pthread_mutex_lock(&f->rot_mu);
    ASSERT_OK(sg_slots_prepare(&f->t, &sl, NULL, &err));
    pthread_mutex_unlock(&f->rot_mu);
    ASSERT_OK(sg_slots_act(&f->t, SG_SLOTS_ACTIVATE, "k7", NOW, NULL, &err));
    ASSERT_OK(sg_slots_act(&f->t, SG_SLOTS_TAINT, "k0", NOW + 5, NULL, &err));
    sg_slot_mark_signed(f->t.v[0].mark, NOW + 77);
    ASSERT_OK(sg_slots_save(&f->t, &err));
    uint64_t gen = f->gen;
    fake_free(f);

    g = fake_new(dir);
    ASSERT_OK(sg_slots_open(&g->t, NOW + 10, &found, &err));
    ASSERT(found);
    ASSERT_EQ(g->gen, gen);
    ASSERT_EQ(g->t.n, (size_t)2);
    ASSERT_STREQ(state_of(g, "k0"), "old");
    ASSERT_STREQ(state_of(g, "k7"), "active");
    ASSERT(g->t.v[0].tainted);
    ASSERT_EQ(g->t.v[0].tainted_at, NOW + 5);
    ASSERT(g->t.v[0].on_disk);
    ASSERT_EQ(g->t.v[0].mark->prior_until, NOW + 77);
    ASSERT_OK(sg_slots_ensure_active(&g->t, NOW + 10, &created, &err));
    ASSERT(!created);
    fake_free(g);
}

static int load_text(const char *dir, const char *text, int64_t now, fake **out, sg_err *err)
{
    char path[512];
    bool found = false;
    int rc;

    snprintf(path, sizeof path, "%s/test-slots.json", dir);
    if (sg_fs_write_atomic(path, text, strlen(text), 0600, err) < 0)
        return -1;
    *out = fake_new(dir);
    rc = sg_slots_open(&(*out)->t, now, &found, err);
    ASSERT(found);
    return rc;
}

TEST(slots_state_file_errors_name_what_is_wrong)
{
    const char *dir = sg_test_tmpdir();
    fake *f = NULL;
    sg_err err;

    ASSERT_EQ(load_text(dir, "{nope", NOW, &f, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "test state file") != NULL);
    ASSERT(strstr(err.msg, "is not valid JSON (line 1") != NULL);
    ASSERT(strstr(err.msg, "; remove it") != NULL);
    fake_free(f);
    ASSERT_EQ(load_text(dir, "{\"generation\": \"x\", \"slots\": []}", NOW, &f, &err), SG_ECONFIG);
    ASSERT(strstr(err.msg, "lacks a \"slots\" array or has a non-integer \"generation\"") != NULL);
    fake_free(f);
    ASSERT_EQ(load_text(dir,
                        "{\"slots\": [{\"id\": \"k1\", \"state\": \"active\", \"expires_at\": "
                        "1800000000}, {\"id\": \"k2\", \"state\": \"sleeping\"}]}",
                        NOW, &f, &err),
              SG_ECONFIG);
    ASSERT(strstr(err.msg, "slot 1 has a bad id \"k2\", state \"sleeping\" or times") != NULL);
    fake_free(f);
    ASSERT_EQ(load_text(dir, "{\"slots\": [{\"id\": \"k1\", \"state\": \"old\"}]}", NOW, &f, &err),
              SG_ECONFIG); /* expires_at is required for this kind */
    fake_free(f);
}

TEST(slots_state_file_keeps_one_active_and_skips_repeats_and_expired)
{
    const char *dir = sg_test_tmpdir();
    fake *f = NULL;
    sg_err err;

    ASSERT_OK(load_text(dir,
                        "{\"generation\": 9, \"slots\": ["
                        "{\"id\": \"k1\", \"state\": \"active\", \"expires_at\": 1800000000},"
                        "{\"id\": \"k1\", \"state\": \"old\", \"expires_at\": 1800000000},"
                        "{\"id\": \"k2\", \"state\": \"old\", \"expires_at\": 1600000000},"
                        "{\"id\": \"k3\", \"state\": \"active\", \"expires_at\": 1800000000},"
                        "{\"id\": \"k4\", \"state\": \"prepared\", \"expires_at\": 1800000000}]}",
                        NOW, &f, &err));
    ASSERT_EQ(f->gen, (uint64_t)9);
    ASSERT_EQ(f->t.n, (size_t)3);
    ASSERT_STREQ(state_of(f, "k1"), "old");
    ASSERT_STREQ(state_of(f, "k2"), "none");
    ASSERT_STREQ(state_of(f, "k3"), "active");
    ASSERT_STREQ(state_of(f, "k4"), "prepared");
    ASSERT_EQ(f->t.v[0].mark->prior_until, -1); /* no signed_until in the file */
    fake_free(f);
}

TEST(slots_ensure_active_promotes_the_prepared_slot)
{
    fake *f = fake_new(NULL);
    bool created = true;
    sg_slot sl;
    sg_err err;

    fill(f, &sl, "k5", NOW + TTL);
    pthread_mutex_lock(&f->rot_mu);
    ASSERT_OK(sg_slots_prepare(&f->t, &sl, NULL, &err));
    pthread_mutex_unlock(&f->rot_mu);
    ASSERT_OK(sg_slots_ensure_active(&f->t, NOW, &created, &err));
    ASSERT(!created);
    ASSERT_STREQ(state_of(f, "k5"), "active");
    fake_free(f);
}

TEST(slots_table_is_bounded)
{
    fake *f = fake_started(NULL);
    sg_err err;

    for (int i = 1; i < SG_SLOTS_MAX; i++) {
        sg_slot sl;
        char id[16];
        snprintf(id, sizeof id, "k%d", 100 + i);
        fill(f, &sl, id, NOW + TTL);
        sl.state = SG_SLOT_OLD;
        f->t.v[f->t.n++] = sl;
    }
    sg_slot extra;
    fill(f, &extra, "k99", NOW + TTL);
    pthread_mutex_lock(&f->rot_mu);
    ASSERT_EQ(sg_slots_prepare(&f->t, &extra, NULL, &err), SG_ETOOBIG);
    pthread_mutex_unlock(&f->rot_mu);
    ASSERT(strstr(err.msg, "16 test authorities are kept already") != NULL);
    ASSERT_EQ(f->released, 1); /* the refused slot was released */
    fake_free(f);
}

TEST(slots_list_and_tainted_ids)
{
    fake *f = fake_started(NULL);
    void *v = NULL;
    char **ids = NULL;
    size_t n = 0;
    sg_err err;

    f->t.v[0].tainted = true;
    ASSERT_OK(sg_slots_list(&f->t, sizeof(finfo), NULL, &v, &n, &err));
    ASSERT_EQ(n, (size_t)1);
    ASSERT_STREQ(((finfo *)v)[0].id, "k0");
    free(v);
    ASSERT_OK(sg_slots_tainted_ids(&f->t, &ids, &n, &err));
    ASSERT_EQ(n, (size_t)1);
    ASSERT_STREQ(ids[0], "k0");
    sg_slots_ids_free(ids, n);
    fake_free(f);
}

TEST(slots_key_is_type)
{
    EVP_PKEY *ec = NULL, *rsa = NULL;
    sg_err err;

    ASSERT_OK(sg_key_generate(SG_KEY_EC_P256, &ec, &err));
    ASSERT_OK(sg_key_generate(SG_KEY_RSA_2048, &rsa, &err));
    ASSERT(sg_slot_key_is_type(ec, SG_KEY_EC_P256));
    ASSERT(!sg_slot_key_is_type(ec, SG_KEY_EC_P384));
    ASSERT(!sg_slot_key_is_type(ec, SG_KEY_RSA_2048));
    ASSERT(sg_slot_key_is_type(rsa, SG_KEY_RSA_2048));
    ASSERT(!sg_slot_key_is_type(rsa, SG_KEY_RSA_4096));
    EVP_PKEY_free(ec);
    EVP_PKEY_free(rsa);
}

TEST(slots_files_follow_their_slot)
{
    const char *dir = sg_test_tmpdir();
    fake *f = fake_started(dir);
    char *p = sg_slots_path(&f->t, "k0", "key");
    struct stat st;
    sg_err err;

    ASSERT(p != NULL);
    ASSERT(strstr(p, "/t-k0.key") != NULL);
    ASSERT_OK(stat(p, &st)); /* written when the slot was saved */
    ASSERT(f->t.v[0].on_disk);
    f->t.v[0].state = SG_SLOT_OLD;
    f->t.v[0].tainted = true;
    f->t.v[0].tainted_at = NOW;
    ASSERT_OK(sg_slots_act(&f->t, SG_SLOTS_REVOKE, "k0", NOW + TTL, NULL, &err));
    ASSERT(stat(p, &st) != 0);
    free(p);
    fake_free(f);
}
