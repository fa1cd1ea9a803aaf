/*
 * Unit-test runner: forks one child per test with a timeout so a crash or
 * hang fails that test alone. Optional argv filters by substring of the
 * test name. Ends with the line "N passed, N failed", which CI reads.
 */
#include "test/runner.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TESTS 1024

static struct {
    const char *name;
    sg_test_fn fn;
} tests[MAX_TESTS];
static int ntests;
static char tmpdir[256];

void sg_test_register(const char *name, sg_test_fn fn)
{
    if (ntests < MAX_TESTS) {
        tests[ntests].name = name;
        tests[ntests].fn = fn;
        ntests++;
    }
}

const char *sg_test_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sigil-unit-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
    return tmpdir;
}

static int cmp_tests(const void *a, const void *b)
{
    const char *const *x = a, *const *y = b;
    return strcmp(*x, *y);
}

static int matches(const char *name, int argc, char **argv)
{
    if (argc < 2)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(name, argv[i]) != NULL)
            return 1;
    return 0;
}

static int run_one(int i, int timeout_s)
{
    pid_t pid = fork();
    int status = 0;
    time_t start = time(NULL);

    if (pid < 0) {
        perror("fork");
        return 0;
    }
    if (pid == 0) {
        alarm((unsigned)timeout_s);
        tests[i].fn();
        exit(0);
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 1;
    if (WIFSIGNALED(status))
        fprintf(stderr, "  %s: killed by signal %d%s after %lds\n", tests[i].name, WTERMSIG(status),
                WTERMSIG(status) == SIGALRM ? " (timeout)" : "", (long)(time(NULL) - start));
    return 0;
}

int main(int argc, char **argv)
{
    const char *scale = getenv("SG_TEST_TIMEOUT");
    int timeout_s = scale ? (int)strtol(scale, NULL, 10) : 30;
    int passed = 0, failed = 0;

    if (timeout_s <= 0)
        timeout_s = 30;
    qsort(tests, (size_t)ntests, sizeof tests[0], cmp_tests);
    for (int i = 0; i < ntests; i++) {
        if (!matches(tests[i].name, argc, argv))
            continue;
        fflush(stdout);
        if (run_one(i, timeout_s)) {
            passed++;
            printf("ok   %s\n", tests[i].name);
        } else {
            failed++;
            printf("FAIL %s\n", tests[i].name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
