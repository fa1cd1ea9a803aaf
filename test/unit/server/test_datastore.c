/*
 * Datastore tests against the SQLite backend: entries, the revision
 * counter, join tokens, agents, persistence and schema migrations.
 */
#include "server/datastore.h"

#include "test/runner.h"

#include <pthread.h>
#include <sqlite3.h>
#include <sys/stat.h>

static char db_path[512];

static sg_datastore *open_tmp(void)
{
    sg_datastore *ds = NULL;
    sg_err err;

    snprintf(db_path, sizeof db_path, "%s/sub/dir/ds.sqlite3", sg_test_tmpdir());
    if (sg_datastore_open(&ds, "sqlite3", db_path, &err) != 0)
        SG__FAIL("open: %s", err.msg);
    return ds;
}

static sg_datastore *reopen(void)
{
    sg_datastore *ds = NULL;
    sg_err err;

    if (sg_datastore_open(&ds, "sqlite3", db_path, &err) != 0)
        SG__FAIL("reopen: %s", err.msg);
    return ds;
}

/* Fills e with heap copies; sels is "type:value" strings. */
static void mk_entry(sg_entry *e, const char *spiffe, const char *parent, const char **sels,
                     size_t n)
{
    memset(e, 0, sizeof *e);
    e->spiffe_id = strdup(spiffe);
    e->parent_id = strdup(parent);
    e->selectors = calloc(n, sizeof *e->selectors);
    e->nselectors = n;
    for (size_t i = 0; i < n; i++) {
        const char *c = strchr(sels[i], ':');
        e->selectors[i].type = strndup(sels[i], (size_t)(c - sels[i]));
        e->selectors[i].value = strdup(c + 1);
    }
}

static const char *PARENT = "spiffe://example.org/spire/agent/join_token/abc";

TEST(datastore_entry_crud)
{
    sg_datastore *ds = open_tmp();
    sg_entry e, got;
    const char *sels[] = {"unix:uid:1000", "unix:gid:1000"};
    sg_err err;

    mk_entry(&e, "spiffe://example.org/web", PARENT, sels, 2);
    e.x509_svid_ttl = 300;
    e.dns_names = calloc(2, sizeof(char *));
    e.dns_names[0] = strdup("web.example.org");
    e.dns_names[1] = strdup("www.example.org");
    e.ndns = 2;
    e.hint = strdup("web");
    e.admin = true;
    ASSERT_OK(sg_ds_entry_create(ds, &e, &err));
    ASSERT_EQ(strlen(e.id), 36);
    ASSERT_EQ(e.id[14], '4');
    ASSERT(e.revision > 0);
    ASSERT(e.created_at > 0);

    ASSERT_OK(sg_ds_entry_get(ds, e.id, &got, &err));
    ASSERT_STREQ(got.spiffe_id, "spiffe://example.org/web");
    ASSERT_STREQ(got.parent_id, PARENT);
    ASSERT_EQ(got.nselectors, 2);
    /* Stored sorted by (type, value). */
    ASSERT_STREQ(got.selectors[0].value, "gid:1000");
    ASSERT_STREQ(got.selectors[1].value, "uid:1000");
    ASSERT_EQ(got.ndns, 2);
    ASSERT_STREQ(got.dns_names[1], "www.example.org");
    ASSERT_EQ(got.x509_svid_ttl, 300);
    ASSERT_STREQ(got.hint, "web");
    ASSERT(got.admin);
    ASSERT(!got.downstream);
    ASSERT_EQ(got.revision, e.revision);
    sg_entry_cleanup(&got);

    /* Update replaces fields and bumps the revision, keeping created_at. */
    int64_t old_rev = e.revision, created = e.created_at;
    free(e.spiffe_id);
    e.spiffe_id = strdup("spiffe://example.org/web2");
    e.x509_svid_ttl = 0;
    ASSERT_OK(sg_ds_entry_update(ds, &e, &err));
    ASSERT(e.revision > old_rev);
    ASSERT_EQ(e.created_at, created);
    ASSERT_OK(sg_ds_entry_get(ds, e.id, &got, &err));
    ASSERT_STREQ(got.spiffe_id, "spiffe://example.org/web2");
    ASSERT_EQ(got.x509_svid_ttl, 0);
    sg_entry_cleanup(&got);

    /* Update of a missing id. */
    sg_entry m;
    ASSERT_OK(sg_entry_copy(&m, &e));
    memcpy(m.id, "no-such-entry", 14);
    ASSERT_EQ(sg_ds_entry_update(ds, &m, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "no-such-entry") != NULL);
    sg_entry_cleanup(&m);

    ASSERT_OK(sg_ds_entry_delete(ds, e.id, &err));
    ASSERT_EQ(sg_ds_entry_get(ds, e.id, &got, &err), SG_ENOENT);
    ASSERT_EQ(sg_ds_entry_delete(ds, e.id, &err), SG_ENOENT);
    sg_entry_cleanup(&e);
    sg_datastore_close(ds);
}

TEST(datastore_entry_caller_id_kept)
{
    sg_datastore *ds = open_tmp();
    sg_entry e, got;
    const char *sels[] = {"unix:uid:0"};
    sg_err err;

    mk_entry(&e, "spiffe://example.org/a", PARENT, sels, 1);
    memcpy(e.id, "my-entry.1", 11);
    ASSERT_OK(sg_ds_entry_create(ds, &e, &err));
    ASSERT_STREQ(e.id, "my-entry.1");
    ASSERT_OK(sg_ds_entry_get(ds, "my-entry.1", &got, &err));
    sg_entry_cleanup(&got);
    /* Same id again (even with other data) is refused. */
    free(e.spiffe_id);
    e.spiffe_id = strdup("spiffe://example.org/b");
    ASSERT_EQ(sg_ds_entry_create(ds, &e, &err), SG_EEXIST);
    ASSERT(strstr(err.msg, "my-entry.1") != NULL);
    /* Bad ids are refused with the id quoted. */
    memcpy(e.id, "bad id", 7);
    ASSERT_EQ(sg_ds_entry_create(ds, &e, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "bad id") != NULL);
    ASSERT_EQ(sg_ds_entry_get(ds, "x'; DROP TABLE entries; --", &got, &err), SG_EINVAL);
    sg_entry_cleanup(&e);
    sg_datastore_close(ds);
}

TEST(datastore_entry_duplicate_refused)
{
    sg_datastore *ds = open_tmp();
    sg_entry a, b, c;
    const char *s1[] = {"unix:uid:1000", "unix:gid:50"};
    const char *s2[] = {"unix:gid:50", "unix:uid:1000", "unix:gid:50"}; /* same set */
    const char *s3[] = {"unix:uid:1000"};
    sg_err err;

    mk_entry(&a, "spiffe://example.org/x", PARENT, s1, 2);
    mk_entry(&b, "spiffe://example.org/x", PARENT, s2, 3);
    mk_entry(&c, "spiffe://example.org/x", PARENT, s3, 1);
    ASSERT_OK(sg_ds_entry_create(ds, &a, &err));
    ASSERT_EQ(sg_ds_entry_create(ds, &b, &err), SG_EEXIST);
    ASSERT(strstr(err.msg, "spiffe://example.org/x") != NULL);
    ASSERT(strstr(err.msg, a.id) != NULL);
    /* A different selector set is not a duplicate. */
    ASSERT_OK(sg_ds_entry_create(ds, &c, &err));
    /* Updating c into a's shape is a duplicate too. */
    sg_entry d;
    ASSERT_OK(sg_entry_copy(&d, &b));
    memcpy(d.id, c.id, sizeof d.id);
    ASSERT_EQ(sg_ds_entry_update(ds, &d, &err), SG_EEXIST);
    /* Empty selector set and bad selectors are refused. */
    sg_entry e;
    mk_entry(&e, "spiffe://example.org/y", PARENT, s3, 1);
    e.nselectors = 0;
    ASSERT_EQ(sg_ds_entry_create(ds, &e, &err), SG_EINVAL);
    e.nselectors = 1;
    e.selectors[0].value[0] = '\0';
    ASSERT_EQ(sg_ds_entry_create(ds, &e, &err), SG_EINVAL);
    sg_entry_cleanup(&a);
    sg_entry_cleanup(&b);
    sg_entry_cleanup(&c);
    sg_entry_cleanup(&d);
    sg_entry_cleanup(&e);
    sg_datastore_close(ds);
}

TEST(datastore_entry_filter)
{
    sg_datastore *ds = open_tmp();
    sg_entry e;
    sg_entry *list = NULL;
    size_t n = 0;
    sg_err err;
    const char *s_a[] = {"unix:uid:1000", "unix:gid:1000"};
    const char *s_b[] = {"unix:uid:1000"};
    const char *s_c[] = {"k8s:ns:prod", "unix:uid:1000", "unix:gid:1000"};
    const char *p2 = "spiffe://example.org/spire/agent/join_token/other";

    mk_entry(&e, "spiffe://example.org/a", PARENT, s_a, 2);
    ASSERT_OK(sg_ds_entry_create(ds, &e, &err));
    sg_entry_cleanup(&e);
    mk_entry(&e, "spiffe://example.org/b", PARENT, s_b, 1);
    ASSERT_OK(sg_ds_entry_create(ds, &e, &err));
    sg_entry_cleanup(&e);
    mk_entry(&e, "spiffe://example.org/a", p2, s_c, 3);
    ASSERT_OK(sg_ds_entry_create(ds, &e, &err));
    sg_entry_cleanup(&e);

    ASSERT_OK(sg_ds_entry_list(ds, NULL, &list, &n, &err));
    ASSERT_EQ(n, 3);
    ASSERT(strcmp(list[0].id, list[1].id) < 0 && strcmp(list[1].id, list[2].id) < 0);
    sg_entry_list_free(list, n);

    sg_entry_filter f = {.spiffe_id = "spiffe://example.org/a"};
    ASSERT_OK(sg_ds_entry_list(ds, &f, &list, &n, &err));
    ASSERT_EQ(n, 2);
    sg_entry_list_free(list, n);

    f = (sg_entry_filter){.parent_id = PARENT};
    ASSERT_OK(sg_ds_entry_list(ds, &f, &list, &n, &err));
    ASSERT_EQ(n, 2);
    sg_entry_list_free(list, n);

    f = (sg_entry_filter){.spiffe_id = "spiffe://example.org/a", .parent_id = p2};
    ASSERT_OK(sg_ds_entry_list(ds, &f, &list, &n, &err));
    ASSERT_EQ(n, 1);
    ASSERT_EQ(list[0].nselectors, 3);
    sg_entry_list_free(list, n);

    sg_selector want1[] = {{"unix", "uid:1000"}};
    f = (sg_entry_filter){.selectors = want1, .nselectors = 1};
    ASSERT_OK(sg_ds_entry_list(ds, &f, &list, &n, &err));
    ASSERT_EQ(n, 3);
    sg_entry_list_free(list, n);

    sg_selector want2[] = {{"unix", "gid:1000"}, {"unix", "uid:1000"}};
    f = (sg_entry_filter){.selectors = want2, .nselectors = 2};
    ASSERT_OK(sg_ds_entry_list(ds, &f, &list, &n, &err));
    ASSERT_EQ(n, 2);
    sg_entry_list_free(list, n);

    sg_selector want3[] = {{"k8s", "ns:prod"}, {"unix", "gid:1000"}};
    f = (sg_entry_filter){.selectors = want3, .nselectors = 2, .parent_id = p2};
    ASSERT_OK(sg_ds_entry_list(ds, &f, &list, &n, &err));
    ASSERT_EQ(n, 1);
    ASSERT_STREQ(list[0].parent_id, p2);
    sg_entry_list_free(list, n);

    sg_selector want4[] = {{"unix", "uid:1001"}};
    f = (sg_entry_filter){.selectors = want4, .nselectors = 1};
    ASSERT_OK(sg_ds_entry_list(ds, &f, &list, &n, &err));
    ASSERT_EQ(n, 0);
    sg_entry_list_free(list, n);

    /* A value that looks like SQL is only data. */
    f = (sg_entry_filter){.spiffe_id = "' OR 1=1 --"};
    ASSERT_OK(sg_ds_entry_list(ds, &f, &list, &n, &err));
    ASSERT_EQ(n, 0);
    sg_entry_list_free(list, n);
    sg_datastore_close(ds);
}

TEST(datastore_revision_monotonic)
{
    sg_datastore *ds = open_tmp();
    sg_entry a, b;
    const char *s1[] = {"unix:uid:1"};
    const char *s2[] = {"unix:uid:2"};
    int64_t r0, r1, r2, r3, r4;
    sg_err err;

    ASSERT_OK(sg_ds_entry_revision(ds, &r0, &err));
    ASSERT_EQ(r0, 0);
    mk_entry(&a, "spiffe://example.org/a", PARENT, s1, 1);
    mk_entry(&b, "spiffe://example.org/b", PARENT, s2, 1);
    ASSERT_OK(sg_ds_entry_create(ds, &a, &err));
    r1 = a.revision;
    ASSERT_OK(sg_ds_entry_create(ds, &b, &err));
    r2 = b.revision;
    ASSERT(r2 > r1 && r1 > r0);
    ASSERT_OK(sg_ds_entry_update(ds, &a, &err));
    r3 = a.revision;
    ASSERT(r3 > r2);
    ASSERT_OK(sg_ds_entry_delete(ds, b.id, &err));
    ASSERT_OK(sg_ds_entry_revision(ds, &r4, &err));
    ASSERT(r4 > r3);
    /* A failed write does not bump it. */
    ASSERT_EQ(sg_ds_entry_delete(ds, b.id, &err), SG_ENOENT);
    ASSERT_OK(sg_ds_entry_revision(ds, &r0, &err));
    ASSERT_EQ(r0, r4);
    sg_entry_cleanup(&a);
    sg_entry_cleanup(&b);
    sg_datastore_close(ds);
    ds = reopen();
    ASSERT_OK(sg_ds_entry_revision(ds, &r0, &err));
    ASSERT_EQ(r0, r4);
    sg_datastore_close(ds);
}

TEST(datastore_token_single_use)
{
    sg_datastore *ds = open_tmp();
    sg_err err;

    ASSERT_OK(sg_ds_token_create(ds, "tok-1", 2000, &err));
    ASSERT_EQ(sg_ds_token_create(ds, "tok-1", 2000, &err), SG_EEXIST);
    ASSERT_EQ(sg_ds_token_consume(ds, "tok-2", 1000, &err), SG_ENOENT);
    ASSERT_STREQ(err.msg, "join token not found or already used");
    ASSERT_OK(sg_ds_token_consume(ds, "tok-1", 1000, &err));
    ASSERT_EQ(sg_ds_token_consume(ds, "tok-1", 1000, &err), SG_ENOENT);
    ASSERT_EQ(sg_ds_token_consume(ds, "", 1000, &err), SG_EINVAL);
    sg_datastore_close(ds);

    /* Only the hash is on disk. */
    sqlite3 *db;
    sqlite3_stmt *st;
    ds = reopen();
    ASSERT_OK(sg_ds_token_create(ds, "secret-token-value", 5000, &err));
    sg_datastore_close(ds);
    ASSERT_EQ(sqlite3_open(db_path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT hash FROM join_tokens", -1, &st, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    ASSERT_EQ(strlen((const char *)sqlite3_column_text(st, 0)), 64);
    ASSERT(strstr((const char *)sqlite3_column_text(st, 0), "secret") == NULL);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

TEST(datastore_token_expiry)
{
    sg_datastore *ds = open_tmp();
    sg_err err;

    ASSERT_OK(sg_ds_token_create(ds, "t-exp", 1000, &err));
    ASSERT_EQ(sg_ds_token_consume(ds, "t-exp", 1001, &err), SG_EEXPIRED);
    ASSERT_STREQ(err.msg, "join token expired");
    /* Expired tokens are deleted on the attempt. */
    ASSERT_EQ(sg_ds_token_consume(ds, "t-exp", 900, &err), SG_ENOENT);

    ASSERT_OK(sg_ds_token_create(ds, "old", 100, &err));
    ASSERT_OK(sg_ds_token_create(ds, "new", 10000, &err));
    ASSERT_OK(sg_ds_token_prune(ds, 5000, &err));
    ASSERT_EQ(sg_ds_token_consume(ds, "old", 50, &err), SG_ENOENT);
    ASSERT_OK(sg_ds_token_consume(ds, "new", 5000, &err));
    sg_datastore_close(ds);
}

TEST(datastore_agent_crud)
{
    sg_datastore *ds = open_tmp();
    sg_agent_rec a, got;
    sg_agent_rec *list;
    size_t n;
    sg_selector sel[] = {{"join_token", "abc"}};
    sg_err err;

    memset(&a, 0, sizeof a);
    a.spiffe_id = "spiffe://example.org/spire/agent/join_token/abc";
    a.attestation_type = "join_token";
    snprintf(a.serial, sizeof a.serial, "0a1b");
    a.expires_at = 12345;
    a.attested_at = 100;
    a.selectors = sel;
    a.nselectors = 1;
    ASSERT_OK(sg_ds_agent_put(ds, &a, &err));
    ASSERT_OK(sg_ds_agent_get(ds, a.spiffe_id, &got, &err));
    ASSERT_STREQ(got.attestation_type, "join_token");
    ASSERT_STREQ(got.serial, "0a1b");
    ASSERT_STREQ(got.prev_serial, "");
    ASSERT_EQ(got.expires_at, 12345);
    ASSERT_EQ(got.attested_at, 100);
    ASSERT(!got.banned);
    ASSERT_EQ(got.nselectors, 1);
    ASSERT_STREQ(got.selectors[0].value, "abc");
    sg_agent_rec_cleanup(&got);

    /* put replaces (renewal). */
    snprintf(a.prev_serial, sizeof a.prev_serial, "0a1b");
    snprintf(a.serial, sizeof a.serial, "ffee");
    ASSERT_OK(sg_ds_agent_put(ds, &a, &err));
    ASSERT_OK(sg_ds_agent_get(ds, a.spiffe_id, &got, &err));
    ASSERT_STREQ(got.serial, "ffee");
    ASSERT_STREQ(got.prev_serial, "0a1b");
    sg_agent_rec_cleanup(&got);

    a.spiffe_id = "spiffe://example.org/spire/agent/join_token/def";
    a.nselectors = 0;
    ASSERT_OK(sg_ds_agent_put(ds, &a, &err));
    ASSERT_OK(sg_ds_agent_list(ds, &list, &n, &err));
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(list[0].spiffe_id, "spiffe://example.org/spire/agent/join_token/abc");
    sg_agent_rec_list_free(list, n);

    ASSERT_OK(
        sg_ds_agent_set_banned(ds, "spiffe://example.org/spire/agent/join_token/abc", true, &err));
    ASSERT_OK(sg_ds_agent_get(ds, "spiffe://example.org/spire/agent/join_token/abc", &got, &err));
    ASSERT(got.banned);
    sg_agent_rec_cleanup(&got);
    ASSERT_EQ(sg_ds_agent_set_banned(ds, "spiffe://example.org/nope", true, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "spiffe://example.org/nope") != NULL);

    ASSERT_OK(sg_ds_agent_delete(ds, "spiffe://example.org/spire/agent/join_token/def", &err));
    ASSERT_EQ(sg_ds_agent_get(ds, "spiffe://example.org/spire/agent/join_token/def", &got, &err),
              SG_ENOENT);
    ASSERT_EQ(sg_ds_agent_delete(ds, "spiffe://example.org/spire/agent/join_token/def", &err),
              SG_ENOENT);
    ASSERT_OK(sg_ds_agent_list(ds, &list, &n, &err));
    ASSERT_EQ(n, 1);
    sg_agent_rec_list_free(list, n);
    sg_datastore_close(ds);
}

TEST(datastore_reopen_keeps_data)
{
    sg_datastore *ds = open_tmp();
    sg_entry e, got;
    const char *s[] = {"unix:uid:7"};
    sg_agent_rec a, ga;
    struct stat sb;
    char dir[512];
    sg_err err;

    mk_entry(&e, "spiffe://example.org/keep", PARENT, s, 1);
    ASSERT_OK(sg_ds_entry_create(ds, &e, &err));
    memset(&a, 0, sizeof a);
    a.spiffe_id = "spiffe://example.org/spire/agent/x";
    a.attestation_type = "join_token";
    ASSERT_OK(sg_ds_agent_put(ds, &a, &err));
    ASSERT_OK(sg_ds_token_create(ds, "persist", 99999, &err));
    sg_datastore_close(ds);

    /* File 0600, created directory 0700. */
    ASSERT_OK(stat(db_path, &sb));
    ASSERT_EQ(sb.st_mode & 0777, 0600);
    snprintf(dir, sizeof dir, "%s", db_path);
    *strrchr(dir, '/') = '\0';
    ASSERT_OK(stat(dir, &sb));
    ASSERT_EQ(sb.st_mode & 0777, 0700);

    ds = reopen();
    ASSERT_OK(sg_ds_entry_get(ds, e.id, &got, &err));
    ASSERT_STREQ(got.spiffe_id, "spiffe://example.org/keep");
    ASSERT_EQ(got.revision, e.revision);
    sg_entry_cleanup(&got);
    ASSERT_OK(sg_ds_agent_get(ds, a.spiffe_id, &ga, &err));
    sg_agent_rec_cleanup(&ga);
    ASSERT_OK(sg_ds_token_consume(ds, "persist", 1, &err));
    sg_entry_cleanup(&e);
    sg_datastore_close(ds);
}

static int schema_version(void)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    int v = -1;

    if (sqlite3_open(db_path, &db) != SQLITE_OK)
        return -1;
    if (sqlite3_prepare_v2(db,
                           "SELECT version, (SELECT COUNT(*) FROM schema_version) "
                           "FROM schema_version",
                           -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 1) == 1)
            v = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return v;
}

TEST(datastore_migrations_idempotent)
{
    sg_datastore *ds = open_tmp();
    int v;

    sg_datastore_close(ds);
    v = schema_version();
    ASSERT(v >= 1);
    for (int i = 0; i < 3; i++) {
        ds = reopen();
        sg_datastore_close(ds);
        ASSERT_EQ(schema_version(), v);
    }
}

TEST(datastore_newer_schema_refused)
{
    sg_datastore *ds = open_tmp();
    sqlite3 *db;
    sg_err err;

    sg_datastore_close(ds);
    ASSERT_EQ(sqlite3_open(db_path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "UPDATE schema_version SET version = 999", NULL, NULL, NULL),
              SQLITE_OK);
    sqlite3_close(db);
    ds = NULL;
    ASSERT_EQ(sg_datastore_open(&ds, "sqlite3", db_path, &err), SG_EUNSUPPORTED);
    ASSERT(ds == NULL);
    ASSERT(strstr(err.msg, "999") != NULL);
    ASSERT(strstr(err.msg, "newer") != NULL);
}

TEST(datastore_open_bad_input)
{
    sg_datastore *ds = NULL;
    sg_err err;
    char path[512];
    FILE *f;

    ASSERT_EQ(sg_datastore_open(&ds, "postgres", "host=x", &err), SG_EUNSUPPORTED);
    ASSERT(strstr(err.msg, "postgres") != NULL);
    ASSERT_EQ(sg_datastore_open(&ds, "sqlite3", "", &err), SG_EINVAL);
    /* A file that is not a database. */
    snprintf(path, sizeof path, "%s/garbage.db", sg_test_tmpdir());
    f = fopen(path, "w");
    ASSERT(f != NULL);
    for (int i = 0; i < 200; i++)
        fputs("this is not a database file at all\n", f);
    fclose(f);
    ASSERT_EQ(sg_datastore_open(&ds, "sqlite3", path, &err), SG_EDB);
    ASSERT(strstr(err.msg, "garbage.db") != NULL);
    ASSERT(ds == NULL);
    /* A directory is not a database. */
    ASSERT_ERR(sg_datastore_open(&ds, "sqlite3", sg_test_tmpdir(), &err));
    ASSERT(ds == NULL);
}

struct thr_arg {
    sg_datastore *ds;
    int base;
    int fails;
};

static void *writer(void *p)
{
    struct thr_arg *t = p;
    sg_err err;

    for (int i = 0; i < 50; i++) {
        char sel[64];
        const char *s[] = {sel};
        sg_entry e, *list;
        size_t n;
        snprintf(sel, sizeof sel, "unix:uid:%d", t->base + i);
        mk_entry(&e, "spiffe://example.org/t", PARENT, s, 1);
        if (sg_ds_entry_create(t->ds, &e, &err) != 0)
            t->fails++;
        if (sg_ds_entry_list(t->ds, NULL, &list, &n, &err) != 0)
            t->fails++;
        else
            sg_entry_list_free(list, n);
        sg_entry_cleanup(&e);
    }
    return NULL;
}

TEST(datastore_threads_share_handle)
{
    sg_datastore *ds = open_tmp();
    pthread_t th[4];
    struct thr_arg args[4];
    sg_entry *list;
    size_t n;
    int64_t rev;
    sg_err err;

    for (int i = 0; i < 4; i++) {
        args[i] = (struct thr_arg){ds, i * 1000, 0};
        pthread_create(&th[i], NULL, writer, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ASSERT_EQ(args[i].fails, 0);
    }
    ASSERT_OK(sg_ds_entry_list(ds, NULL, &list, &n, &err));
    ASSERT_EQ(n, 200);
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            ASSERT(list[i].revision != list[j].revision);
    sg_entry_list_free(list, n);
    ASSERT_OK(sg_ds_entry_revision(ds, &rev, &err));
    ASSERT_EQ(rev, 200);
    sg_datastore_close(ds);
}

/* Runs sql on the database at db_path directly, as damage from outside would. */
static void damage(const char *sql)
{
    sqlite3 *db = NULL;

    if (sqlite3_open(db_path, &db) != SQLITE_OK || sqlite3_exec(db, sql, NULL, NULL, NULL) != 0)
        SG__FAIL("damaging the database: %s", sqlite3_errmsg(db));
    sqlite3_close(db);
}

TEST(datastore_corrupt_columns_named)
{
    sg_datastore *ds = open_tmp();
    sg_entry e, got, *entries;
    const char *s[] = {"unix:uid:7"};
    sg_agent_rec a, ga, *agents;
    sg_selector sel[] = {{"join_token", "abc"}};
    size_t n = 99;
    sg_err err;

    mk_entry(&e, "spiffe://example.org/w", PARENT, s, 1);
    ASSERT_OK(sg_ds_entry_create(ds, &e, &err));
    memset(&a, 0, sizeof a);
    a.spiffe_id = "spiffe://example.org/spire/agent/join_token/abc";
    a.selectors = sel;
    a.nselectors = 1;
    ASSERT_OK(sg_ds_agent_put(ds, &a, &err));
    sg_datastore_close(ds);

    damage("UPDATE entries SET selectors = 'not json'; UPDATE agents SET selectors = '[[1, 2]]'");
    ds = reopen();
    ASSERT_EQ(sg_ds_entry_get(ds, e.id, &got, &err), SG_EDB);
    ASSERT_STREQ(err.msg, "datastore: corrupt selector column");
    ASSERT_EQ(sg_ds_entry_list(ds, NULL, &entries, &n, &err), SG_EDB);
    ASSERT_EQ(n, 99);
    ASSERT_EQ(sg_ds_agent_get(ds, a.spiffe_id, &ga, &err), SG_EDB);
    ASSERT_STREQ(err.msg, "datastore: corrupt selector column");
    ASSERT_EQ(sg_ds_agent_list(ds, &agents, &n, &err), SG_EDB);
    ASSERT_EQ(n, 99);
    sg_datastore_close(ds);

    damage("UPDATE entries SET selectors = '[]', federates_with = '[7]'");
    ds = reopen();
    ASSERT_EQ(sg_ds_entry_get(ds, e.id, &got, &err), SG_EDB);
    ASSERT_STREQ(err.msg, "datastore: corrupt federates_with column");
    sg_datastore_close(ds);
    sg_entry_cleanup(&e);
}
