/* Unit tests for common/fsutil.c. */
#include "common/fsutil.h"
#include "test/runner.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    ASSERT(d != NULL);
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

TEST(fsutil_write_atomic_then_read)
{
    const char *dir = sg_test_tmpdir();
    char *path = sg_fs_join(dir, "key.pem");
    struct stat st;
    uint8_t *data = NULL;
    size_t len = 0;
    sg_err err;

    ASSERT(path != NULL);
    umask(022);
    ASSERT_OK(sg_fs_write_atomic(path, "secret", 6, 0600, &err));
    ASSERT_OK(stat(path, &st));
    ASSERT_EQ(st.st_mode & 0777, 0600);
    ASSERT_OK(sg_fs_read_file(path, 100, &data, &len, &err));
    ASSERT_EQ(len, 6);
    ASSERT_STREQ((char *)data, "secret");
    free(data);
    /* Overwrite replaces content and leaves no temp files behind. */
    ASSERT_OK(sg_fs_write_atomic(path, "new", 3, 0644, &err));
    ASSERT_OK(sg_fs_read_file(path, 100, &data, &len, &err));
    ASSERT_STREQ((char *)data, "new");
    free(data);
    ASSERT_OK(stat(path, &st));
    ASSERT_EQ(st.st_mode & 0777, 0644);
    ASSERT_EQ(count_entries(dir), 1);
    free(path);
}

TEST(fsutil_write_atomic_exact_mode_despite_umask)
{
    const char *dir = sg_test_tmpdir();
    char *path = sg_fs_join(dir, "f");
    struct stat st;

    umask(077);
    ASSERT_OK(sg_fs_write_atomic(path, "x", 1, 0644, NULL));
    ASSERT_OK(stat(path, &st));
    ASSERT_EQ(st.st_mode & 0777, 0644);
    free(path);
}

TEST(fsutil_write_atomic_missing_dir_fails_cleanly)
{
    sg_err err;

    ASSERT_EQ(sg_fs_write_atomic("/nonexistent-sigil-dir/x", "a", 1, 0600, &err), SG_ESYS);
    ASSERT(strstr(err.msg, "/nonexistent-sigil-dir/x") != NULL);
}

TEST(fsutil_read_file_limits_and_errors)
{
    const char *dir = sg_test_tmpdir();
    char *path = sg_fs_join(dir, "big");
    uint8_t *data = (uint8_t *)"untouched";
    size_t len = 99;
    sg_err err;

    ASSERT_OK(sg_fs_write_atomic(path, "0123456789", 10, 0600, &err));
    ASSERT_EQ(sg_fs_read_file(path, 9, &data, &len, &err), SG_ETOOBIG);
    ASSERT_EQ(len, 99);
    ASSERT_STREQ((char *)data, "untouched");
    ASSERT_OK(sg_fs_read_file(path, 10, &data, &len, &err));
    ASSERT_EQ(len, 10);
    free(data);
    ASSERT_EQ(sg_fs_read_file("/nonexistent-sigil-file", 10, &data, &len, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "/nonexistent-sigil-file") != NULL);
    ASSERT_EQ(sg_fs_read_file(dir, 10, &data, &len, &err), SG_EINVAL);
    free(path);
}

TEST(fsutil_read_file_proc_has_zero_size)
{
    uint8_t *data;
    size_t len;
    sg_err err;

    ASSERT_OK(sg_fs_read_file("/proc/self/status", 1 << 20, &data, &len, &err));
    ASSERT(len > 0);
    ASSERT(strstr((char *)data, "Pid:") != NULL);
    free(data);
    ASSERT_EQ(sg_fs_read_file("/proc/self/status", 10, &data, &len, &err), SG_ETOOBIG);
}

TEST(fsutil_mkdir_p_creates_parents)
{
    const char *dir = sg_test_tmpdir();
    char path[512];
    struct stat st;
    sg_err err;

    snprintf(path, sizeof path, "%s/a/b//c/", dir);
    ASSERT_OK(sg_fs_mkdir_p(path, 0700, &err));
    snprintf(path, sizeof path, "%s/a/b/c", dir);
    ASSERT_OK(stat(path, &st));
    ASSERT(S_ISDIR(st.st_mode));
    ASSERT_OK(sg_fs_mkdir_p(path, 0700, &err));
    snprintf(path, sizeof path, "%s/file", dir);
    ASSERT_OK(sg_fs_write_atomic(path, "x", 1, 0600, &err));
    snprintf(path, sizeof path, "%s/file/sub", dir);
    ASSERT_EQ(sg_fs_mkdir_p(path, 0700, &err), SG_ESYS);
    ASSERT(strstr(err.msg, "file") != NULL);
}

TEST(fsutil_join_handles_slashes)
{
    char *p;

    p = sg_fs_join("/a/b", "c");
    ASSERT_STREQ(p, "/a/b/c");
    free(p);
    p = sg_fs_join("/a/b//", "c");
    ASSERT_STREQ(p, "/a/b/c");
    free(p);
    p = sg_fs_join("/", "c");
    ASSERT_STREQ(p, "/c");
    free(p);
    ASSERT(sg_fs_join(NULL, "c") == NULL);
}

TEST(fsutil_mkdir_p_ignores_umask)
{
    char path[512];
    struct stat st;

    snprintf(path, sizeof path, "%s/a/b", sg_test_tmpdir());
    umask(077);
    ASSERT_OK(sg_fs_mkdir_p(path, 0755, NULL));
    ASSERT_OK(stat(path, &st));
    ASSERT_EQ(st.st_mode & 0777, 0755);
}
