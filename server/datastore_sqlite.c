/*
 * SQLite backend of the datastore (database_type "sqlite3").
 *
 * One connection per handle, guarded by a mutex, in WAL mode with a busy
 * timeout and foreign keys on. The schema is versioned in schema_version;
 * migrations run at open inside one transaction, and a database written by
 * a newer binary is refused rather than guessed at.
 *
 * Entries keep their selectors and DNS names as JSON columns (one read per
 * row) and also in entry_selectors, which the selector filter queries. The
 * canonical selector JSON (sorted, duplicate-free) is part of a UNIQUE
 * index, so the duplicate rule holds even without the explicit check.
 * Every entry write bumps the single revision counter, deletes included.
 * Federated trust domains of entries live in entry_federates as well, so
 * the bundle delete modes find the entries of one trust domain by index.
 */
#include "server/datastore_int.h"

#include "common/spiffeid.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BUSY_TIMEOUT_MS 5000
#define STMT_CACHE      64

typedef struct sqlite_ds {
    pthread_mutex_t mu; /* guards everything below */
    sqlite3 *db;
    struct {
        const char *sql; /* a static string; compared by pointer */
        sqlite3_stmt *st;
    } cache[STMT_CACHE];
    size_t ncache;
} sqlite_ds;

/* ------------------------------------------------------------ schema */

/* Migration i brings the schema from version i to i + 1. Never edit one; append. */
static const char *const migrations[] = {
    "CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);"
    "INSERT INTO revision (id, value) VALUES (1, 0);"
    "CREATE TABLE entries ("
    "  id TEXT PRIMARY KEY,"
    "  spiffe_id TEXT NOT NULL,"
    "  parent_id TEXT NOT NULL,"
    "  selectors TEXT NOT NULL," /* canonical JSON [[type, value], ...] */
    "  dns_names TEXT NOT NULL," /* JSON [name, ...] */
    "  x509_svid_ttl INTEGER NOT NULL DEFAULT 0,"
    "  jwt_svid_ttl INTEGER NOT NULL DEFAULT 0,"
    "  hint TEXT,"
    "  downstream INTEGER NOT NULL DEFAULT 0,"
    "  admin INTEGER NOT NULL DEFAULT 0,"
    "  revision INTEGER NOT NULL UNIQUE,"
    "  created_at INTEGER NOT NULL,"
    "  UNIQUE (spiffe_id, parent_id, selectors));"
    "CREATE INDEX entries_parent ON entries (parent_id);"
    "CREATE TABLE entry_selectors ("
    "  entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,"
    "  type TEXT NOT NULL,"
    "  value TEXT NOT NULL,"
    "  PRIMARY KEY (entry_id, type, value));"
    "CREATE INDEX entry_selectors_tv ON entry_selectors (type, value);"
    "CREATE TABLE join_tokens ("
    "  hash TEXT PRIMARY KEY," /* SHA-256 hex of the token; the token itself is never stored */
    "  expires_at INTEGER NOT NULL);"
    "CREATE TABLE agents ("
    "  spiffe_id TEXT PRIMARY KEY,"
    "  attestation_type TEXT NOT NULL,"
    "  serial TEXT NOT NULL,"
    "  prev_serial TEXT NOT NULL,"
    "  expires_at INTEGER NOT NULL,"
    "  attested_at INTEGER NOT NULL,"
    "  banned INTEGER NOT NULL DEFAULT 0,"
    "  selectors TEXT NOT NULL);",
    /* 1 -> 2: federation. */
    "ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT '[]';"
    "CREATE TABLE entry_federates ("
    "  entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,"
    "  trust_domain TEXT NOT NULL," /* the name, without spiffe:// */
    "  PRIMARY KEY (entry_id, trust_domain));"
    "CREATE INDEX entry_federates_td ON entry_federates (trust_domain);"
    "CREATE TABLE federated_bundles ("
    "  trust_domain TEXT PRIMARY KEY,"
    "  jwks TEXT NOT NULL,"
    "  sequence INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL);"
    "CREATE TABLE federation_relationships ("
    "  trust_domain TEXT PRIMARY KEY,"
    "  url TEXT NOT NULL,"
    "  profile TEXT NOT NULL,"
    "  endpoint_spiffe_id TEXT);",
};

#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

/* ------------------------------------------------------------ helpers */

static int db_fail(sqlite_ds *s, sg_err *err, const char *what)
{
    return sg_err_set(err, SG_EDB, "datastore: %s: %s", what, sqlite3_errmsg(s->db));
}

static int exec(sqlite_ds *s, const char *sql, sg_err *err, const char *what)
{
    char *msg = NULL;

    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        sg_err_set(err, SG_EDB, "datastore: %s: %s", what, msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        return SG_EDB;
    }
    return 0;
}

/* A cached prepared statement for a static SQL string, reset and unbound. */
static sqlite3_stmt *stmt(sqlite_ds *s, const char *sql, sg_err *err)
{
    sqlite3_stmt *st = NULL;

    for (size_t i = 0; i < s->ncache; i++) {
        if (s->cache[i].sql == sql) {
            st = s->cache[i].st;
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            return st;
        }
    }
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        db_fail(s, err, "preparing a statement");
        return NULL;
    }
    if (s->ncache < STMT_CACHE) {
        s->cache[s->ncache].sql = sql;
        s->cache[s->ncache].st = st;
        s->ncache++;
    }
    return st;
}

/* Releases a statement from stmt(): cached ones are reset, others finalized. */
static void stmt_done(sqlite_ds *s, sqlite3_stmt *st)
{
    if (st == NULL)
        return;
    for (size_t i = 0; i < s->ncache; i++) {
        if (s->cache[i].st == st) {
            sqlite3_reset(st);
            return;
        }
    }
    sqlite3_finalize(st);
}

static int begin(sqlite_ds *s, sg_err *err)
{
    return exec(s, "BEGIN IMMEDIATE", err, "starting a transaction");
}

static int commit(sqlite_ds *s, sg_err *err)
{
    return exec(s, "COMMIT", err, "committing");
}

static void rollback(sqlite_ds *s)
{
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

static char *col_strdup(sqlite3_stmt *st, int i, int *rc)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    char *d;

    if (t == NULL)
        return NULL;
    d = strdup((const char *)t);
    if (d == NULL)
        *rc = SG_ENOMEM;
    return d;
}

static void bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
}

/* ------------------------------------------------------------ JSON columns */

static char *selectors_json(const sg_selector *sel, size_t n)
{
    json_t *arr = json_array();
    char *out;

    if (arr == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *pair = json_pack("[ss]", sel[i].type, sel[i].value);
        if (pair == NULL || json_array_append_new(arr, pair) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    out = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return out;
}

static char *strings_json(char *const *v, size_t n)
{
    json_t *arr = json_array();
    char *out;

    if (arr == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (json_array_append_new(arr, json_string(v[i])) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    out = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return out;
}

/*
 * Loads a JSON array column (NULL reads as []) and allocates cnt zeroed
 * elements of elem_size for it. On success the caller owns *arr and *mem.
 */
static int load_array(const char *text, const char *column, size_t elem_size, json_t **arr,
                      void **mem, size_t *cnt, sg_err *err)
{
    json_error_t je;
    json_t *a = json_loads(text ? text : "[]", 0, &je);

    if (a == NULL || !json_is_array(a)) {
        json_decref(a);
        return sg_err_set(err, SG_EDB, "datastore: corrupt %s column", column);
    }
    *cnt = json_array_size(a);
    *mem = NULL;
    if (*cnt > 0 && (*mem = calloc(*cnt, elem_size)) == NULL) {
        json_decref(a);
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    *arr = a;
    return 0;
}

static int parse_selectors(const char *text, sg_selector **out, size_t *n, sg_err *err)
{
    json_t *arr;
    void *mem;
    size_t cnt;
    int rc = load_array(text, "selector", sizeof(sg_selector), &arr, &mem, &cnt, err);

    *out = NULL;
    *n = 0;
    if (rc < 0)
        return rc;
    sg_selector *sel = mem;
    for (size_t i = 0; rc == 0 && i < cnt; i++) {
        json_t *p = json_array_get(arr, i);
        const char *t = json_string_value(json_array_get(p, 0));
        const char *v = json_string_value(json_array_get(p, 1));
        if (t == NULL || v == NULL) {
            rc = sg_err_set(err, SG_EDB, "datastore: corrupt selector column");
            break;
        }
        sel[i].type = strdup(t);
        sel[i].value = strdup(v);
        if (sel[i].type == NULL || sel[i].value == NULL)
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    json_decref(arr);
    if (rc < 0) {
        sg__ds_selectors_free(sel, cnt);
        return rc;
    }
    *out = sel;
    *n = cnt;
    return 0;
}

static int parse_strings_col(const char *text, const char *column, char ***out, size_t *n,
                             sg_err *err)
{
    json_t *arr;
    void *mem;
    size_t cnt;
    int rc = load_array(text, column, sizeof(char *), &arr, &mem, &cnt, err);

    *out = NULL;
    *n = 0;
    if (rc < 0)
        return rc;
    char **v = mem;
    for (size_t i = 0; rc == 0 && i < cnt; i++) {
        const char *s = json_string_value(json_array_get(arr, i));
        v[i] = s ? strdup(s) : NULL;
        if (v[i] == NULL)
            rc = sg_err_set(err, s ? SG_ENOMEM : SG_EDB, "datastore: corrupt %s column", column);
    }
    json_decref(arr);
    if (rc < 0) {
        for (size_t j = 0; j < cnt; j++)
            free(v[j]);
        free(v);
        return rc;
    }
    *out = v;
    *n = cnt;
    return 0;
}

static int parse_strings(const char *text, char ***out, size_t *n, sg_err *err)
{
    return parse_strings_col(text, "DNS name", out, n, err);
}

/* ------------------------------------------------------------ open/close */

/* Creates dir and its missing parents with mode 0700. */
static int mkdir_parents(const char *path, sg_err *err)
{
    char buf[4096];
    char *slash;
    size_t n = strlen(path);

    if (n >= sizeof buf)
        return sg_err_set(err, SG_EINVAL, "datastore path is too long");
    memcpy(buf, path, n + 1);
    slash = strrchr(buf, '/');
    if (slash == NULL || slash == buf)
        return 0;
    *slash = '\0';
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST)
            return sg_err_sys(err, "creating datastore directory \"%s\"", buf);
        *p = '/';
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return sg_err_sys(err, "creating datastore directory \"%s\"", buf);
    return 0;
}

/* Creates the database file with mode 0600 when it does not exist yet. */
static int create_file(const char *path, sg_err *err)
{
    struct stat sb;
    int fd, rc;

    if (strcmp(path, ":memory:") == 0)
        return 0;
    rc = mkdir_parents(path, err);
    if (rc < 0)
        return rc;
    if (lstat(path, &sb) == 0) {
        if (!S_ISREG(sb.st_mode))
            return sg_err_set(err, SG_EINVAL, "datastore path \"%s\" is not a regular file", path);
        return 0;
    }
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST)
        return sg_err_sys(err, "creating datastore \"%s\"", path);
    if (fd >= 0)
        close(fd);
    return 0;
}

static int migrate(sqlite_ds *s, const char *path, sg_err *err)
{
    sqlite3_stmt *st = NULL;
    int version = 0, rc;
    bool have_row = false;
    char sql[64];

    rc = begin(s, err);
    if (rc < 0)
        return rc;
    rc = exec(s, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", err,
              "creating schema_version");
    if (rc < 0)
        goto fail;
    if (sqlite3_prepare_v2(s->db, "SELECT version FROM schema_version", -1, &st, NULL) !=
        SQLITE_OK) {
        rc = db_fail(s, err, "reading schema_version");
        goto fail;
    }
    if (sqlite3_step(st) == SQLITE_ROW) {
        version = sqlite3_column_int(st, 0);
        have_row = true;
    }
    sqlite3_finalize(st);
    if (version > SCHEMA_VERSION) {
        rc = sg_err_set(err, SG_EUNSUPPORTED,
                        "datastore \"%.128s\" has schema version %d, newer than the %d this "
                        "sigil-server knows; use a newer sigil-server",
                        path, version, SCHEMA_VERSION);
        goto fail;
    }
    if (version < 0) {
        rc = sg_err_set(err, SG_EDB, "datastore \"%.128s\" has a corrupt schema version %d", path,
                        version);
        goto fail;
    }
    if (!have_row) {
        rc = exec(s, "INSERT INTO schema_version (version) VALUES (0)", err, "initialising schema");
        if (rc < 0)
            goto fail;
    }
    for (int v = version; v < SCHEMA_VERSION; v++) {
        rc = exec(s, migrations[v], err, "running a schema migration");
        if (rc < 0)
            goto fail;
    }
    if (version != SCHEMA_VERSION) {
        snprintf(sql, sizeof sql, "UPDATE schema_version SET version = %d", SCHEMA_VERSION);
        rc = exec(s, sql, err, "recording the schema version");
        if (rc < 0)
            goto fail;
    }
    return commit(s, err);
fail:
    rollback(s);
    return rc;
}

static void ds_close(void *state)
{
    sqlite_ds *s = state;

    if (s == NULL)
        return;
    for (size_t i = 0; i < s->ncache; i++)
        sqlite3_finalize(s->cache[i].st);
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int ds_open(void **state, const char *conn, sg_err *err)
{
    sqlite_ds *s;
    int rc;

    rc = create_file(conn, err);
    if (rc < 0)
        return rc;
    s = calloc(1, sizeof *s);
    if (s == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    pthread_mutex_init(&s->mu, NULL);
    if (sqlite3_open_v2(conn, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        rc = sg_err_set(err, SG_EDB, "datastore: opening \"%.128s\": %s", conn,
                        s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(s->db, 0);
    rc = exec(s, "PRAGMA foreign_keys = ON", err, "enabling foreign keys");
    if (rc == 0 && strcmp(conn, ":memory:") != 0)
        rc = exec(s, "PRAGMA journal_mode = WAL", err, "enabling WAL");
    if (rc == 0)
        rc = exec(s, "PRAGMA synchronous = NORMAL", err, "setting synchronous");
    if (rc < 0) {
        /* A file that is not a database fails here first: say which file. */
        size_t n = strlen(err ? err->msg : "");
        if (err != NULL)
            snprintf(err->msg + n, sizeof err->msg - n, " (file \"%.96s\")", conn);
        goto fail;
    }
    rc = migrate(s, conn, err);
    if (rc < 0)
        goto fail;
    *state = s;
    return 0;
fail:
    ds_close(s);
    return rc;
}

/* ------------------------------------------------------------ entries */

static int bump_revision(sqlite_ds *s, int64_t *out, sg_err *err)
{
    static const char up[] = "UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value";
    sqlite3_stmt *st = stmt(s, up, err);
    int rc = 0;

    if (st == NULL)
        return SG_EDB;
    if (sqlite3_step(st) == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    else
        rc = db_fail(s, err, "bumping the revision");
    stmt_done(s, st);
    return rc;
}

/* Finds another entry with the same spiffe_id, parent_id and selectors. */
static int check_duplicate(sqlite_ds *s, const sg_entry *e, const char *sel_json, sg_err *err)
{
    static const char q[] = "SELECT id FROM entries WHERE spiffe_id = ? AND parent_id = ? AND "
                            "selectors = ? AND id <> ?";
    sqlite3_stmt *st = stmt(s, q, err);
    int rc = 0, r;

    if (st == NULL)
        return SG_EDB;
    bind_text(st, 1, e->spiffe_id);
    bind_text(st, 2, e->parent_id);
    bind_text(st, 3, sel_json);
    bind_text(st, 4, e->id);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        rc = sg_err_set(err, SG_EEXIST,
                        "an entry with SPIFFE ID \"%.96s\", parent ID \"%.96s\" and the same "
                        "selectors already exists (id %.36s)",
                        e->spiffe_id, e->parent_id, (const char *)sqlite3_column_text(st, 0));
    else if (r != SQLITE_DONE)
        rc = db_fail(s, err, "checking for duplicates");
    stmt_done(s, st);
    return rc;
}

static int insert_selectors(sqlite_ds *s, const sg_entry *e, sg_err *err)
{
    static const char q[] = "INSERT INTO entry_selectors (entry_id, type, value) VALUES (?, ?, ?)";

    for (size_t i = 0; i < e->nselectors; i++) {
        sqlite3_stmt *st = stmt(s, q, err);
        int r;

        if (st == NULL)
            return SG_EDB;
        bind_text(st, 1, e->id);
        bind_text(st, 2, e->selectors[i].type);
        bind_text(st, 3, e->selectors[i].value);
        r = sqlite3_step(st);
        stmt_done(s, st);
        if (r != SQLITE_DONE)
            return db_fail(s, err, "storing selectors");
    }
    return 0;
}

/*
 * Records e's federated trust domains, each of which must have a stored
 * bundle (SPIRE refuses an entry that federates with an unknown one).
 */
static int insert_federates(sqlite_ds *s, const sg_entry *e, sg_err *err)
{
    static const char chk[] = "SELECT 1 FROM federated_bundles WHERE trust_domain = ?";
    static const char q[] = "INSERT INTO entry_federates (entry_id, trust_domain) VALUES (?, ?)";

    for (size_t i = 0; i < e->nfederates_with; i++) {
        const char *td = e->federates_with[i] + strlen("spiffe://");
        sqlite3_stmt *st = stmt(s, chk, err);
        int r;

        if (st == NULL)
            return SG_EDB;
        bind_text(st, 1, td);
        r = sqlite3_step(st);
        stmt_done(s, st);
        if (r == SQLITE_DONE)
            return sg_err_set(err, SG_ENOENT,
                              "unable to find federated bundle \"%.200s\" (set it with bundle set "
                              "or a federation relationship first)",
                              e->federates_with[i]);
        if (r != SQLITE_ROW)
            return db_fail(s, err, "looking up a federated bundle");
        st = stmt(s, q, err);
        if (st == NULL)
            return SG_EDB;
        bind_text(st, 1, e->id);
        bind_text(st, 2, td);
        r = sqlite3_step(st);
        stmt_done(s, st);
        if (r != SQLITE_DONE)
            return db_fail(s, err, "storing federated trust domains");
    }
    return 0;
}

static bool entry_exists(sqlite_ds *s, const char *id, int *rc, int64_t *created_at, sg_err *err)
{
    static const char q[] = "SELECT created_at FROM entries WHERE id = ?";
    sqlite3_stmt *st = stmt(s, q, err);
    bool found = false;
    int r;

    if (st == NULL) {
        *rc = SG_EDB;
        return false;
    }
    bind_text(st, 1, id);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        found = true;
        if (created_at != NULL)
            *created_at = sqlite3_column_int64(st, 0);
    } else if (r != SQLITE_DONE) {
        *rc = db_fail(s, err, "looking up an entry");
    }
    stmt_done(s, st);
    return found;
}

/* Inserts or replaces (update) the entry row and its selectors inside a transaction. */
static int entry_write(sqlite_ds *s, sg_entry *e, bool update, sg_err *err)
{
    static const char ins[] =
        "INSERT INTO entries (id, spiffe_id, parent_id, selectors, dns_names, x509_svid_ttl, "
        "jwt_svid_ttl, hint, downstream, admin, revision, created_at, federates_with) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    static const char upd[] =
        "UPDATE entries SET spiffe_id = ?2, parent_id = ?3, selectors = ?4, dns_names = ?5, "
        "x509_svid_ttl = ?6, jwt_svid_ttl = ?7, hint = ?8, downstream = ?9, admin = ?10, "
        "revision = ?11, created_at = ?12, federates_with = ?13 WHERE id = ?1";
    static const char delsel[] = "DELETE FROM entry_selectors WHERE entry_id = ?";
    static const char delfed[] = "DELETE FROM entry_federates WHERE entry_id = ?";
    char *sel_json = selectors_json(e->selectors, e->nselectors);
    char *dns_json = strings_json(e->dns_names, e->ndns);
    char *fed_json = strings_json(e->federates_with, e->nfederates_with);
    sqlite3_stmt *st;
    int64_t rev = 0, created = (int64_t)time(NULL);
    int rc = 0;
    bool exists;

    if (sel_json == NULL || dns_json == NULL || fed_json == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory encoding an entry");
        goto out;
    }
    pthread_mutex_lock(&s->mu);
    rc = begin(s, err);
    if (rc < 0)
        goto unlock;
    exists = entry_exists(s, e->id, &rc, &created, err);
    if (rc < 0)
        goto fail;
    if (update && !exists) {
        rc = sg_err_set(err, SG_ENOENT, "entry \"%s\" not found", e->id);
        goto fail;
    }
    if (!update && exists) {
        rc = sg_err_set(err, SG_EEXIST, "entry id \"%s\" already exists", e->id);
        goto fail;
    }
    rc = check_duplicate(s, e, sel_json, err);
    if (rc < 0)
        goto fail;
    rc = bump_revision(s, &rev, err);
    if (rc < 0)
        goto fail;
    st = stmt(s, update ? upd : ins, err);
    if (st == NULL) {
        rc = SG_EDB;
        goto fail;
    }
    bind_text(st, 1, e->id);
    bind_text(st, 2, e->spiffe_id);
    bind_text(st, 3, e->parent_id);
    bind_text(st, 4, sel_json);
    bind_text(st, 5, dns_json);
    sqlite3_bind_int(st, 6, e->x509_svid_ttl);
    sqlite3_bind_int(st, 7, e->jwt_svid_ttl);
    bind_text(st, 8, e->hint);
    sqlite3_bind_int(st, 9, e->downstream ? 1 : 0);
    sqlite3_bind_int(st, 10, e->admin ? 1 : 0);
    sqlite3_bind_int64(st, 11, rev);
    sqlite3_bind_int64(st, 12, created);
    bind_text(st, 13, fed_json);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = db_fail(s, err, update ? "updating an entry" : "inserting an entry");
        stmt_done(s, st);
        goto fail;
    }
    stmt_done(s, st);
    if (update) {
        st = stmt(s, delsel, err);
        if (st == NULL) {
            rc = SG_EDB;
            goto fail;
        }
        bind_text(st, 1, e->id);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = db_fail(s, err, "replacing selectors");
        stmt_done(s, st);
        if (rc < 0)
            goto fail;
        st = stmt(s, delfed, err);
        if (st == NULL) {
            rc = SG_EDB;
            goto fail;
        }
        bind_text(st, 1, e->id);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = db_fail(s, err, "replacing federated trust domains");
        stmt_done(s, st);
        if (rc < 0)
            goto fail;
    }
    rc = insert_selectors(s, e, err);
    if (rc == 0)
        rc = insert_federates(s, e, err);
    if (rc < 0)
        goto fail;
    rc = commit(s, err);
    if (rc < 0)
        goto fail;
    e->revision = rev;
    e->created_at = created;
    goto unlock;
fail:
    rollback(s);
unlock:
    pthread_mutex_unlock(&s->mu);
out:
    free(sel_json);
    free(dns_json);
    free(fed_json);
    return rc;
}

static int ds_entry_create(void *st, sg_entry *e, sg_err *err)
{
    return entry_write(st, e, false, err);
}

static int ds_entry_update(void *st, sg_entry *e, sg_err *err)
{
    return entry_write(st, e, true, err);
}

static int ds_entry_delete(void *state, const char *id, sg_err *err)
{
    static const char q[] = "DELETE FROM entries WHERE id = ?";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    int64_t rev;
    int rc;

    pthread_mutex_lock(&s->mu);
    rc = begin(s, err);
    if (rc < 0)
        goto unlock;
    st = stmt(s, q, err);
    if (st == NULL) {
        rc = SG_EDB;
        goto fail;
    }
    bind_text(st, 1, id);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, err, "deleting an entry");
    else if (sqlite3_changes(s->db) == 0)
        rc = sg_err_set(err, SG_ENOENT, "entry \"%s\" not found", id);
    stmt_done(s, st);
    if (rc < 0)
        goto fail;
    rc = bump_revision(s, &rev, err);
    if (rc < 0)
        goto fail;
    rc = commit(s, err);
    if (rc == 0)
        goto unlock;
fail:
    rollback(s);
unlock:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Reads one row of a list query into the element at out. */
typedef int (*row_reader)(sqlite3_stmt *st, void *out, sg_err *err);

/* Steps st to its end, reading each row with read_row into a growing array of elem-sized elements
 * at *list with *n filled. On failure returns negative SG_E* and leaves the *n rows read so far
 * in *list for the caller to free; what names the query in errors ("listing entries"). */
static int read_rows(sqlite_ds *s, sqlite3_stmt *st, size_t elem, row_reader read_row,
                     const char *what, void **list, size_t *n, sg_err *err)
{
    size_t cap = 0;
    int rc = 0, r;

    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            void *nv = realloc(*list, ncap * elem);
            if (nv == NULL) {
                rc = sg_err_set(err, SG_ENOMEM, "out of memory %s", what);
                break;
            }
            *list = nv;
            cap = ncap;
        }
        rc = read_row(st, (char *)*list + *n * elem, err);
        if (rc < 0)
            break;
        (*n)++;
    }
    if (rc == 0 && r != SQLITE_DONE)
        rc = db_fail(s, err, what);
    return rc;
}

/* Runs q with key bound to its one parameter and reads the row it finds with read_row into out;
 * SG_ENOENT naming noun and key when there is none, what names the query in database errors. */
static int read_one(sqlite_ds *s, const char *q, const char *key, row_reader read_row, void *out,
                    const char *noun, const char *what, sg_err *err)
{
    sqlite3_stmt *st;
    int rc, r;

    pthread_mutex_lock(&s->mu);
    st = stmt(s, q, err);
    if (st == NULL) {
        rc = SG_EDB;
    } else {
        bind_text(st, 1, key);
        r = sqlite3_step(st);
        if (r == SQLITE_ROW)
            rc = read_row(st, out, err);
        else if (r == SQLITE_DONE)
            rc = sg_err_set(err, SG_ENOENT, "%s \"%.200s\" not found", noun, key);
        else
            rc = db_fail(s, err, what);
        stmt_done(s, st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

#define ENTRY_COLS                                                                                 \
    "id, spiffe_id, parent_id, selectors, dns_names, x509_svid_ttl, jwt_svid_ttl, hint, "          \
    "downstream, admin, revision, created_at, federates_with"

/* Reads one row of ENTRY_COLS into out. */
static int read_entry(sqlite3_stmt *st, sg_entry *out, sg_err *err)
{
    sg_entry e;
    const unsigned char *id = sqlite3_column_text(st, 0);
    int rc = 0;

    memset(&e, 0, sizeof e);
    if (id == NULL || strlen((const char *)id) > SG_ENTRY_ID_LEN)
        return sg_err_set(err, SG_EDB, "datastore: corrupt entry id");
    memcpy(e.id, id, strlen((const char *)id) + 1);
    e.spiffe_id = col_strdup(st, 1, &rc);
    e.parent_id = col_strdup(st, 2, &rc);
    e.hint = col_strdup(st, 7, &rc);
    if (rc == 0)
        rc = parse_selectors((const char *)sqlite3_column_text(st, 3), &e.selectors, &e.nselectors,
                             err);
    if (rc == 0)
        rc = parse_strings((const char *)sqlite3_column_text(st, 4), &e.dns_names, &e.ndns, err);
    if (rc == 0)
        rc = parse_strings_col((const char *)sqlite3_column_text(st, 12), "federates_with",
                               &e.federates_with, &e.nfederates_with, err);
    if (rc == SG_ENOMEM)
        sg_err_set(err, SG_ENOMEM, "out of memory");
    if (rc == 0 && (e.spiffe_id == NULL || e.parent_id == NULL))
        rc = sg_err_set(err, SG_EDB, "datastore: corrupt entry \"%s\"", e.id);
    if (rc < 0) {
        sg_entry_cleanup(&e);
        return rc;
    }
    e.x509_svid_ttl = sqlite3_column_int(st, 5);
    e.jwt_svid_ttl = sqlite3_column_int(st, 6);
    e.downstream = sqlite3_column_int(st, 8) != 0;
    e.admin = sqlite3_column_int(st, 9) != 0;
    e.revision = sqlite3_column_int64(st, 10);
    e.created_at = sqlite3_column_int64(st, 11);
    *out = e;
    return 0;
}

static int read_entry_row(sqlite3_stmt *st, void *out, sg_err *err)
{
    return read_entry(st, out, err);
}

static int ds_entry_get(void *state, const char *id, sg_entry *out, sg_err *err)
{
    static const char q[] = "SELECT " ENTRY_COLS " FROM entries WHERE id = ?";

    return read_one(state, q, id, read_entry_row, out, "entry", "reading an entry", err);
}

static int ds_entry_list(void *state, const sg_entry_filter *f, sg_entry **list, size_t *n,
                         sg_err *err)
{
    static const char all[] = "SELECT " ENTRY_COLS " FROM entries ORDER BY id";
    static const char sel_clause[] = " AND EXISTS (SELECT 1 FROM entry_selectors s WHERE "
                                     "s.entry_id = entries.id AND s.type = ? AND s.value = ?)";
    sqlite_ds *s = state;
    sqlite3_stmt *st = NULL;
    void *v = NULL;
    size_t cnt = 0;
    char *sql = NULL;
    int rc = 0;
    bool filtered = f != NULL && (f->spiffe_id || f->parent_id || f->nselectors > 0);

    if (filtered) {
        size_t len = 256 + f->nselectors * sizeof sel_clause;
        size_t off;
        sql = malloc(len);
        if (sql == NULL)
            return sg_err_set(err, SG_ENOMEM, "out of memory");
        off = (size_t)snprintf(sql, len, "SELECT " ENTRY_COLS " FROM entries WHERE 1%s%s",
                               f->spiffe_id ? " AND spiffe_id = ?" : "",
                               f->parent_id ? " AND parent_id = ?" : "");
        for (size_t i = 0; i < f->nselectors; i++) {
            memcpy(sql + off, sel_clause, sizeof sel_clause);
            off += sizeof sel_clause - 1;
        }
        snprintf(sql + off, len - off, " ORDER BY id");
    }
    pthread_mutex_lock(&s->mu);
    if (filtered) {
        int b = 1;
        if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
            rc = db_fail(s, err, "preparing an entry query");
            st = NULL;
            goto unlock;
        }
        if (f->spiffe_id)
            bind_text(st, b++, f->spiffe_id);
        if (f->parent_id)
            bind_text(st, b++, f->parent_id);
        for (size_t i = 0; i < f->nselectors; i++) {
            bind_text(st, b++, f->selectors[i].type);
            bind_text(st, b++, f->selectors[i].value);
        }
    } else {
        st = stmt(s, all, err);
        if (st == NULL) {
            rc = SG_EDB;
            goto unlock;
        }
    }
    rc = read_rows(s, st, sizeof(sg_entry), read_entry_row, "listing entries", &v, &cnt, err);
unlock:
    stmt_done(s, st);
    pthread_mutex_unlock(&s->mu);
    free(sql);
    if (rc < 0) {
        sg_entry_list_free(v, cnt);
        return rc;
    }
    *list = v;
    *n = cnt;
    return 0;
}

static int ds_entry_revision(void *state, int64_t *out, sg_err *err)
{
    static const char q[] = "SELECT value FROM revision WHERE id = 1";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    int rc = 0;

    pthread_mutex_lock(&s->mu);
    st = stmt(s, q, err);
    if (st == NULL)
        rc = SG_EDB;
    else if (sqlite3_step(st) == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    else
        rc = db_fail(s, err, "reading the revision");
    stmt_done(s, st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ------------------------------------------------------------ join tokens */

static int ds_token_create(void *state, const char *hash, int64_t expires_at, sg_err *err)
{
    static const char q[] = "INSERT INTO join_tokens (hash, expires_at) VALUES (?, ?)";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    int rc = 0, r;

    pthread_mutex_lock(&s->mu);
    st = stmt(s, q, err);
    if (st == NULL) {
        rc = SG_EDB;
    } else {
        bind_text(st, 1, hash);
        sqlite3_bind_int64(st, 2, expires_at);
        r = sqlite3_step(st);
        if (r == SQLITE_CONSTRAINT)
            rc = sg_err_set(err, SG_EEXIST, "join token already exists");
        else if (r != SQLITE_DONE)
            rc = db_fail(s, err, "storing a join token");
        stmt_done(s, st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int ds_token_consume(void *state, const char *hash, int64_t now, sg_err *err)
{
    static const char q[] = "DELETE FROM join_tokens WHERE hash = ? RETURNING expires_at";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    int64_t expires_at = 0;
    bool found = false;
    int rc, r;

    /* One DELETE ... RETURNING in one transaction: two concurrent consumers
     * can never both see the row. */
    pthread_mutex_lock(&s->mu);
    rc = begin(s, err);
    if (rc < 0)
        goto unlock;
    st = stmt(s, q, err);
    if (st == NULL) {
        rc = SG_EDB;
        goto fail;
    }
    bind_text(st, 1, hash);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        expires_at = sqlite3_column_int64(st, 0);
        found = true;
        r = sqlite3_step(st);
    }
    if (r != SQLITE_DONE)
        rc = db_fail(s, err, "consuming a join token");
    stmt_done(s, st);
    if (rc < 0)
        goto fail;
    rc = commit(s, err);
    if (rc < 0)
        goto fail;
    if (!found)
        rc = sg_err_set(err, SG_ENOENT, "join token not found or already used");
    else if (now > expires_at)
        rc = sg_err_set(err, SG_EEXPIRED, "join token expired");
    goto unlock;
fail:
    rollback(s);
unlock:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int ds_token_prune(void *state, int64_t now, sg_err *err)
{
    static const char q[] = "DELETE FROM join_tokens WHERE expires_at < ?";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    int rc = 0;

    pthread_mutex_lock(&s->mu);
    st = stmt(s, q, err);
    if (st == NULL) {
        rc = SG_EDB;
    } else {
        sqlite3_bind_int64(st, 1, now);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = db_fail(s, err, "pruning join tokens");
        stmt_done(s, st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ------------------------------------------------------------ agents */

static int ds_agent_put(void *state, const sg_agent_rec *a, sg_err *err)
{
    static const char q[] =
        "INSERT OR REPLACE INTO agents (spiffe_id, attestation_type, serial, prev_serial, "
        "expires_at, attested_at, banned, selectors) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    char *sel = selectors_json(a->selectors, a->nselectors);
    int rc = 0;

    if (sel == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory encoding an agent");
    pthread_mutex_lock(&s->mu);
    st = stmt(s, q, err);
    if (st == NULL) {
        rc = SG_EDB;
    } else {
        bind_text(st, 1, a->spiffe_id);
        bind_text(st, 2, a->attestation_type ? a->attestation_type : "");
        bind_text(st, 3, a->serial);
        bind_text(st, 4, a->prev_serial);
        sqlite3_bind_int64(st, 5, a->expires_at);
        sqlite3_bind_int64(st, 6, a->attested_at);
        sqlite3_bind_int(st, 7, a->banned ? 1 : 0);
        bind_text(st, 8, sel);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = db_fail(s, err, "storing an agent");
        stmt_done(s, st);
    }
    pthread_mutex_unlock(&s->mu);
    free(sel);
    return rc;
}

#define AGENT_COLS                                                                                 \
    "spiffe_id, attestation_type, serial, prev_serial, expires_at, attested_at, banned, selectors"

static void copy_serial(char dst[41], const unsigned char *src)
{
    snprintf(dst, 41, "%s", src ? (const char *)src : "");
}

static int read_agent(sqlite3_stmt *st, sg_agent_rec *out, sg_err *err)
{
    sg_agent_rec a;
    int rc = 0;

    memset(&a, 0, sizeof a);
    a.spiffe_id = col_strdup(st, 0, &rc);
    a.attestation_type = col_strdup(st, 1, &rc);
    copy_serial(a.serial, sqlite3_column_text(st, 2));
    copy_serial(a.prev_serial, sqlite3_column_text(st, 3));
    a.expires_at = sqlite3_column_int64(st, 4);
    a.attested_at = sqlite3_column_int64(st, 5);
    a.banned = sqlite3_column_int(st, 6) != 0;
    if (rc == 0)
        rc = parse_selectors((const char *)sqlite3_column_text(st, 7), &a.selectors, &a.nselectors,
                             err);
    if (rc == SG_ENOMEM)
        sg_err_set(err, SG_ENOMEM, "out of memory");
    if (rc == 0 && a.spiffe_id == NULL)
        rc = sg_err_set(err, SG_EDB, "datastore: corrupt agent row");
    if (rc < 0) {
        sg_agent_rec_cleanup(&a);
        return rc;
    }
    *out = a;
    return 0;
}

static int read_agent_row(sqlite3_stmt *st, void *out, sg_err *err)
{
    return read_agent(st, out, err);
}

static int ds_agent_get(void *state, const char *id, sg_agent_rec *out, sg_err *err)
{
    static const char q[] = "SELECT " AGENT_COLS " FROM agents WHERE spiffe_id = ?";

    return read_one(state, q, id, read_agent_row, out, "agent", "reading an agent", err);
}

static int ds_agent_list(void *state, sg_agent_rec **list, size_t *n, sg_err *err)
{
    static const char q[] = "SELECT " AGENT_COLS " FROM agents ORDER BY spiffe_id";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    void *v = NULL;
    size_t cnt = 0;
    int rc = 0;

    pthread_mutex_lock(&s->mu);
    st = stmt(s, q, err);
    if (st == NULL) {
        rc = SG_EDB;
        goto unlock;
    }
    rc = read_rows(s, st, sizeof(sg_agent_rec), read_agent_row, "listing agents", &v, &cnt, err);
unlock:
    stmt_done(s, st);
    pthread_mutex_unlock(&s->mu);
    if (rc < 0) {
        sg_agent_rec_list_free(v, cnt);
        return rc;
    }
    *list = v;
    *n = cnt;
    return 0;
}

/* Runs a one-parameter-bound write on an agent and reports SG_ENOENT when no row changed. */
static int agent_write(sqlite_ds *s, const char *sql, const char *id, int banned, sg_err *err)
{
    sqlite3_stmt *st;
    int rc = 0;

    pthread_mutex_lock(&s->mu);
    st = stmt(s, sql, err);
    if (st == NULL) {
        rc = SG_EDB;
    } else {
        bind_text(st, 1, id);
        if (banned >= 0)
            sqlite3_bind_int(st, 2, banned);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = db_fail(s, err, "updating an agent");
        else if (sqlite3_changes(s->db) == 0)
            rc = sg_err_set(err, SG_ENOENT, "agent \"%.200s\" not found", id);
        stmt_done(s, st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int ds_agent_delete(void *state, const char *id, sg_err *err)
{
    static const char q[] = "DELETE FROM agents WHERE spiffe_id = ?";

    return agent_write(state, q, id, -1, err);
}

static int ds_agent_set_banned(void *state, const char *id, bool banned, sg_err *err)
{
    static const char q[] = "UPDATE agents SET banned = ?2 WHERE spiffe_id = ?1";

    return agent_write(state, q, id, banned ? 1 : 0, err);
}

/* ------------------------------------------------------------ federation */

static int ds_fed_bundle_put(void *state, const char *td, const char *jwks, uint64_t seq,
                             int64_t now, bool *changed, sg_err *err)
{
    static const char get[] = "SELECT jwks, sequence FROM federated_bundles WHERE trust_domain = ?";
    static const char put[] = "INSERT OR REPLACE INTO federated_bundles (trust_domain, jwks, "
                              "sequence, updated_at) VALUES (?, ?, ?, ?)";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    int rc, r;
    bool same = false;

    *changed = false;
    pthread_mutex_lock(&s->mu);
    rc = begin(s, err);
    if (rc < 0)
        goto unlock;
    st = stmt(s, get, err);
    if (st == NULL) {
        rc = SG_EDB;
        goto fail;
    }
    bind_text(st, 1, td);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        const unsigned char *old = sqlite3_column_text(st, 0);
        uint64_t oldseq = (uint64_t)sqlite3_column_int64(st, 1);
        if (seq < oldseq)
            rc = sg_err_set(err, SG_EINVAL,
                            "bundle of \"%.200s\": sequence %llu is older than the stored %llu", td,
                            (unsigned long long)seq, (unsigned long long)oldseq);
        else if (seq == oldseq && old != NULL && strcmp((const char *)old, jwks) == 0)
            same = true;
    } else if (r != SQLITE_DONE) {
        rc = db_fail(s, err, "reading a federated bundle");
    }
    stmt_done(s, st);
    if (rc < 0)
        goto fail;
    if (!same) {
        st = stmt(s, put, err);
        if (st == NULL) {
            rc = SG_EDB;
            goto fail;
        }
        bind_text(st, 1, td);
        bind_text(st, 2, jwks);
        sqlite3_bind_int64(st, 3, (int64_t)seq);
        sqlite3_bind_int64(st, 4, now);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = db_fail(s, err, "storing a federated bundle");
        stmt_done(s, st);
        if (rc < 0)
            goto fail;
    }
    rc = commit(s, err);
    if (rc < 0)
        goto fail;
    *changed = !same;
    goto unlock;
fail:
    rollback(s);
unlock:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

#define FED_BUNDLE_COLS "trust_domain, jwks, sequence, updated_at"

static int read_fed_bundle_row(sqlite3_stmt *st, void *out, sg_err *err)
{
    sg_fed_bundle_rec b;
    int rc = 0;

    memset(&b, 0, sizeof b);
    b.trust_domain = col_strdup(st, 0, &rc);
    b.jwks = col_strdup(st, 1, &rc);
    b.sequence = (uint64_t)sqlite3_column_int64(st, 2);
    b.updated_at = sqlite3_column_int64(st, 3);
    if (rc == 0 && (b.trust_domain == NULL || b.jwks == NULL))
        rc = sg_err_set(err, SG_EDB, "datastore: corrupt federated bundle row");
    else if (rc < 0)
        sg_err_set(err, rc, "out of memory");
    if (rc < 0) {
        sg_fed_bundle_rec_cleanup(&b);
        return rc;
    }
    *(sg_fed_bundle_rec *)out = b;
    return 0;
}

static int ds_fed_bundle_get(void *state, const char *td, sg_fed_bundle_rec *out, sg_err *err)
{
    static const char q[] =
        "SELECT " FED_BUNDLE_COLS " FROM federated_bundles WHERE trust_domain = ?";

    return read_one(state, q, td, read_fed_bundle_row, out, "federated bundle",
                    "reading a federated bundle", err);
}

/* Runs a parameterless list query q into *list with read_row. */
static int list_all(sqlite_ds *s, const char *q, size_t elem, row_reader read_row, const char *what,
                    void **list, size_t *n, sg_err *err)
{
    sqlite3_stmt *st;
    int rc;

    *list = NULL;
    *n = 0;
    pthread_mutex_lock(&s->mu);
    st = stmt(s, q, err);
    rc = st == NULL ? SG_EDB : read_rows(s, st, elem, read_row, what, list, n, err);
    stmt_done(s, st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int ds_fed_bundle_list(void *state, sg_fed_bundle_rec **list, size_t *n, sg_err *err)
{
    static const char q[] =
        "SELECT " FED_BUNDLE_COLS " FROM federated_bundles ORDER BY trust_domain";
    void *v = NULL;
    size_t cnt = 0;
    int rc = list_all(state, q, sizeof(sg_fed_bundle_rec), read_fed_bundle_row,
                      "listing federated bundles", &v, &cnt, err);

    if (rc < 0) {
        sg_fed_bundle_rec_list_free(v, cnt);
        return rc;
    }
    *list = v;
    *n = cnt;
    return 0;
}

/* Removes "spiffe://td" from every entry that federates with td, each with a new revision. */
static int dissociate_entries(sqlite_ds *s, const char *td, size_t *changed, sg_err *err)
{
    static const char sel[] = "SELECT e.id, e.federates_with FROM entries e JOIN entry_federates f "
                              "ON f.entry_id = e.id WHERE f.trust_domain = ? ORDER BY e.id";
    static const char upd[] = "UPDATE entries SET federates_with = ?, revision = ? WHERE id = ?";
    char want[SG_TRUST_DOMAIN_MAX + 16];
    char **ids = NULL, **feds = NULL;
    size_t n = 0, cap = 0;
    sqlite3_stmt *st;
    int rc = 0, r;

    snprintf(want, sizeof want, "spiffe://%s", td);
    st = stmt(s, sel, err);
    if (st == NULL)
        return SG_EDB;
    bind_text(st, 1, td);
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **a = realloc(ids, nc * sizeof *a), **b;
            if (a != NULL)
                ids = a;
            b = a != NULL ? realloc(feds, nc * sizeof *b) : NULL;
            if (b == NULL) {
                rc = sg_err_set(err, SG_ENOMEM, "out of memory");
                break;
            }
            feds = b;
            cap = nc;
        }
        ids[n] = col_strdup(st, 0, &rc);
        feds[n] = col_strdup(st, 1, &rc);
        n++;
        if (rc < 0) {
            sg_err_set(err, rc, "out of memory");
            break;
        }
    }
    if (rc == 0 && r != SQLITE_DONE)
        rc = db_fail(s, err, "listing federated entries");
    stmt_done(s, st);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char **v = NULL, *json;
        size_t nv = 0, w = 0;
        int64_t rev;
        rc = parse_strings_col(feds[i], "federates_with", &v, &nv, err);
        if (rc < 0)
            break;
        for (size_t j = 0; j < nv; j++) {
            if (strcmp(v[j], want) == 0)
                free(v[j]);
            else
                v[w++] = v[j];
        }
        json = strings_json(v, w);
        for (size_t j = 0; j < w; j++)
            free(v[j]);
        free(v);
        if (json == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            break;
        }
        rc = bump_revision(s, &rev, err);
        if (rc == 0) {
            st = stmt(s, upd, err);
            if (st == NULL) {
                rc = SG_EDB;
            } else {
                bind_text(st, 1, json);
                sqlite3_bind_int64(st, 2, rev);
                bind_text(st, 3, ids[i]);
                if (sqlite3_step(st) != SQLITE_DONE)
                    rc = db_fail(s, err, "dissociating an entry");
                stmt_done(s, st);
            }
        }
        free(json);
    }
    for (size_t i = 0; i < n; i++) {
        free(ids[i]);
        free(feds[i]);
    }
    free(ids);
    free(feds);
    if (rc == 0)
        *changed = n;
    return rc;
}

/* Runs a one-text-parameter statement; *changes (may be NULL) gets the changed row count. */
static int exec_td(sqlite_ds *s, const char *q, const char *td, int *changes, const char *what,
                   sg_err *err)
{
    sqlite3_stmt *st = stmt(s, q, err);
    int rc = 0;

    if (st == NULL)
        return SG_EDB;
    bind_text(st, 1, td);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, err, what);
    else if (changes != NULL)
        *changes = sqlite3_changes(s->db);
    stmt_done(s, st);
    return rc;
}

static int ds_fed_bundle_delete(void *state, const char *td, sg_fed_delete_mode mode,
                                size_t *changed, sg_err *err)
{
    static const char cnt[] = "SELECT COUNT(*) FROM entry_federates WHERE trust_domain = ?";
    static const char delent[] = "DELETE FROM entries WHERE id IN (SELECT entry_id FROM "
                                 "entry_federates WHERE trust_domain = ?)";
    static const char delfed[] = "DELETE FROM entry_federates WHERE trust_domain = ?";
    static const char del[] = "DELETE FROM federated_bundles WHERE trust_domain = ?";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    int64_t used = 0, rev;
    int rc, ch = 0;

    *changed = 0;
    pthread_mutex_lock(&s->mu);
    rc = begin(s, err);
    if (rc < 0)
        goto unlock;
    st = stmt(s, cnt, err);
    if (st == NULL) {
        rc = SG_EDB;
        goto fail;
    }
    bind_text(st, 1, td);
    if (sqlite3_step(st) == SQLITE_ROW)
        used = sqlite3_column_int64(st, 0);
    else
        rc = db_fail(s, err, "counting federated entries");
    stmt_done(s, st);
    if (rc < 0)
        goto fail;
    rc = exec_td(s, del, td, &ch, "deleting a federated bundle", err);
    if (rc < 0)
        goto fail;
    if (ch == 0) {
        rc = sg_err_set(err, SG_ENOENT, "federated bundle \"spiffe://%.200s\" not found", td);
        goto fail;
    }
    if (used > 0 && mode == SG_FED_DELETE_RESTRICT) {
        rc = sg_err_set(err, SG_EPERM,
                        "cannot delete bundle \"spiffe://%.200s\": %lld registration entries "
                        "federate with it (use -mode delete or -mode dissociate)",
                        td, (long long)used);
        goto fail;
    }
    if (used > 0 && mode == SG_FED_DELETE_DELETE) {
        rc = exec_td(s, delent, td, &ch, "deleting federated entries", err);
        if (rc == 0)
            rc = bump_revision(s, &rev, err);
        if (rc < 0)
            goto fail;
        *changed = (size_t)ch;
    } else if (used > 0) {
        rc = dissociate_entries(s, td, changed, err);
        if (rc == 0)
            rc = exec_td(s, delfed, td, NULL, "dissociating entries", err);
        if (rc < 0)
            goto fail;
    }
    rc = commit(s, err);
    if (rc == 0)
        goto unlock;
fail:
    *changed = 0;
    rollback(s);
unlock:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int ds_fed_rel_put(void *state, const sg_fed_rel *r, bool update, sg_err *err)
{
    static const char ins[] = "INSERT INTO federation_relationships (trust_domain, url, profile, "
                              "endpoint_spiffe_id) VALUES (?, ?, ?, ?)";
    static const char upd[] = "UPDATE federation_relationships SET url = ?2, profile = ?3, "
                              "endpoint_spiffe_id = ?4 WHERE trust_domain = ?1";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    int rc = 0, x;

    pthread_mutex_lock(&s->mu);
    st = stmt(s, update ? upd : ins, err);
    if (st == NULL) {
        rc = SG_EDB;
    } else {
        bind_text(st, 1, r->trust_domain);
        bind_text(st, 2, r->url);
        bind_text(st, 3, r->profile);
        bind_text(st, 4,
                  r->endpoint_spiffe_id && r->endpoint_spiffe_id[0] ? r->endpoint_spiffe_id : NULL);
        x = sqlite3_step(st);
        if (x == SQLITE_CONSTRAINT)
            rc = sg_err_set(err, SG_EEXIST,
                            "a federation relationship with \"%.200s\" already exists",
                            r->trust_domain);
        else if (x != SQLITE_DONE)
            rc = db_fail(s, err, "storing a federation relationship");
        else if (update && sqlite3_changes(s->db) == 0)
            rc = sg_err_set(err, SG_ENOENT, "federation relationship with \"%.200s\" not found",
                            r->trust_domain);
        stmt_done(s, st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

#define FED_REL_COLS "trust_domain, url, profile, endpoint_spiffe_id"

static int read_fed_rel_row(sqlite3_stmt *st, void *out, sg_err *err)
{
    sg_fed_rel r;
    int rc = 0;

    memset(&r, 0, sizeof r);
    r.trust_domain = col_strdup(st, 0, &rc);
    r.url = col_strdup(st, 1, &rc);
    r.profile = col_strdup(st, 2, &rc);
    r.endpoint_spiffe_id = col_strdup(st, 3, &rc);
    if (rc == 0 && (r.trust_domain == NULL || r.url == NULL || r.profile == NULL))
        rc = sg_err_set(err, SG_EDB, "datastore: corrupt federation relationship row");
    else if (rc < 0)
        sg_err_set(err, rc, "out of memory");
    if (rc < 0) {
        sg_fed_rel_cleanup(&r);
        return rc;
    }
    *(sg_fed_rel *)out = r;
    return 0;
}

static int ds_fed_rel_get(void *state, const char *td, sg_fed_rel *out, sg_err *err)
{
    static const char q[] =
        "SELECT " FED_REL_COLS " FROM federation_relationships WHERE trust_domain = ?";

    return read_one(state, q, td, read_fed_rel_row, out, "federation relationship with",
                    "reading a federation relationship", err);
}

static int ds_fed_rel_list(void *state, sg_fed_rel **list, size_t *n, sg_err *err)
{
    static const char q[] =
        "SELECT " FED_REL_COLS " FROM federation_relationships ORDER BY trust_domain";
    void *v = NULL;
    size_t cnt = 0;
    int rc = list_all(state, q, sizeof(sg_fed_rel), read_fed_rel_row,
                      "listing federation relationships", &v, &cnt, err);

    if (rc < 0) {
        sg_fed_rel_list_free(v, cnt);
        return rc;
    }
    *list = v;
    *n = cnt;
    return 0;
}

static int ds_fed_rel_delete(void *state, const char *td, sg_err *err)
{
    static const char q[] = "DELETE FROM federation_relationships WHERE trust_domain = ?";
    sqlite_ds *s = state;
    int rc, ch = 0;

    pthread_mutex_lock(&s->mu);
    rc = exec_td(s, q, td, &ch, "deleting a federation relationship", err);
    if (rc == 0 && ch == 0)
        rc = sg_err_set(err, SG_ENOENT, "federation relationship with \"%.200s\" not found", td);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

const sg__ds_backend sg__ds_sqlite = {
    .name = "sqlite3",
    .open = ds_open,
    .close = ds_close,
    .entry_create = ds_entry_create,
    .entry_update = ds_entry_update,
    .entry_delete = ds_entry_delete,
    .entry_get = ds_entry_get,
    .entry_list = ds_entry_list,
    .entry_revision = ds_entry_revision,
    .token_create = ds_token_create,
    .token_consume = ds_token_consume,
    .token_prune = ds_token_prune,
    .agent_put = ds_agent_put,
    .agent_get = ds_agent_get,
    .agent_list = ds_agent_list,
    .agent_delete = ds_agent_delete,
    .agent_set_banned = ds_agent_set_banned,
    .fed_bundle_put = ds_fed_bundle_put,
    .fed_bundle_get = ds_fed_bundle_get,
    .fed_bundle_list = ds_fed_bundle_list,
    .fed_bundle_delete = ds_fed_bundle_delete,
    .fed_rel_put = ds_fed_rel_put,
    .fed_rel_get = ds_fed_rel_get,
    .fed_rel_list = ds_fed_rel_list,
    .fed_rel_delete = ds_fed_rel_delete,
};
