/*
 * File-system helpers: atomic writes, bounded reads, directory creation.
 */
#ifndef SG_COMMON_FSUTIL_H
#define SG_COMMON_FSUTIL_H

#include "common/err.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Writes len bytes to path atomically: a temp file in the same directory
 * created O_EXCL|O_NOFOLLOW with mode, fsync, rename over path.
 */
int sg_fs_write_atomic(const char *path, const void *data, size_t len, mode_t mode, sg_err *err);

/*
 * Reads all of path into a malloc'd buffer (NUL-terminated, not counted in
 * *len). Fails with SG_ETOOBIG when the file exceeds max bytes.
 */
int sg_fs_read_file(const char *path, size_t max, uint8_t **out, size_t *len, sg_err *err);

/* Creates dir and missing parents with exactly mode, whatever the umask (existing dirs are left
 * alone). */
int sg_fs_mkdir_p(const char *dir, mode_t mode, sg_err *err);

/* Joins dir and name into a malloc'd "dir/name". Returns NULL on OOM. */
char *sg_fs_join(const char *dir, const char *name);

#endif
