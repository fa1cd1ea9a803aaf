/*
 * File-system helpers. Writes go to a fresh temp file in the target's
 * directory and are renamed into place, so readers see the old or the new
 * content and never a torn file; reads are bounded by the caller's limit.
 */
#include "common/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define TMP_TRIES 16

/* Returns a malloc'd copy of path's directory ("." when there is none). */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');

    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* fsync the directory so the rename itself survives a crash. Best effort. */
static void sync_dir(const char *path)
{
    char *dir = dir_of(path);
    int fd;

    if (dir == NULL)
        return;
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;

    while (len > 0) {
        ssize_t n = write(fd, p, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int sg_fs_write_atomic(const char *path, const void *data, size_t len, mode_t mode, sg_err *err)
{
    size_t tlen;
    char *tmp;
    int fd = -1, rc;

    if (path == NULL || *path == '\0' || (data == NULL && len > 0))
        return sg_err_set(err, SG_EINVAL, "no path or data to write");
    tlen = strlen(path) + 32;
    tmp = malloc(tlen);
    if (tmp == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory writing \"%s\"", path);
    for (int i = 0; i < TMP_TRIES && fd < 0; i++) {
        unsigned long long r = 0;

        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (unsigned long long)getpid() * 1000003ull + (unsigned long long)i;
        snprintf(tmp, tlen, "%s.tmp.%016llx", path, r);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd < 0 && errno != EEXIST) {
            rc = sg_err_sys(err, "cannot create \"%s\"", tmp);
            free(tmp);
            return rc;
        }
    }
    if (fd < 0) {
        rc = sg_err_sys(err, "cannot create a temporary file next to \"%s\"", path);
        free(tmp);
        return rc;
    }
    /* The umask may have narrowed mode; callers ask for an exact mode. */
    if (fchmod(fd, mode) < 0) {
        rc = sg_err_sys(err, "cannot set mode %o on \"%s\"", (unsigned)mode, tmp);
        goto fail;
    }
    if (write_all(fd, data, len) < 0) {
        rc = sg_err_sys(err, "cannot write \"%s\"", tmp);
        goto fail;
    }
    if (fsync(fd) < 0) {
        rc = sg_err_sys(err, "cannot sync \"%s\"", tmp);
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        rc = sg_err_sys(err, "cannot close \"%s\"", tmp);
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        rc = sg_err_sys(err, "cannot rename \"%s\" to \"%s\"", tmp, path);
        goto fail;
    }
    sync_dir(path);
    free(tmp);
    return 0;

fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    return rc;
}

int sg_fs_read_file(const char *path, size_t max, uint8_t **out, size_t *len, sg_err *err)
{
    struct stat st;
    uint8_t *buf = NULL;
    size_t cap, n = 0;
    int fd, rc;

    if (path == NULL || *path == '\0')
        return sg_err_set(err, SG_EINVAL, "no file path given");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return sg_err_set(err, SG_ENOENT, "\"%s\" does not exist", path);
        return sg_err_sys(err, "cannot open \"%s\"", path);
    }
    if (fstat(fd, &st) < 0) {
        rc = sg_err_sys(err, "cannot stat \"%s\"", path);
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = sg_err_set(err, SG_EINVAL, "\"%s\" is a directory", path);
        goto fail;
    }
    if (st.st_size > 0 && (uint64_t)st.st_size > max) {
        rc = sg_err_set(err, SG_ETOOBIG, "\"%s\" is larger than %zu bytes", path, max);
        goto fail;
    }
    /* Files in /proc report size 0, so the buffer grows while reading. */
    cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
    if (cap > max + 1)
        cap = max + 1;
    buf = malloc(cap + 1);
    if (buf == NULL) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory reading \"%s\"", path);
        goto fail;
    }
    for (;;) {
        ssize_t r;

        if (n == cap) {
            size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            uint8_t *nb;

            if (ncap <= cap) {
                rc = sg_err_set(err, SG_ETOOBIG, "\"%s\" is larger than %zu bytes", path, max);
                goto fail;
            }
            nb = realloc(buf, ncap + 1);
            if (nb == NULL) {
                rc = sg_err_set(err, SG_ENOMEM, "out of memory reading \"%s\"", path);
                goto fail;
            }
            buf = nb;
            cap = ncap;
        }
        r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = sg_err_sys(err, "cannot read \"%s\"", path);
            goto fail;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) {
            rc = sg_err_set(err, SG_ETOOBIG, "\"%s\" is larger than %zu bytes", path, max);
            goto fail;
        }
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;

fail:
    free(buf);
    close(fd);
    return rc;
}

int sg_fs_mkdir_p(const char *dir, mode_t mode, sg_err *err)
{
    struct stat st;
    char *copy;
    size_t len;

    if (dir == NULL || *dir == '\0')
        return sg_err_set(err, SG_EINVAL, "no directory given");
    copy = strdup(dir);
    if (copy == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory creating \"%s\"", dir);
    len = strlen(copy);
    while (len > 1 && copy[len - 1] == '/')
        copy[--len] = '\0';
    /* Walk each prefix ending at a '/', then the whole path. */
    for (size_t i = 1; i <= len; i++) {
        if (copy[i] != '/' && copy[i] != '\0')
            continue;
        if (copy[i - 1] == '/')
            continue;
        copy[i] = '\0';
        if (mkdir(copy, mode) < 0) {
            int e = errno;

            if (e != EEXIST || stat(copy, &st) < 0 || !S_ISDIR(st.st_mode)) {
                int rc;

                errno = e == EEXIST ? ENOTDIR : e;
                rc = sg_err_sys(err, "cannot create directory \"%s\"", copy);
                free(copy);
                return rc;
            }
        } else if (chmod(copy, mode) < 0) {
            /* mkdir applies the umask; a directory we create gets exactly mode. */
            int rc = sg_err_sys(err, "cannot set mode %o on \"%s\"", (unsigned)mode, copy);
            free(copy);
            return rc;
        }
        if (i < len)
            copy[i] = '/';
    }
    free(copy);
    return 0;
}

char *sg_fs_join(const char *dir, const char *name)
{
    size_t dl, nl;
    char *out;

    if (dir == NULL || name == NULL)
        return NULL;
    dl = strlen(dir);
    nl = strlen(name);
    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    if (dl == 1 && dir[0] == '/')
        dl = 0;
    out = malloc(dl + 1 + nl + 1);
    if (out == NULL)
        return NULL;
    memcpy(out, dir, dl);
    out[dl] = '/';
    memcpy(out + dl + 1, name, nl + 1);
    return out;
}
