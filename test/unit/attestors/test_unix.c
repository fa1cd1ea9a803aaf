/*
 * Unit tests for the unix workload attestor, against the current process
 * and forked children.
 */
#include "attestors/attestor.h"
#include "test/runner.h"

#include <grp.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

/* The cache test reads the attestor's private state, so this file also
 * compiles its own copy under another name. */
#define sg_unix_workload_attestor sg_test_unix_attestor_copy
#include "attestors/workload/unix.c"
#undef sg_unix_workload_attestor

static void *configure(bool discover, int64_t limit)
{
    sg_agent_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.unix_attestor_enabled = true;
    cfg.discover_workload_path = discover;
    cfg.workload_size_limit = limit;
    void *st = NULL;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_unix_workload_attestor.configure(&cfg, &st, &err));
    ASSERT(st != NULL);
    return st;
}

static void file_sha256(const char *path, char hex[65])
{
    FILE *f = fopen(path, "rb");
    ASSERT(f != NULL);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ASSERT(EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1);
    unsigned char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        ASSERT(EVP_DigestUpdate(md, buf, n) == 1);
    fclose(f);
    unsigned char dig[32];
    unsigned int dlen = 0;
    ASSERT(EVP_DigestFinal_ex(md, dig, &dlen) == 1);
    EVP_MD_CTX_free(md);
    for (unsigned int i = 0; i < dlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", dig[i]);
}

static bool has(const sg_selector_set *set, const char *value)
{
    return sg_selector_set_contains(set, "unix", value);
}

static size_t count_prefix(const sg_selector_set *set, const char *prefix)
{
    size_t c = 0;
    for (size_t i = 0; i < set->n; i++)
        if (strcmp(set->items[i].type, "unix") == 0 &&
            strncmp(set->items[i].value, prefix, strlen(prefix)) == 0)
            c++;
    return c;
}

/* Forks a child that optionally switches to the given groups and then
 * waits until its stdin pipe closes. Returns its pid once it is ready. */
static pid_t spawn_child(const gid_t *groups, size_t ngroups, int *release_fd)
{
    int ready[2], hold[2];
    ASSERT_OK(pipe(ready));
    ASSERT_OK(pipe(hold));
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        close(hold[1]);
        if (ngroups > 0 && setgroups(ngroups, groups) != 0)
            _exit(2);
        char c = 'r';
        if (write(ready[1], &c, 1) != 1)
            _exit(3);
        close(ready[1]);
        while (read(hold[0], &c, 1) > 0)
            ;
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    char c;
    ASSERT_EQ(read(ready[0], &c, 1), 1);
    close(ready[0]);
    *release_fd = hold[1];
    return pid;
}

static void reap(pid_t pid, int release_fd)
{
    close(release_fd);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
}

TEST(unix_selectors_for_current_process)
{
    void *st = configure(false, 0);
    sg_workload_peer peer = {.pid = getpid(), .uid = getuid(), .gid = getgid()};
    sg_selector_set set = {0};
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));

    char v[300];
    snprintf(v, sizeof(v), "uid:%lu", (unsigned long)getuid());
    ASSERT(has(&set, v));
    snprintf(v, sizeof(v), "gid:%lu", (unsigned long)getgid());
    ASSERT(has(&set, v));
    struct passwd *pw = getpwuid(getuid());
    if (pw != NULL) {
        snprintf(v, sizeof(v), "user:%s", pw->pw_name);
        ASSERT(has(&set, v));
    }
    struct group *gr = getgrgid(getgid());
    if (gr != NULL) {
        snprintf(v, sizeof(v), "group:%s", gr->gr_name);
        ASSERT(has(&set, v));
    }
    /* Without discover_workload_path there is no path or hash. */
    ASSERT_EQ(count_prefix(&set, "path:"), 0);
    ASSERT_EQ(count_prefix(&set, "sha256:"), 0);

    gid_t groups[256];
    int ng = getgroups(256, groups);
    ASSERT(ng >= 0);
    for (int i = 0; i < ng; i++) {
        snprintf(v, sizeof(v), "supplementary_gid:%lu", (unsigned long)groups[i]);
        ASSERT(has(&set, v));
    }
    sg_selector_set_cleanup(&set);
    sg_unix_workload_attestor.destroy(st);
}

TEST(unix_supplementary_groups_come_from_the_connection)
{
    void *st = configure(false, 0);
    /* Groups the kernel reported for the connection win over /proc. */
    const gid_t groups[2] = {3999991, 3999992};
    sg_workload_peer peer = {.pid = getpid(),
                             .uid = getuid(),
                             .gid = getgid(),
                             .has_groups = true,
                             .groups = groups,
                             .ngroups = 2};
    sg_selector_set set = {0};
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));
    ASSERT(has(&set, "supplementary_gid:3999991"));
    ASSERT(has(&set, "supplementary_gid:3999992"));
    ASSERT_EQ(count_prefix(&set, "supplementary_gid:"), 2);
    sg_selector_set_cleanup(&set);

    /* An empty list is no supplementary groups, not "ask /proc". */
    peer.ngroups = 0;
    ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));
    ASSERT_EQ(count_prefix(&set, "supplementary_gid:"), 0);
    sg_selector_set_cleanup(&set);
    sg_unix_workload_attestor.destroy(st);
}

TEST(unix_ids_come_from_peer_credentials_not_proc)
{
    void *st = configure(false, 0);
    /* The peer says uid 4321 / gid 8765 although this process runs as
     * someone else: SO_PEERCRED is authoritative. */
    sg_workload_peer peer = {.pid = getpid(), .uid = 4321, .gid = 8765};
    sg_selector_set set = {0};
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));
    ASSERT(has(&set, "uid:4321"));
    ASSERT(has(&set, "gid:8765"));
    if (getuid() != 4321) {
        char v[64];
        snprintf(v, sizeof(v), "uid:%lu", (unsigned long)getuid());
        ASSERT(!has(&set, v));
    }
    sg_selector_set_cleanup(&set);
    sg_unix_workload_attestor.destroy(st);
}

TEST(unix_unknown_user_and_group_are_skipped)
{
    void *st = configure(false, 0);
    sg_workload_peer peer = {.pid = getpid(), .uid = 3999999, .gid = 3999998};
    sg_selector_set set = {0};
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));
    ASSERT(has(&set, "uid:3999999"));
    ASSERT(has(&set, "gid:3999998"));
    ASSERT_EQ(count_prefix(&set, "user:"), 0);
    ASSERT_EQ(count_prefix(&set, "group:"), 0);
    sg_selector_set_cleanup(&set);
    sg_unix_workload_attestor.destroy(st);
}

TEST(unix_path_and_sha256_of_binary)
{
    void *st = configure(true, 0);
    sg_workload_peer peer = {.pid = getpid(), .uid = getuid(), .gid = getgid()};
    sg_selector_set set = {0};
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));

    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    ASSERT(n > 0);
    exe[n] = '\0';
    char v[PATH_MAX + 16];
    snprintf(v, sizeof(v), "path:%s", exe);
    ASSERT(has(&set, v));
    char hex[65];
    file_sha256(exe, hex);
    snprintf(v, sizeof(v), "sha256:%s", hex);
    ASSERT(has(&set, v));
    sg_selector_set_cleanup(&set);
    sg_unix_workload_attestor.destroy(st);
}

TEST(unix_sha256_respects_size_limit)
{
    sg_workload_peer peer = {.pid = getpid(), .uid = getuid(), .gid = getgid()};
    sg_err err;
    sg_err_clear(&err);

    /* A limit smaller than the binary: path only. */
    void *st = configure(true, 16);
    sg_selector_set set = {0};
    ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));
    ASSERT_EQ(count_prefix(&set, "path:"), 1);
    ASSERT_EQ(count_prefix(&set, "sha256:"), 0);
    sg_selector_set_cleanup(&set);
    sg_unix_workload_attestor.destroy(st);

    /* A negative limit: never hash. */
    st = configure(true, -1);
    ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));
    ASSERT_EQ(count_prefix(&set, "path:"), 1);
    ASSERT_EQ(count_prefix(&set, "sha256:"), 0);
    sg_selector_set_cleanup(&set);
    sg_unix_workload_attestor.destroy(st);

    /* A generous limit: hashed. */
    st = configure(true, INT64_C(1) << 40);
    ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));
    ASSERT_EQ(count_prefix(&set, "sha256:"), 1);
    sg_selector_set_cleanup(&set);
    sg_unix_workload_attestor.destroy(st);
}

TEST(unix_sha256_is_cached_by_file_identity)
{
    void *st = NULL;
    sg_agent_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.discover_workload_path = true;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(sg_test_unix_attestor_copy.configure(&cfg, &st, &err));
    unix_state *us = st;

    int release = -1;
    pid_t child = spawn_child(NULL, 0, &release);
    for (int i = 0; i < 5; i++) {
        sg_workload_peer peer = {.pid = (i % 2) ? child : getpid(), .uid = 0, .gid = 0};
        sg_selector_set set = {0};
        ASSERT_OK(sg_test_unix_attestor_copy.attest(st, &peer, &set, &err));
        ASSERT_EQ(count_prefix(&set, "sha256:"), 1);
        sg_selector_set_cleanup(&set);
    }
    /* Parent and forked child run the same binary: hashed exactly once. */
    ASSERT_EQ(us->hash_count, 1);
    reap(child, release);
    sg_test_unix_attestor_copy.destroy(st);
}

TEST(unix_supplementary_groups_of_forked_child)
{
    void *st = configure(false, 0);
    sg_err err;
    sg_err_clear(&err);
    if (getuid() == 0) {
        gid_t groups[] = {0, 54321, 54322};
        int release = -1;
        pid_t child = spawn_child(groups, 3, &release);
        sg_workload_peer peer = {.pid = child, .uid = 1234, .gid = 54321};
        sg_selector_set set = {0};
        ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));
        ASSERT(has(&set, "uid:1234"));
        ASSERT(has(&set, "gid:54321"));
        ASSERT(has(&set, "supplementary_gid:0"));
        ASSERT(has(&set, "supplementary_gid:54321"));
        ASSERT(has(&set, "supplementary_gid:54322"));
        struct group *gr = getgrgid(0);
        if (gr != NULL) {
            char v[300];
            snprintf(v, sizeof(v), "supplementary_group:%s", gr->gr_name);
            ASSERT(has(&set, v));
        }
        ASSERT_EQ(count_prefix(&set, "supplementary_gid:"), 3);
        sg_selector_set_cleanup(&set);
        reap(child, release);
    } else {
        int release = -1;
        pid_t child = spawn_child(NULL, 0, &release);
        sg_workload_peer peer = {.pid = child, .uid = getuid(), .gid = getgid()};
        sg_selector_set set = {0};
        ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &set, &err));
        int ng = getgroups(0, NULL);
        ASSERT_EQ(count_prefix(&set, "supplementary_gid:"), (size_t)ng);
        sg_selector_set_cleanup(&set);
        reap(child, release);
    }
    sg_unix_workload_attestor.destroy(st);
}

TEST(unix_gone_process_is_a_clear_error)
{
    void *st = configure(true, 0);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0)
        _exit(0);
    int status;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    sg_workload_peer peer = {.pid = pid, .uid = 1, .gid = 1};
    sg_selector_set set = {0};
    sg_err err;
    sg_err_clear(&err);
    ASSERT_EQ(sg_unix_workload_attestor.attest(st, &peer, &set, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "not found") != NULL);
    /* A failed attestation leaves the output untouched. */
    ASSERT_EQ(set.n, 0);
    sg_selector_set_cleanup(&set);

    peer.pid = 0;
    ASSERT_EQ(sg_unix_workload_attestor.attest(st, &peer, &set, &err), SG_EINVAL);
    sg_unix_workload_attestor.destroy(st);
}

TEST(unix_parse_groups_rejects_garbage)
{
    unsigned long gids[4];
    size_t n = 0;
    sg_err err;
    sg_err_clear(&err);
    ASSERT_OK(parse_groups("Name:\tx\nGroups:\t1 2 3 \nX:1\n", gids, 4, &n, &err));
    ASSERT_EQ(n, 3);
    ASSERT_EQ(gids[2], 3);
    ASSERT_OK(parse_groups("Name:\tx\nGroups:\n", gids, 4, &n, &err));
    ASSERT_EQ(n, 0);
    ASSERT_OK(parse_groups("Name:\tx\n", gids, 4, &n, &err));
    ASSERT_EQ(n, 0);
    ASSERT_EQ(parse_groups("Groups:\t1 x\n", gids, 4, &n, &err), SG_EPROTO);
    ASSERT_EQ(parse_groups("Groups:\t99999999999\n", gids, 4, &n, &err), SG_EPROTO);
    ASSERT_EQ(parse_groups("Groups:\t1 2 3 4 5\n", gids, 4, &n, &err), SG_ETOOBIG);
}

TEST(unix_cached_path_needs_a_full_attestation_first)
{
    void *st = configure(true, 0);
    sg_workload_peer peer = {.pid = getpid(), .uid = getuid(), .gid = getgid()};
    sg_selector_set full = {0}, fast = {0};
    sg_err err;
    sg_err_clear(&err);

    /* Nothing cached yet: the loop-thread path must decline, adding nothing. */
    ASSERT_EQ(sg_unix_workload_attestor.attest_cached(st, &peer, &fast, &err), SG_EUNAVAIL);
    ASSERT_EQ(fast.n, 0);
    /* After a full attestation (names looked up, binary hashed) it answers the same. */
    ASSERT_OK(sg_unix_workload_attestor.attest(st, &peer, &full, &err));
    ASSERT_OK(sg_unix_workload_attestor.attest_cached(st, &peer, &fast, &err));
    ASSERT_EQ(fast.n, full.n);
    for (size_t i = 0; i < full.n; i++)
        ASSERT(sg_selector_set_contains(&fast, full.items[i].type, full.items[i].value));
    sg_selector_set_cleanup(&full);
    sg_selector_set_cleanup(&fast);
    sg_unix_workload_attestor.destroy(st);
}
