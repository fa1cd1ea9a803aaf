/*
 * Caller credentials for the Workload API socket: SO_PEERCRED at accept,
 * the process pinned by pidfd and start time, and the fd -> caller table
 * that "fd:N" peers of gRPC calls are resolved against.
 */
#include "agent/peer.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

#define PEER_TABLE_MAX_FD (1 << 22)
#define PEER_GROUPS_FIRST 64 /* groups asked for before the kernel says how many */

typedef struct peer_slot {
    bool used;
    sg_peer peer;
} peer_slot;

struct sg_peer_table {
    peer_slot *slots; /* indexed by fd */
    size_t cap;
    size_t n;
};

static int pidfd_open_compat(pid_t pid)
{
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

int sg_peer_proc_starttime(pid_t pid, uint64_t *out, sg_err *err)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sg_err_sys(err, "cannot open %s", path);
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    int saved = errno;
    close(fd);
    if (n <= 0) {
        errno = saved;
        return sg_err_sys(err, "cannot read %s", path);
    }
    buf[n] = '\0';
    /* The command name may hold spaces and ')'; fields resume after the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return sg_err_set(err, SG_EPROTO, "%s: no command name", path);
    p++;
    /* After ')' come fields 3 (state) onwards; starttime is field 22. */
    for (int field = 3; field < 22; field++) {
        while (*p == ' ')
            p++;
        while (*p != ' ' && *p != '\0')
            p++;
        if (*p == '\0')
            return sg_err_set(err, SG_EPROTO, "%s: too few fields", path);
    }
    while (*p == ' ')
        p++;
    if (*p < '0' || *p > '9')
        return sg_err_set(err, SG_EPROTO, "%s: bad start time field", path);
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(p, &end, 10);
    if (errno != 0 || (end != NULL && *end != ' ' && *end != '\0' && *end != '\n'))
        return sg_err_set(err, SG_EPROTO, "%s: bad start time field", path);
    *out = (uint64_t)v;
    return 0;
}

static int socket_identity(int fd, ino_t *ino, uint64_t *cookie)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
        return -1;
    *ino = st.st_ino;
    uint64_t c = 0;
    socklen_t len = sizeof(c);
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &len) != 0)
        c = 0;
    *cookie = c;
    return 0;
}

/*
 * The peer's supplementary groups as the kernel recorded them at connect.
 * 0 with *n = -1 when the kernel has no SO_PEERGROUPS (before 4.13).
 */
static int peer_groups(int fd, gid_t **out, int *n, sg_err *err)
{
    socklen_t len = PEER_GROUPS_FIRST * sizeof(gid_t);
    gid_t *g = NULL;
    *out = NULL;
    *n = -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        gid_t *ng = realloc(g, len > 0 ? len : sizeof(gid_t));
        if (ng == NULL) {
            free(g);
            return sg_err_set(err, SG_ENOMEM, "out of memory reading the groups of fd %d", fd);
        }
        g = ng;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len) == 0) {
            *out = g;
            *n = (int)(len / sizeof(gid_t));
            return 0;
        }
        if (errno != ERANGE)
            break;
        /* len now holds the size the kernel needs. */
    }
    int e = errno;
    free(g);
    if (e == ENOPROTOOPT)
        return 0;
    errno = e;
    return sg_err_sys(err, "SO_PEERGROUPS on fd %d", fd);
}

int sg_peer_capture(int fd, sg_peer *out, sg_err *err)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return sg_err_sys(err, "SO_PEERCRED on fd %d", fd);
    if (cred.pid <= 0)
        return sg_err_set(err, SG_EPERM, "peer on fd %d has no process id", fd);

    sg_peer p = {.pid = cred.pid, .uid = cred.uid, .gid = cred.gid, .pidfd = -1};
    if (socket_identity(fd, &p.ino, &p.cookie) != 0)
        return sg_err_sys(err, "fd %d is not a socket", fd);
    int rc = peer_groups(fd, &p.groups, &p.ngroups, err);
    if (rc != 0)
        return rc;

    /* SO_PEERPIDFD pins the process that connected, with no race at all. */
    int pidfd = -1;
    len = sizeof(pidfd);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0 || pidfd < 0) {
        pidfd = pidfd_open_compat(cred.pid);
        if (pidfd < 0) {
            if (errno == ESRCH)
                rc = sg_err_set(err, SG_EPERM, "peer pid %d has exited", (int)cred.pid);
            else if (errno != ENOSYS)
                rc = sg_err_sys(err, "pidfd_open(%d)", (int)cred.pid);
            if (rc != 0) {
                sg_peer_cleanup(&p);
                return rc;
            }
        }
    }
    if (pidfd >= 0)
        (void)fcntl(pidfd, F_SETFD, FD_CLOEXEC);
    p.pidfd = pidfd;
    rc = sg_peer_proc_starttime(cred.pid, &p.starttime, err);
    if (rc == 0)
        rc = sg_peer_check(&p, err);
    if (rc != 0) {
        sg_peer_cleanup(&p);
        return rc;
    }
    *out = p;
    return 0;
}

int sg_peer_check(const sg_peer *p, sg_err *err)
{
    if (p->pidfd >= 0) {
        /* A pidfd becomes readable once its process has exited. */
        struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
        int r = poll(&pfd, 1, 0);
        if (r < 0)
            return sg_err_sys(err, "poll on pidfd of pid %d", (int)p->pid);
        if (r > 0)
            return sg_err_set(err, SG_EPERM, "caller pid %d has exited", (int)p->pid);
        /* A live pidfd names the very process it was opened for, and its pid
         * cannot be reused while it lives, so the start time recorded with
         * the pidfd still holds: reading /proc again would prove nothing. */
        return 0;
    }
    uint64_t st = 0;
    sg_err e2;
    if (sg_peer_proc_starttime(p->pid, &st, &e2) != 0)
        return sg_err_set(err, SG_EPERM, "caller pid %d has gone: %s", (int)p->pid, e2.msg);
    if (st != p->starttime)
        return sg_err_set(err, SG_EPERM, "caller pid %d was replaced by another process",
                          (int)p->pid);
    return 0;
}

void sg_peer_cleanup(sg_peer *p)
{
    if (p == NULL)
        return;
    if (p->pidfd >= 0)
        close(p->pidfd);
    p->pidfd = -1;
    free(p->groups);
    p->groups = NULL;
    p->ngroups = -1;
}

int sg_peer_copy(const sg_peer *src, sg_peer *dst, sg_err *err)
{
    sg_peer c = *src;
    c.groups = NULL;
    if (src->ngroups > 0) {
        c.groups = malloc((size_t)src->ngroups * sizeof(gid_t));
        if (c.groups == NULL)
            return sg_err_set(err, SG_ENOMEM, "out of memory copying caller pid %d", (int)src->pid);
        memcpy(c.groups, src->groups, (size_t)src->ngroups * sizeof(gid_t));
    }
    if (src->pidfd >= 0) {
        c.pidfd = fcntl(src->pidfd, F_DUPFD_CLOEXEC, 0);
        if (c.pidfd < 0) {
            free(c.groups);
            return sg_err_sys(err, "dup pidfd of pid %d", (int)src->pid);
        }
    }
    *dst = c;
    return 0;
}

int sg_peer_table_new(sg_peer_table **out)
{
    sg_peer_table *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return SG_ENOMEM;
    *out = t;
    return 0;
}

void sg_peer_table_free(sg_peer_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].used)
            sg_peer_cleanup(&t->slots[i].peer);
    free(t->slots);
    free(t);
}

int sg_peer_table_put(sg_peer_table *t, int fd, sg_peer *p, sg_err *err)
{
    if (fd < 0 || fd >= PEER_TABLE_MAX_FD)
        return sg_err_set(err, SG_EINVAL, "connection fd %d out of range", fd);
    if ((size_t)fd >= t->cap) {
        size_t ncap = t->cap ? t->cap : 64;
        while (ncap <= (size_t)fd)
            ncap *= 2;
        peer_slot *ns = realloc(t->slots, ncap * sizeof(*ns));
        if (ns == NULL)
            return sg_err_set(err, SG_ENOMEM, "peer table: out of memory");
        memset(ns + t->cap, 0, (ncap - t->cap) * sizeof(*ns));
        t->slots = ns;
        t->cap = ncap;
    }
    peer_slot *s = &t->slots[fd];
    if (s->used)
        sg_peer_cleanup(&s->peer);
    else
        t->n++;
    s->used = true;
    s->peer = *p;
    p->pidfd = -1;
    return 0;
}

static int parse_fd_peer(const char *peer, int *fd)
{
    if (peer == NULL || strncmp(peer, "fd:", 3) != 0)
        return -1;
    const char *s = peer + 3;
    if (*s < '0' || *s > '9')
        return -1;
    long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
        if (v >= PEER_TABLE_MAX_FD)
            return -1;
    }
    *fd = (int)v;
    return 0;
}

static bool slot_current(int fd, const sg_peer *p)
{
    ino_t ino;
    uint64_t cookie;
    if (socket_identity(fd, &ino, &cookie) != 0)
        return false;
    return ino == p->ino && cookie == p->cookie;
}

int sg_peer_table_find(sg_peer_table *t, const char *peer, const sg_peer **out, sg_err *err)
{
    int fd;
    if (parse_fd_peer(peer, &fd) != 0)
        return sg_err_set(err, SG_ENOENT, "caller \"%.64s\" is not a local socket peer",
                          peer ? peer : "(none)");
    if ((size_t)fd >= t->cap || !t->slots[fd].used)
        return sg_err_set(err, SG_ENOENT, "no connection known for caller \"%s\"", peer);
    peer_slot *s = &t->slots[fd];
    if (!slot_current(fd, &s->peer)) {
        sg_peer_cleanup(&s->peer);
        s->used = false;
        t->n--;
        return sg_err_set(err, SG_ENOENT, "connection of caller \"%s\" is gone", peer);
    }
    *out = &s->peer;
    return 0;
}

size_t sg_peer_table_sweep(sg_peer_table *t)
{
    size_t dropped = 0;
    for (size_t i = 0; i < t->cap; i++) {
        peer_slot *s = &t->slots[i];
        if (s->used && !slot_current((int)i, &s->peer)) {
            sg_peer_cleanup(&s->peer);
            s->used = false;
            t->n--;
            dropped++;
        }
    }
    return dropped;
}

size_t sg_peer_table_size(const sg_peer_table *t)
{
    return t->n;
}
