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
#include <stdarg.h>
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
    return sg__ds_strdup_opt((const char *)sqlite3_column_text(st, i), rc);
}

static void bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
}

/*
 * Binds the parameters of st from ap by the letters of types: 't' a const
 * char * (NULL binds SQL NULL), 'i' an int, 'I' an int64_t.
 */
static void bind_args(sqlite3_stmt *st, const char *types, va_list ap)
{
    for (int i = 0; types[i] != '\0'; i++) {
        if (types[i] == 'i')
            sqlite3_bind_int(st, i + 1, va_arg(ap, int));
        else if (types[i] == 'I')
            sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
        else
            bind_text(st, i + 1, va_arg(ap, const char *));
    }
}

/* The cached statement q with its parameters bound as bind_args() binds them; NULL (err set). */
static sqlite3_stmt *vprep(sqlite_ds *s, sg_err *err, const char *q, const char *types, va_list ap)
{
    sqlite3_stmt *st = stmt(s, q, err);

    if (st != NULL)
        bind_args(st, types, ap);
    return st;
}

/*
 * Runs the write q, its parameters bound from the arguments by types (see
 * bind_args), to its end; *changes (may be NULL) gets the number of rows it
 * changed. A constraint violation returns SG_EEXIST, any other failure
 * SG_EDB, both with the database's message after what.
 */
static int run(sqlite_ds *s, int *changes, sg_err *err, const char *what, const char *q,
               const char *types, ...)
{
    sqlite3_stmt *st;
    va_list ap;
    int rc = 0, r;

    va_start(ap, types);
    st = vprep(s, err, q, types, ap);
    va_end(ap);
    if (st == NULL)
        return SG_EDB;
    r = sqlite3_step(st);
    if (r != SQLITE_DONE)
        rc = sg_err_set(err, r == SQLITE_CONSTRAINT ? SG_EEXIST : SG_EDB, "datastore: %s: %s", what,
                        sqlite3_errmsg(s->db));
    else if (changes != NULL)
        *changes = sqlite3_changes(s->db);
    stmt_done(s, st);
    return rc;
}

static int vfirst_row(sqlite_ds *s, sqlite3_stmt **stp, sg_err *err, const char *what,
                      const char *q, const char *types, va_list ap)
{
    sqlite3_stmt *st = vprep(s, err, q, types, ap);
    int rc = 0, r;

    *stp = NULL;
    if (st == NULL)
        return SG_EDB;
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        *stp = st;
        return 1;
    }
    if (r != SQLITE_DONE)
        rc = db_fail(s, err, what);
    stmt_done(s, st);
    return rc;
}

/*
 * Runs the query q, bound as run() binds, for its first row: 1 with *stp on
 * that row (release it with stmt_done), 0 when there is none, or SG_EDB
 * naming what.
 */
static int first_row(sqlite_ds *s, sqlite3_stmt **stp, sg_err *err, const char *what, const char *q,
                     const char *types, ...)
{
    va_list ap;
    int rc;

    va_start(ap, types);
    rc = vfirst_row(s, stp, err, what, q, types, ap);
    va_end(ap);
    return rc;
}

/*
 * Runs the query q, bound as run() binds, for the integer in the first
 * column of its first row, into *out (may be NULL; untouched when there is
 * no row). *found tells whether there was a row; with found NULL a missing
 * row is an SG_EDB error naming what.
 */
static int query_int64(sqlite_ds *s, int64_t *out, bool *found, sg_err *err, const char *what,
                       const char *q, const char *types, ...)
{
    sqlite3_stmt *st;
    va_list ap;
    int rc;

    va_start(ap, types);
    rc = vfirst_row(s, &st, err, what, q, types, ap);
    va_end(ap);
    if (rc == 1 && out != NULL)
        *out = sqlite3_column_int64(st, 0);
    stmt_done(s, st);
    if (rc == 0 && found == NULL)
        return db_fail(s, err, what);
    if (found != NULL)
        *found = rc == 1;
    return rc < 0 ? rc : 0;
}

/* Takes the handle's lock and starts a write transaction; on failure the lock is released. */
static int tx_begin(sqlite_ds *s, sg_err *err)
{
    int rc;

    pthread_mutex_lock(&s->mu);
    rc = begin(s, err);
    if (rc < 0)
        pthread_mutex_unlock(&s->mu);
    return rc;
}

/*
 * Ends what tx_begin() started: commits when rc is 0, rolls back when rc or
 * the commit fails, and unlocks. Returns rc or the commit's error.
 */
static int tx_end(sqlite_ds *s, int rc, sg_err *err)
{
    if (rc == 0)
        rc = commit(s, err);
    if (rc < 0)
        rollback(s);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/*
 * The end of a row reader: rc SG_ENOMEM (from col_strdup) gets its message,
 * and a row that lacks a required column (complete false) is corrupt, named
 * by what and, when not NULL, key. Returns the outcome.
 */
static int row_status(int rc, bool complete, const char *what, const char *key, sg_err *err)
{
    if (rc == SG_ENOMEM)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    if (rc == 0 && !complete)
        return sg_err_set(err, SG_EDB, "datastore: corrupt %s%s%s%s", what, key ? " \"" : "",
                          key ? key : "", key ? "\"" : "");
    return rc;
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

    return query_int64(s, out, NULL, err, "bumping the revision", up, "");
}

/* Finds another entry with the same spiffe_id, parent_id and selectors. */
static int check_duplicate(sqlite_ds *s, const sg_entry *e, const char *sel_json, sg_err *err)
{
    static const char q[] = "SELECT id FROM entries WHERE spiffe_id = ? AND parent_id = ? AND "
                            "selectors = ? AND id <> ?";
    sqlite3_stmt *st;
    int rc = first_row(s, &st, err, "checking for duplicates", q, "tttt", e->spiffe_id,
                       e->parent_id, sel_json, e->id);

    if (rc <= 0)
        return rc;
    rc = sg_err_set(err, SG_EEXIST,
                    "an entry with SPIFFE ID \"%.96s\", parent ID \"%.96s\" and the same "
                    "selectors already exists (id %.36s)",
                    e->spiffe_id, e->parent_id, (const char *)sqlite3_column_text(st, 0));
    stmt_done(s, st);
    return rc;
}

static int insert_selectors(sqlite_ds *s, const sg_entry *e, sg_err *err)
{
    static const char q[] = "INSERT INTO entry_selectors (entry_id, type, value) VALUES (?, ?, ?)";
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < e->nselectors; i++)
        rc = run(s, NULL, err, "storing selectors", q, "ttt", e->id, e->selectors[i].type,
                 e->selectors[i].value);
    return rc;
}

/*
 * Records e's federated trust domains, each of which must have a stored
 * bundle (SPIRE refuses an entry that federates with an unknown one).
 */
static int insert_federates(sqlite_ds *s, const sg_entry *e, sg_err *err)
{
    static const char chk[] = "SELECT 1 FROM federated_bundles WHERE trust_domain = ?";
    static const char q[] = "INSERT INTO entry_federates (entry_id, trust_domain) VALUES (?, ?)";
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < e->nfederates_with; i++) {
        const char *td = e->federates_with[i] + strlen("spiffe://");
        bool found = false;

        rc = query_int64(s, NULL, &found, err, "looking up a federated bundle", chk, "t", td);
        if (rc == 0 && !found)
            rc = sg_err_set(err, SG_ENOENT,
                            "unable to find federated bundle \"%.200s\" (set it with bundle set "
                            "or a federation relationship first)",
                            e->federates_with[i]);
        if (rc == 0)
            rc = run(s, NULL, err, "storing federated trust domains", q, "tt", e->id, td);
    }
    return rc;
}

/* Inserts or replaces (update) the entry row and its selectors inside a transaction. */
static int entry_write(sqlite_ds *s, sg_entry *e, bool update, sg_err *err)
{
    static const char get[] = "SELECT created_at FROM entries WHERE id = ?";
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
    int64_t rev = 0, created = (int64_t)time(NULL);
    int rc;
    bool exists = false;

    if (sel_json == NULL || dns_json == NULL || fed_json == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory encoding an entry");
        goto out;
    }
    rc = tx_begin(s, err);
    if (rc < 0)
        goto out;
    rc = query_int64(s, &created, &exists, err, "looking up an entry", get, "t", e->id);
    if (rc == 0 && update && !exists)
        rc = sg_err_set(err, SG_ENOENT, "entry \"%s\" not found", e->id);
    else if (rc == 0 && !update && exists)
        rc = sg_err_set(err, SG_EEXIST, "entry id \"%s\" already exists", e->id);
    if (rc == 0)
        rc = check_duplicate(s, e, sel_json, err);
    if (rc == 0)
        rc = bump_revision(s, &rev, err);
    if (rc == 0)
        rc = run(s, NULL, err, update ? "updating an entry" : "inserting an entry",
                 update ? upd : ins, "tttttiitiiIIt", e->id, e->spiffe_id, e->parent_id, sel_json,
                 dns_json, e->x509_svid_ttl, e->jwt_svid_ttl, e->hint, e->downstream ? 1 : 0,
                 e->admin ? 1 : 0, rev, created, fed_json);
    if (rc == 0 && update)
        rc = run(s, NULL, err, "replacing selectors", delsel, "t", e->id);
    if (rc == 0 && update)
        rc = run(s, NULL, err, "replacing federated trust domains", delfed, "t", e->id);
    if (rc == 0)
        rc = insert_selectors(s, e, err);
    if (rc == 0)
        rc = insert_federates(s, e, err);
    rc = tx_end(s, rc, err);
    if (rc == 0) {
        e->revision = rev;
        e->created_at = created;
    }
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
    int64_t rev;
    int rc = tx_begin(s, err), ch = 0;

    if (rc < 0)
        return rc;
    rc = run(s, &ch, err, "deleting an entry", q, "t", id);
    if (rc == 0 && ch == 0)
        rc = sg_err_set(err, SG_ENOENT, "entry \"%s\" not found", id);
    if (rc == 0)
        rc = bump_revision(s, &rev, err);
    return tx_end(s, rc, err);
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
    int rc;

    pthread_mutex_lock(&s->mu);
    rc = first_row(s, &st, err, what, q, "t", key);
    if (rc == 1) {
        rc = read_row(st, out, err);
        stmt_done(s, st);
    } else if (rc == 0) {
        rc = sg_err_set(err, SG_ENOENT, "%s \"%.200s\" not found", noun, key);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
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

#define ENTRY_COLS                                                                                 \
    "id, spiffe_id, parent_id, selectors, dns_names, x509_svid_ttl, jwt_svid_ttl, hint, "          \
    "downstream, admin, revision, created_at, federates_with"

/* Reads one row of ENTRY_COLS into out (an sg_entry). */
static int read_entry_row(sqlite3_stmt *st, void *out, sg_err *err)
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
    rc = row_status(rc, e.spiffe_id != NULL && e.parent_id != NULL, "entry", e.id, err);
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
    *(sg_entry *)out = e;
    return 0;
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
    int rc;

    pthread_mutex_lock(&s->mu);
    rc = query_int64(s, out, NULL, err, "reading the revision", q, "");
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ------------------------------------------------------------ join tokens */

static int ds_token_create(void *state, const char *hash, int64_t expires_at, sg_err *err)
{
    static const char q[] = "INSERT INTO join_tokens (hash, expires_at) VALUES (?, ?)";
    sqlite_ds *s = state;
    int rc;

    pthread_mutex_lock(&s->mu);
    rc = run(s, NULL, err, "storing a join token", q, "tI", hash, expires_at);
    pthread_mutex_unlock(&s->mu);
    if (rc == SG_EEXIST)
        sg_err_set(err, SG_EEXIST, "join token already exists");
    return rc;
}

static int ds_token_consume(void *state, const char *hash, int64_t now, sg_err *err)
{
    static const char q[] = "DELETE FROM join_tokens WHERE hash = ? RETURNING expires_at";
    sqlite_ds *s = state;
    sqlite3_stmt *st;
    int64_t expires_at = 0;
    int rc, found;

    /* One DELETE ... RETURNING in one transaction: two concurrent consumers
     * can never both see the row. */
    rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    found = rc = first_row(s, &st, err, "consuming a join token", q, "t", hash);
    if (found == 1) {
        expires_at = sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(s, err, "consuming a join token");
        stmt_done(s, st);
    }
    rc = tx_end(s, rc, err);
    if (rc == 0 && found == 0)
        rc = sg_err_set(err, SG_ENOENT, "join token not found or already used");
    else if (rc == 0 && now > expires_at)
        rc = sg_err_set(err, SG_EEXPIRED, "join token expired");
    return rc;
}

static int ds_token_prune(void *state, int64_t now, sg_err *err)
{
    static const char q[] = "DELETE FROM join_tokens WHERE expires_at < ?";
    sqlite_ds *s = state;
    int rc;

    pthread_mutex_lock(&s->mu);
    rc = run(s, NULL, err, "pruning join tokens", q, "I", now);
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
    char *sel = selectors_json(a->selectors, a->nselectors);
    int rc;

    if (sel == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory encoding an agent");
    pthread_mutex_lock(&s->mu);
    rc = run(s, NULL, err, "storing an agent", q, "ttttIIit", a->spiffe_id,
             a->attestation_type ? a->attestation_type : "", a->serial, a->prev_serial,
             a->expires_at, a->attested_at, a->banned ? 1 : 0, sel);
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

/* Reads one row of AGENT_COLS into out (an sg_agent_rec). */
static int read_agent_row(sqlite3_stmt *st, void *out, sg_err *err)
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
    rc = row_status(rc, a.spiffe_id != NULL, "agent row", NULL, err);
    if (rc < 0) {
        sg_agent_rec_cleanup(&a);
        return rc;
    }
    *(sg_agent_rec *)out = a;
    return 0;
}

static int ds_agent_get(void *state, const char *id, sg_agent_rec *out, sg_err *err)
{
    static const char q[] = "SELECT " AGENT_COLS " FROM agents WHERE spiffe_id = ?";

    return read_one(state, q, id, read_agent_row, out, "agent", "reading an agent", err);
}

static int ds_agent_list(void *state, sg_agent_rec **list, size_t *n, sg_err *err)
{
    static const char q[] = "SELECT " AGENT_COLS " FROM agents ORDER BY spiffe_id";
    void *v;
    size_t cnt;
    int rc =
        list_all(state, q, sizeof(sg_agent_rec), read_agent_row, "listing agents", &v, &cnt, err);

    if (rc < 0) {
        sg_agent_rec_list_free(v, cnt);
        return rc;
    }
    *list = v;
    *n = cnt;
    return 0;
}

/*
 * Runs sql on the agent id (with banned as its second parameter unless
 * negative) and reports SG_ENOENT when no row changed.
 */
static int agent_write(sqlite_ds *s, const char *sql, const char *id, int banned, sg_err *err)
{
    int rc, ch = 0;

    pthread_mutex_lock(&s->mu);
    rc = run(s, &ch, err, "updating an agent", sql, banned >= 0 ? "ti" : "t", id, banned);
    if (rc == 0 && ch == 0)
        rc = sg_err_set(err, SG_ENOENT, "agent \"%.200s\" not found", id);
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
    int rc;
    bool same = false;

    *changed = false;
    rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    rc = first_row(s, &st, err, "reading a federated bundle", get, "t", td);
    if (rc == 1) {
        const unsigned char *old = sqlite3_column_text(st, 0);
        uint64_t oldseq = (uint64_t)sqlite3_column_int64(st, 1);
        rc = 0;
        if (seq < oldseq)
            rc = sg_err_set(err, SG_EINVAL,
                            "bundle of \"%.200s\": sequence %llu is older than the stored %llu", td,
                            (unsigned long long)seq, (unsigned long long)oldseq);
        else if (seq == oldseq && old != NULL && strcmp((const char *)old, jwks) == 0)
            same = true;
        stmt_done(s, st);
    }
    if (rc == 0 && !same)
        rc = run(s, NULL, err, "storing a federated bundle", put, "ttII", td, jwks, (int64_t)seq,
                 now);
    rc = tx_end(s, rc, err);
    if (rc == 0)
        *changed = !same;
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
    rc =
        row_status(rc, b.trust_domain != NULL && b.jwks != NULL, "federated bundle row", NULL, err);
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

static int ds_fed_bundle_list(void *state, sg_fed_bundle_rec **list, size_t *n, sg_err *err)
{
    static const char q[] =
        "SELECT " FED_BUNDLE_COLS " FROM federated_bundles ORDER BY trust_domain";
    void *v;
    size_t cnt;
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

/* An entry that federates with a trust domain being dissociated. */
typedef struct fed_entry {
    char *id;
    char *federates_with; /* the JSON column */
} fed_entry;

static int read_fed_entry_row(sqlite3_stmt *st, void *out, sg_err *err)
{
    fed_entry *f = out;
    int rc = 0;

    f->id = col_strdup(st, 0, &rc);
    f->federates_with = col_strdup(st, 1, &rc);
    if (rc < 0) {
        free(f->id);
        free(f->federates_with);
        return sg_err_set(err, rc, "out of memory");
    }
    return 0;
}

/* Removes "spiffe://td" from every entry that federates with td, each with a new revision. */
static int dissociate_entries(sqlite_ds *s, const char *td, size_t *changed, sg_err *err)
{
    static const char sel[] = "SELECT e.id, e.federates_with FROM entries e JOIN entry_federates f "
                              "ON f.entry_id = e.id WHERE f.trust_domain = ? ORDER BY e.id";
    static const char upd[] = "UPDATE entries SET federates_with = ?, revision = ? WHERE id = ?";
    char want[SG_TRUST_DOMAIN_MAX + 16];
    void *mem = NULL;
    fed_entry *rows;
    size_t n = 0;
    sqlite3_stmt *st = stmt(s, sel, err);
    int rc = SG_EDB;

    if (st != NULL) {
        bind_text(st, 1, td);
        rc = read_rows(s, st, sizeof(fed_entry), read_fed_entry_row, "listing federated entries",
                       &mem, &n, err);
        stmt_done(s, st);
    }
    rows = mem;
    snprintf(want, sizeof want, "spiffe://%s", td);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char **v = NULL, *json;
        size_t nv = 0, w = 0;
        int64_t rev;
        rc = parse_strings_col(rows[i].federates_with, "federates_with", &v, &nv, err);
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
        if (rc == 0)
            rc = run(s, NULL, err, "dissociating an entry", upd, "tIt", json, rev, rows[i].id);
        free(json);
    }
    for (size_t i = 0; i < n; i++) {
        free(rows[i].id);
        free(rows[i].federates_with);
    }
    free(rows);
    if (rc == 0)
        *changed = n;
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
    int64_t used = 0, rev;
    int rc, ch = 0;

    *changed = 0;
    rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    rc = query_int64(s, &used, NULL, err, "counting federated entries", cnt, "t", td);
    if (rc == 0)
        rc = run(s, &ch, err, "deleting a federated bundle", del, "t", td);
    if (rc == 0 && ch == 0) {
        rc = sg_err_set(err, SG_ENOENT, "federated bundle \"spiffe://%.200s\" not found", td);
    } else if (rc == 0 && used > 0 && mode == SG_FED_DELETE_RESTRICT) {
        rc = sg_err_set(err, SG_EPERM,
                        "cannot delete bundle \"spiffe://%.200s\": %lld registration entries "
                        "federate with it (use -mode delete or -mode dissociate)",
                        td, (long long)used);
    } else if (rc == 0 && used > 0 && mode == SG_FED_DELETE_DELETE) {
        rc = run(s, &ch, err, "deleting federated entries", delent, "t", td);
        if (rc == 0)
            rc = bump_revision(s, &rev, err);
        if (rc == 0)
            *changed = (size_t)ch;
    } else if (rc == 0 && used > 0) {
        rc = dissociate_entries(s, td, changed, err);
        if (rc == 0)
            rc = run(s, NULL, err, "dissociating entries", delfed, "t", td);
    }
    rc = tx_end(s, rc, err);
    if (rc < 0)
        *changed = 0;
    return rc;
}

static int ds_fed_rel_put(void *state, const sg_fed_rel *r, bool update, sg_err *err)
{
    static const char ins[] = "INSERT INTO federation_relationships (trust_domain, url, profile, "
                              "endpoint_spiffe_id) VALUES (?, ?, ?, ?)";
    static const char upd[] = "UPDATE federation_relationships SET url = ?2, profile = ?3, "
                              "endpoint_spiffe_id = ?4 WHERE trust_domain = ?1";
    sqlite_ds *s = state;
    int rc, ch = 0;

    pthread_mutex_lock(&s->mu);
    rc = run(s, &ch, err, "storing a federation relationship", update ? upd : ins, "tttt",
             r->trust_domain, r->url, r->profile,
             r->endpoint_spiffe_id && r->endpoint_spiffe_id[0] ? r->endpoint_spiffe_id : NULL);
    pthread_mutex_unlock(&s->mu);
    if (rc == SG_EEXIST)
        sg_err_set(err, SG_EEXIST, "a federation relationship with \"%.200s\" already exists",
                   r->trust_domain);
    else if (rc == 0 && update && ch == 0)
        rc = sg_err_set(err, SG_ENOENT, "federation relationship with \"%.200s\" not found",
                        r->trust_domain);
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
    rc = row_status(rc, r.trust_domain != NULL && r.url != NULL && r.profile != NULL,
                    "federation relationship row", NULL, err);
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
    void *v;
    size_t cnt;
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
    rc = run(s, &ch, err, "deleting a federation relationship", q, "t", td);
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
