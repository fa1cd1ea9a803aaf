/*
 * Workload attestor "unix": turns a Workload API caller's SO_PEERCRED
 * credentials and /proc into selectors: uid, user, gid, group,
 * supplementary_gid/_group and, with discover_workload_path, the binary's
 * path and SHA-256 (hashes cached by file identity, so one is not
 * recomputed on every call).
 */
#include "attestors/attestor.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define UNIX_TYPE          "unix"
#define UNIX_HASH_CACHE    256         /* binaries whose hash is remembered */
#define UNIX_STATUS_MAX    (64 * 1024) /* bytes of /proc/<pid>/status read */
#define UNIX_MAX_GROUPS    1024        /* supplementary groups accepted from /proc */
#define UNIX_NAME_BUF_INIT 1024
#define UNIX_NAME_CACHE    256 /* uid/gid -> name results remembered */
#define UNIX_NAME_TTL_S    30  /* how long a looked-up name is trusted */

typedef struct hash_entry {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    char hex[65];
    bool used;
} hash_entry;

typedef struct name_entry {
    bool used;
    bool is_user;
    unsigned long id;
    bool found; /* false: the id has no name (remembered too) */
    char name[256];
    int64_t expires; /* monotonic seconds */
} name_entry;

typedef struct unix_state {
    bool discover_workload_path;
    int64_t size_limit; /* > 0: limit; 0: none; < 0: never hash */
    pthread_mutex_t lock;
    hash_entry cache[UNIX_HASH_CACHE];
    size_t next_slot;                  /* round-robin eviction */
    name_entry names[UNIX_NAME_CACHE]; /* NSS lookups may block (LDAP, sssd): cache them */
    size_t next_name;
    uint64_t hash_count; /* binaries hashed so far (tests read it) */
} unix_state;

static int unix_configure(const sg_agent_config *cfg, void **state, sg_err *err)
{
    unix_state *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return sg_err_set(err, SG_ENOMEM, "unix: out of memory");
    if (cfg != NULL) {
        st->discover_workload_path = cfg->discover_workload_path;
        st->size_limit = cfg->workload_size_limit;
    }
    if (pthread_mutex_init(&st->lock, NULL) != 0) {
        free(st);
        return sg_err_set(err, SG_ESYS, "unix: cannot create the hash cache lock");
    }
    *state = st;
    return 0;
}

static void unix_destroy(void *state)
{
    unix_state *st = state;
    if (st == NULL)
        return;
    pthread_mutex_destroy(&st->lock);
    free(st);
}

static int add_selector(sg_selector_set *out, const char *value, sg_err *err)
{
    int rc = sg_selector_set_add(out, UNIX_TYPE, value);
    if (rc < 0)
        return sg_err_set(err, rc, "unix: cannot add selector \"%.200s\"", value);
    return 0;
}

static int add_id_selector(sg_selector_set *out, const char *kind, unsigned long id, sg_err *err)
{
    char v[64];
    snprintf(v, sizeof(v), "%s:%lu", kind, id);
    return add_selector(out, v, err);
}

/* Name of uid (user) or gid (group) into name; 1 found, 0 unknown, < 0 error. */
static int lookup_name(bool is_user, unsigned long id, char *name, size_t namelen)
{
    size_t buflen = UNIX_NAME_BUF_INIT;
    for (;;) {
        char *buf = malloc(buflen);
        if (buf == NULL)
            return SG_ENOMEM;
        int rc;
        const char *found = NULL;
        if (is_user) {
            struct passwd pw, *res = NULL;
            rc = getpwuid_r((uid_t)id, &pw, buf, buflen, &res);
            if (rc == 0 && res != NULL)
                found = res->pw_name;
        } else {
            struct group gr, *res = NULL;
            rc = getgrgid_r((gid_t)id, &gr, buf, buflen, &res);
            if (rc == 0 && res != NULL)
                found = res->gr_name;
        }
        if (rc == ERANGE && buflen < 1024 * 1024) {
            free(buf);
            buflen *= 4;
            continue;
        }
        int ret = 0;
        if (found != NULL && found[0] != '\0' && strlen(found) < namelen) {
            memcpy(name, found, strlen(found) + 1);
            ret = 1;
        }
        free(buf);
        /* Unknown ids (and lookup errors such as an unreachable NSS source) are
         * skipped rather than failing the caller's attestation. */
        return ret;
    }
}

static int64_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

/* Cached name of an id: 1 found, 0 unknown, SG_EUNAVAIL not cached (or expired). */
static int name_cached(unix_state *st, bool is_user, unsigned long id, char *name, size_t len)
{
    int rc = SG_EUNAVAIL;
    int64_t now = mono_s();

    pthread_mutex_lock(&st->lock);
    for (size_t i = 0; i < UNIX_NAME_CACHE; i++) {
        const name_entry *e = &st->names[i];
        if (e->used && e->is_user == is_user && e->id == id && e->expires > now) {
            rc = e->found ? 1 : 0;
            if (e->found)
                snprintf(name, len, "%s", e->name);
            break;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

static void name_store(unix_state *st, bool is_user, unsigned long id, int found, const char *name)
{
    pthread_mutex_lock(&st->lock);
    name_entry *e = &st->names[st->next_name];
    st->next_name = (st->next_name + 1) % UNIX_NAME_CACHE;
    e->used = true;
    e->is_user = is_user;
    e->id = id;
    e->found = found == 1;
    snprintf(e->name, sizeof e->name, "%s", found == 1 ? name : "");
    e->expires = mono_s() + UNIX_NAME_TTL_S;
    pthread_mutex_unlock(&st->lock);
}

static int add_named(unix_state *st, bool cached_only, sg_selector_set *out, bool is_user,
                     const char *kind, unsigned long id, sg_err *err)
{
    char name[256];
    int found = name_cached(st, is_user, id, name, sizeof(name));
    if (found == SG_EUNAVAIL) {
        if (cached_only)
            return SG_EUNAVAIL;
        found = lookup_name(is_user, id, name, sizeof(name));
        if (found >= 0)
            name_store(st, is_user, id, found, name);
    }
    if (found < 0)
        return sg_err_set(err, found, "unix: out of memory looking up %s %lu", kind, id);
    if (found == 0)
        return 0;
    char v[300];
    snprintf(v, sizeof(v), "%s:%s", kind, name);
    return add_selector(out, v, err);
}

/* Reads /proc/<pid>/<file> into a malloc'd NUL-terminated buffer. */
static int read_proc_file(pid_t pid, const char *file, char **out, sg_err *err)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld/%s", (long)pid, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return sg_err_set(err, SG_ENOENT, "unix: process %ld not found", (long)pid);
        return sg_err_sys(err, "unix: cannot open %s", path);
    }
    char *buf = malloc(UNIX_STATUS_MAX + 1);
    if (buf == NULL) {
        close(fd);
        return sg_err_set(err, SG_ENOMEM, "unix: out of memory");
    }
    size_t len = 0;
    while (len < UNIX_STATUS_MAX) {
        ssize_t n = read(fd, buf + len, UNIX_STATUS_MAX - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            close(fd);
            errno = e;
            /* ESRCH: the process exited while we were reading. */
            if (e == ESRCH)
                return sg_err_set(err, SG_ENOENT, "unix: process %ld not found", (long)pid);
            return sg_err_sys(err, "unix: cannot read %s", path);
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    *out = buf;
    return 0;
}

/* Parses the "Groups:" line of a /proc status text into gids (at most max). */
static int parse_groups(const char *status, unsigned long *gids, size_t max, size_t *n, sg_err *err)
{
    *n = 0;
    const char *line = status;
    while (line != NULL && *line != '\0') {
        if (strncmp(line, "Groups:", 7) == 0)
            break;
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    if (line == NULL || *line == '\0')
        return 0; /* no Groups line: no supplementary groups */
    const char *p = line + 7;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\n' || *p == '\0')
            break;
        if (*p < '0' || *p > '9')
            return sg_err_set(err, SG_EPROTO, "unix: unexpected character in Groups line");
        unsigned long v = 0;
        while (*p >= '0' && *p <= '9') {
            unsigned long d = (unsigned long)(*p - '0');
            if (v > (ULONG_MAX - d) / 10 || v * 10 + d > UINT32_MAX)
                return sg_err_set(err, SG_EPROTO, "unix: group id out of range in Groups line");
            v = v * 10 + d;
            p++;
        }
        if (*n >= max)
            return sg_err_set(err, SG_ETOOBIG, "unix: more than %zu supplementary groups", max);
        gids[(*n)++] = v;
    }
    return 0;
}

static int add_group(unix_state *st, bool cached_only, sg_selector_set *out, unsigned long gid,
                     sg_err *err)
{
    int rc = add_id_selector(out, "supplementary_gid", gid, err);
    if (rc == 0)
        rc = add_named(st, cached_only, out, false, "supplementary_group", gid, err);
    return rc;
}

/* The /proc/<pid>/status fallback, for kernels without SO_PEERGROUPS. */
static int add_proc_groups(unix_state *st, bool cached_only, sg_selector_set *out, pid_t pid,
                           sg_err *err)
{
    char *status = NULL;
    int rc = read_proc_file(pid, "status", &status, err);
    if (rc < 0)
        return rc;
    unsigned long *gids = malloc(UNIX_MAX_GROUPS * sizeof(*gids));
    size_t n = 0;
    if (gids == NULL)
        rc = sg_err_set(err, SG_ENOMEM, "unix: out of memory");
    else
        rc = parse_groups(status, gids, UNIX_MAX_GROUPS, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = add_group(st, cached_only, out, gids[i], err);
    free(gids);
    free(status);
    return rc;
}

/*
 * Supplementary groups: those the kernel recorded at connect along with
 * uid and gid, or, where it could not report them, /proc/<pid>/status.
 */
static int add_supplementary(unix_state *st, bool cached_only, sg_selector_set *out,
                             const sg_workload_peer *peer, sg_err *err)
{
    if (!peer->has_groups)
        return add_proc_groups(st, cached_only, out, peer->pid, err);
    if (peer->ngroups > UNIX_MAX_GROUPS)
        return sg_err_set(err, SG_ETOOBIG, "unix: more than %d supplementary groups",
                          UNIX_MAX_GROUPS);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < peer->ngroups; i++)
        rc = add_group(st, cached_only, out, peer->groups[i], err);
    return rc;
}

static bool cache_lookup(unix_state *st, const struct stat *sb, char hex[65])
{
    bool hit = false;
    pthread_mutex_lock(&st->lock);
    for (size_t i = 0; i < UNIX_HASH_CACHE; i++) {
        const hash_entry *e = &st->cache[i];
        if (e->used && e->dev == sb->st_dev && e->ino == sb->st_ino && e->size == sb->st_size &&
            e->mtime.tv_sec == sb->st_mtim.tv_sec && e->mtime.tv_nsec == sb->st_mtim.tv_nsec) {
            memcpy(hex, e->hex, 65);
            hit = true;
            break;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return hit;
}

static void cache_store(unix_state *st, const struct stat *sb, const char hex[65])
{
    pthread_mutex_lock(&st->lock);
    hash_entry *e = &st->cache[st->next_slot];
    st->next_slot = (st->next_slot + 1) % UNIX_HASH_CACHE;
    e->dev = sb->st_dev;
    e->ino = sb->st_ino;
    e->size = sb->st_size;
    e->mtime = sb->st_mtim;
    memcpy(e->hex, hex, 65);
    e->used = true;
    st->hash_count++;
    pthread_mutex_unlock(&st->lock);
}

static int hash_fd(int fd, char hex[65], sg_err *err)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return sg_err_ssl(err, "unix: cannot start SHA-256");
    }
    uint8_t *buf = malloc(64 * 1024);
    if (buf == NULL) {
        EVP_MD_CTX_free(md);
        return sg_err_set(err, SG_ENOMEM, "unix: out of memory");
    }
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, buf, 64 * 1024);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = sg_err_sys(err, "unix: cannot read the workload binary");
            break;
        }
        if (n == 0)
            break;
        if (EVP_DigestUpdate(md, buf, (size_t)n) != 1) {
            rc = sg_err_ssl(err, "unix: SHA-256 failed");
            break;
        }
    }
    unsigned char dig[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    if (rc == 0 && EVP_DigestFinal_ex(md, dig, &dlen) != 1)
        rc = sg_err_ssl(err, "unix: SHA-256 failed");
    if (rc == 0) {
        static const char digits[] = "0123456789abcdef";
        for (unsigned int i = 0; i < dlen && i < 32; i++) {
            hex[2 * i] = digits[dig[i] >> 4];
            hex[2 * i + 1] = digits[dig[i] & 0xf];
        }
        hex[64] = '\0';
    }
    free(buf);
    EVP_MD_CTX_free(md);
    return rc;
}

static int add_path_and_hash(unix_state *st, bool cached_only, sg_selector_set *out, pid_t pid,
                             sg_err *err)
{
    char link[64];
    snprintf(link, sizeof(link), "/proc/%ld/exe", (long)pid);
    char path[PATH_MAX + 1];
    ssize_t n = readlink(link, path, PATH_MAX);
    if (n < 0) {
        if (errno == ENOENT)
            return sg_err_set(err, SG_ENOENT, "unix: process %ld not found", (long)pid);
        return sg_err_sys(err, "unix: cannot read the path of process %ld", (long)pid);
    }
    path[n] = '\0';
    char v[PATH_MAX + 16];
    snprintf(v, sizeof(v), "path:%s", path);
    int rc = add_selector(out, v, err);
    if (rc < 0 || st->size_limit < 0)
        return rc;

    /* Open through /proc so the hash is of the very file the process runs,
     * even if the path has since been replaced. */
    int fd = open(link, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sg_err_sys(err, "unix: cannot open the binary of process %ld", (long)pid);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        rc = sg_err_sys(err, "unix: cannot stat the binary of process %ld", (long)pid);
        close(fd);
        return rc;
    }
    if (st->size_limit > 0 && (int64_t)sb.st_size > st->size_limit) {
        close(fd);
        return 0; /* too large to hash: no sha256 selector */
    }
    char hex[65];
    if (!cache_lookup(st, &sb, hex)) {
        if (cached_only) {
            close(fd);
            return SG_EUNAVAIL;
        }
        rc = hash_fd(fd, hex, err);
        if (rc == 0)
            cache_store(st, &sb, hex);
    }
    close(fd);
    if (rc < 0)
        return rc;
    snprintf(v, sizeof(v), "sha256:%s", hex);
    return add_selector(out, v, err);
}

static int attest_impl(unix_state *st, bool cached_only, const sg_workload_peer *peer,
                       sg_selector_set *out, sg_err *err)
{
    if (st == NULL || peer == NULL || out == NULL)
        return sg_err_set(err, SG_EINVAL, "unix: attest called without state or peer");
    if (peer->pid <= 0)
        return sg_err_set(err, SG_EINVAL, "unix: invalid pid %ld", (long)peer->pid);

    /* uid and gid come from SO_PEERCRED, never from /proc, so a process
     * cannot change what the kernel reported for the connection. The
     * selectors are collected apart so a failure leaves out unchanged. */
    sg_selector_set tmp = {0};
    int rc = add_id_selector(&tmp, "uid", (unsigned long)peer->uid, err);
    if (rc == 0)
        rc = add_named(st, cached_only, &tmp, true, "user", (unsigned long)peer->uid, err);
    if (rc == 0)
        rc = add_id_selector(&tmp, "gid", (unsigned long)peer->gid, err);
    if (rc == 0)
        rc = add_named(st, cached_only, &tmp, false, "group", (unsigned long)peer->gid, err);
    if (rc == 0)
        rc = add_supplementary(st, cached_only, &tmp, peer, err);
    if (rc == 0 && st->discover_workload_path)
        rc = add_path_and_hash(st, cached_only, &tmp, peer->pid, err);
    for (size_t i = 0; rc == 0 && i < tmp.n; i++) {
        rc = sg_selector_set_add(out, tmp.items[i].type, tmp.items[i].value);
        if (rc < 0)
            sg_err_set(err, rc, "unix: cannot add selector \"%.200s\"", tmp.items[i].value);
    }
    sg_selector_set_cleanup(&tmp);
    return rc;
}

static int unix_attest(void *state, const sg_workload_peer *peer, sg_selector_set *out, sg_err *err)
{
    return attest_impl(state, false, peer, out, err);
}

/* Reads only /proc (fast, never blocking on I/O) and the caches. */
static int unix_attest_cached(void *state, const sg_workload_peer *peer, sg_selector_set *out,
                              sg_err *err)
{
    return attest_impl(state, true, peer, out, err);
}

const sg_workload_attestor sg_unix_workload_attestor = {
    .name = "unix",
    .configure = unix_configure,
    .attest = unix_attest,
    .destroy = unix_destroy,
    .attest_cached = unix_attest_cached,
};
