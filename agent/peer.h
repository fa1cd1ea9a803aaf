/*
 * Workload API callers: the credentials of each accepted connection
 * (SO_PEERCRED), the process pinned against pid reuse (pidfd plus the start
 * time from /proc/<pid>/stat), and a table from connection fd to those
 * credentials so a call whose peer is "fd:N" maps back to its caller.
 * The table belongs to the agent's state (its lock); sg_peer_check may run
 * on any thread.
 */
#ifndef SG_AGENT_PEER_H
#define SG_AGENT_PEER_H

#include "common/err.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * One caller. pidfd and groups are owned by whoever owns the struct
 * (sg_peer_cleanup).
 */
typedef struct sg_peer {
    pid_t pid;
    uid_t uid;
    gid_t gid;
    gid_t *groups;      /* supplementary groups at connect (SO_PEERGROUPS) */
    int ngroups;        /* -1: the kernel did not report them */
    int pidfd;          /* -1 when none */
    uint64_t starttime; /* clock ticks after boot, field 22 of /proc/<pid>/stat */
    ino_t ino;          /* inode of the connection socket at accept */
    uint64_t cookie;    /* SO_COOKIE of the connection, 0 when unsupported */
} sg_peer;

/*
 * Reads the credentials of the connected Unix socket fd (SO_PEERCRED and
 * SO_PEERGROUPS: one snapshot the kernel took at connect) and pins the
 * process: SO_PEERPIDFD where the kernel has it (>= 6.5), else pidfd_open.
 * On success *out owns a new pidfd. Fails when the peer has already exited.
 */
int sg_peer_capture(int fd, sg_peer *out, sg_err *err);

/*
 * Checks that the pinned process is still the one captured: its pidfd has
 * not signalled exit and its start time is unchanged. Thread-safe.
 * Returns 0, or SG_EPERM naming the pid when it has gone or been replaced.
 */
int sg_peer_check(const sg_peer *p, sg_err *err);

/* Reads the start time of pid from /proc/<pid>/stat. */
int sg_peer_proc_starttime(pid_t pid, uint64_t *out, sg_err *err);

/* Closes p's pidfd, frees its groups and marks it empty. NULL-safe. */
void sg_peer_cleanup(sg_peer *p);

/* Deep copy (dups the pidfd, copies the groups). */
int sg_peer_copy(const sg_peer *src, sg_peer *dst, sg_err *err);

/* ------------------------------------------------------------ fd table */

typedef struct sg_peer_table sg_peer_table;

int sg_peer_table_new(sg_peer_table **out);

/* Frees the table and closes every pidfd it holds. NULL-safe. */
void sg_peer_table_free(sg_peer_table *t);

/*
 * Records p (taken: the table now owns its pidfd and groups) for connection fd,
 * replacing and releasing whatever an earlier connection with the same fd
 * number left behind. On error p is left to the caller.
 */
int sg_peer_table_put(sg_peer_table *t, int fd, sg_peer *p, sg_err *err);

/*
 * Resolves a gRPC peer string "fd:N" to the table's record of its caller.
 * The connection must still be the one recorded (inode and SO_COOKIE
 * re-checked), so a stale record is never used. *out is borrowed: valid
 * only until the table next changes, so only while its owner's lock is
 * held; sg_peer_copy it to keep it longer. SG_ENOENT when the string is
 * not an fd peer or no connection is known for it.
 */
int sg_peer_table_find(sg_peer_table *t, const char *peer, const sg_peer **out, sg_err *err);

/* Drops records whose connection is gone (fd closed or reused). Returns the number dropped. */
size_t sg_peer_table_sweep(sg_peer_table *t);

/* Number of records held. */
size_t sg_peer_table_size(const sg_peer_table *t);

#endif
