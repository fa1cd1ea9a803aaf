/*
 * Unit tests for agent/peer.c: SO_PEERCRED capture, the pid-reuse guard
 * and the fd -> caller table.
 */
#include "agent/peer.h"
#include "test/runner.h"

#include <grp.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

TEST(peer_capture_reads_socketpair_credentials)
{
    int sv[2];
    ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    sg_peer p;
    sg_err err = {0};
    ASSERT_OK(sg_peer_capture(sv[0], &p, &err));
    ASSERT_EQ(p.pid, getpid());
    ASSERT_EQ(p.uid, getuid());
    ASSERT_EQ(p.gid, getgid());
    ASSERT(p.pidfd >= 0);
    uint64_t st = 0;
    ASSERT_OK(sg_peer_proc_starttime(getpid(), &st, &err));
    ASSERT_EQ(p.starttime, st);
    ASSERT_OK(sg_peer_check(&p, &err));
    sg_peer_cleanup(&p);
    ASSERT_EQ(p.pidfd, -1);
}

/* Supplementary groups are the ones the caller had when it connected, like
 * uid and gid: dropping them afterwards changes nothing. */
TEST(peer_capture_groups_are_those_at_connect)
{
    if (geteuid() != 0) {
        printf("  (skipped: setgroups needs root)\n");
        return;
    }
    int sv[2], go[2];
    ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    ASSERT_OK(pipe(go));
    close(sv[0]);
    close(sv[1]);
    const char *dir = sg_test_tmpdir();
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/g.sock", dir);
    unlink(sa.sun_path);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT(l >= 0);
    ASSERT_OK(bind(l, (struct sockaddr *)&sa, sizeof(sa)));
    ASSERT_OK(listen(l, 1));
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        gid_t g[2] = {4242, 4343};
        char b;
        close(go[1]);
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        if (setgroups(2, g) != 0 || connect(c, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            _exit(1);
        if (setgroups(0, NULL) != 0)
            _exit(1);
        (void)write(c, "x", 1);
        (void)read(go[0], &b, 1);
        _exit(0);
    }
    int fd = accept(l, NULL, NULL);
    ASSERT(fd >= 0);
    char b;
    ASSERT_EQ(read(fd, &b, 1), 1); /* the child has dropped its groups by now */
    sg_peer p;
    sg_err err = {0};
    ASSERT_OK(sg_peer_capture(fd, &p, &err));
    ASSERT_EQ(p.ngroups, 2);
    ASSERT_EQ(p.groups[0], 4242);
    ASSERT_EQ(p.groups[1], 4343);
    sg_peer c;
    ASSERT_OK(sg_peer_copy(&p, &c, &err));
    ASSERT_EQ(c.ngroups, 2);
    ASSERT(c.groups != p.groups);
    ASSERT_EQ(c.groups[1], 4343);
    sg_peer_cleanup(&c);
    sg_peer_cleanup(&p);
    ASSERT(p.groups == NULL);
    close(go[1]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(go[0]);
    close(fd);
    close(l);
}

TEST(peer_capture_rejects_non_socket)
{
    int fds[2];
    ASSERT_OK(pipe(fds));
    sg_peer p;
    sg_err err = {0};
    ASSERT_ERR(sg_peer_capture(fds[0], &p, &err));
    ASSERT(err.msg[0] != '\0');
}

TEST(peer_starttime_survives_odd_command_names)
{
    sg_err err = {0};
    uint64_t before = 0, after = 0;
    ASSERT_OK(sg_peer_proc_starttime(getpid(), &before, &err));
    prctl(PR_SET_NAME, "a) b ) (c", 0, 0, 0);
    ASSERT_OK(sg_peer_proc_starttime(getpid(), &after, &err));
    ASSERT_EQ(before, after);
}

TEST(peer_check_detects_exited_process)
{
    const char *dir = sg_test_tmpdir();
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/s.sock", dir);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT(l >= 0);
    ASSERT_OK(bind(l, (struct sockaddr *)&sa, sizeof(sa)));
    ASSERT_OK(listen(l, 4));
    int go[2];
    ASSERT_OK(pipe(go));
    pid_t child = fork();
    ASSERT(child >= 0);
    if (child == 0) {
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            _exit(2);
        char b;
        (void)read(go[0], &b, 1);
        _exit(0);
    }
    int fd = accept(l, NULL, NULL);
    ASSERT(fd >= 0);
    sg_peer p;
    sg_err err = {0};
    ASSERT_OK(sg_peer_capture(fd, &p, &err));
    ASSERT_EQ(p.pid, child);
    ASSERT_OK(sg_peer_check(&p, &err));
    ASSERT_EQ(write(go[1], "x", 1), 1);
    int status;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_EQ(sg_peer_check(&p, &err), SG_EPERM);
    ASSERT(strstr(err.msg, "exited") != NULL || strstr(err.msg, "gone") != NULL);
    sg_peer_cleanup(&p);
}

TEST(peer_check_without_pidfd_compares_start_time)
{
    sg_err err = {0};
    sg_peer p = {.pid = getpid(), .uid = getuid(), .gid = getgid(), .pidfd = -1};
    ASSERT_OK(sg_peer_proc_starttime(getpid(), &p.starttime, &err));
    ASSERT_OK(sg_peer_check(&p, &err));
    p.starttime++;
    ASSERT_EQ(sg_peer_check(&p, &err), SG_EPERM);
    ASSERT(strstr(err.msg, "replaced") != NULL);
}

TEST(peer_check_with_live_pidfd_skips_proc)
{
    int sv[2];
    ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    sg_peer p;
    sg_err err = {0};
    ASSERT_OK(sg_peer_capture(sv[0], &p, &err));
    ASSERT(p.pidfd >= 0);
    /* The live pidfd alone proves the process is the captured one. */
    p.starttime++;
    ASSERT_OK(sg_peer_check(&p, &err));
    sg_peer_cleanup(&p);
    close(sv[0]);
    close(sv[1]);
}

TEST(peer_table_resolves_fd_peer_string)
{
    int sv[2];
    ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    sg_peer_table *t;
    ASSERT_OK(sg_peer_table_new(&t));
    sg_peer p;
    sg_err err = {0};
    ASSERT_OK(sg_peer_capture(sv[0], &p, &err));
    ASSERT_OK(sg_peer_table_put(t, sv[0], &p, &err));
    ASSERT_EQ(p.pidfd, -1); /* taken by the table */
    ASSERT_EQ(sg_peer_table_size(t), 1);
    char name[32];
    snprintf(name, sizeof(name), "fd:%d", sv[0]);
    const sg_peer *rec = NULL;
    ASSERT_OK(sg_peer_table_find(t, name, &rec, &err));
    ASSERT_EQ(rec->pid, getpid());
    ASSERT(rec->pidfd >= 0);
    sg_peer out;
    ASSERT_OK(sg_peer_copy(rec, &out, &err));
    ASSERT(out.pidfd >= 0 && out.pidfd != rec->pidfd);
    sg_peer_cleanup(&out);
    /* A second lookup finds the same record: the copy had its own pidfd. */
    const sg_peer *again = NULL;
    ASSERT_OK(sg_peer_table_find(t, name, &again, &err));
    ASSERT(again == rec);
    ASSERT_OK(sg_peer_check(again, &err));
    sg_peer_table_free(t);
}

TEST(peer_table_rejects_malformed_peer_strings)
{
    sg_peer_table *t;
    ASSERT_OK(sg_peer_table_new(&t));
    static const char *const bad[] = {"unix:", "ipv4:127.0.0.1:4000", "fd:", "fd:12x",
                                      "fd:-1", "fd:99999999999",      "",    "FD:3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const sg_peer *out;
        sg_err err = {0};
        ASSERT_EQ(sg_peer_table_find(t, bad[i], &out, &err), SG_ENOENT);
        ASSERT(err.msg[0] != '\0');
    }
    const sg_peer *out;
    ASSERT_EQ(sg_peer_table_find(t, NULL, &out, NULL), SG_ENOENT);
    ASSERT_EQ(sg_peer_table_find(t, "fd:5", &out, NULL), SG_ENOENT);
    sg_peer_table_free(t);
}

/* fd numbers are reused once a connection closes: a stale record must never match. */
TEST(peer_table_detects_reused_fd_number)
{
    int a[2], b[2];
    ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, a));
    sg_peer_table *t;
    ASSERT_OK(sg_peer_table_new(&t));
    sg_peer p;
    sg_err err = {0};
    ASSERT_OK(sg_peer_capture(a[0], &p, &err));
    ASSERT_OK(sg_peer_table_put(t, a[0], &p, &err));
    int num = a[0];
    ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, b));
    ASSERT_EQ(dup2(b[0], num), num); /* a new connection now sits on the old number */
    char name[32];
    snprintf(name, sizeof(name), "fd:%d", num);
    const sg_peer *out;
    ASSERT_EQ(sg_peer_table_find(t, name, &out, &err), SG_ENOENT);
    ASSERT_EQ(sg_peer_table_size(t), 0);
    sg_peer_table_free(t);
}

TEST(peer_table_put_replaces_and_sweep_drops_closed)
{
    int a[2], b[2];
    ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, a));
    ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, b));
    sg_peer_table *t;
    ASSERT_OK(sg_peer_table_new(&t));
    sg_err err = {0};
    sg_peer p;
    ASSERT_OK(sg_peer_capture(a[0], &p, &err));
    ASSERT_OK(sg_peer_table_put(t, a[0], &p, &err));
    ASSERT_OK(sg_peer_capture(a[0], &p, &err));
    ASSERT_OK(sg_peer_table_put(t, a[0], &p, &err)); /* same fd: replaced */
    ASSERT_EQ(sg_peer_table_size(t), 1);
    ASSERT_OK(sg_peer_capture(b[0], &p, &err));
    ASSERT_OK(sg_peer_table_put(t, b[0], &p, &err));
    ASSERT_EQ(sg_peer_table_size(t), 2);
    close(a[0]);
    ASSERT_EQ(sg_peer_table_sweep(t), 1);
    ASSERT_EQ(sg_peer_table_size(t), 1);
    ASSERT_EQ(sg_peer_table_put(t, -1, &p, &err), SG_EINVAL);
    sg_peer_table_free(t);
}
