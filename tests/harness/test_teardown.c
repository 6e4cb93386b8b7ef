/*
 * No server and no directory outlive a test: after pgh_cluster_free(), and
 * after the test process dies without freeing (abort, SIGKILL), even with
 * hung (SIGSTOPped) servers.
 */
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"


#define MAX_PIDS 3

struct snapshot {
    char dir[1024];
    pid_t pids[MAX_PIDS];
    int n;
};

static void snap(pgh_cluster *c, struct snapshot *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "%s", pgh_cluster_dir(c));
    s->pids[s->n++] = pgh_node_pid(pgh_cluster_primary(c));
    for (int i = 0; i < pgh_cluster_replica_count(c) && s->n < MAX_PIDS; i++)
        s->pids[s->n++] = pgh_node_pid(pgh_cluster_replica(c, i));
}

static bool anything_left(const struct snapshot *s)
{
    struct stat st;
    if (stat(s->dir, &st) == 0)
        return true;
    for (int i = 0; i < s->n; i++)
        if (pid_alive(s->pids[i]))
            return true;
    return false;
}

static void skip_if_external(void)
{
    const char *ext = getenv("PGGUARD_TEST_PRIMARY");
    if (ext && *ext)
        pgh_skip("external servers: the harness starts no server to tear down");
}

Test(teardown, free_removes_all)
{
    skip_if_external();
    pgh_cluster *c = start_cluster(2);
    struct snapshot s;
    snap(c, &s);
    for (int i = 0; i < s.n; i++)
        cr_assert(pid_alive(s.pids[i]), "postmaster %d not running", (int)s.pids[i]);
    /* a hung server must be resumed to obey the stop */
    cr_assert_eq(pgh_node_hang(pgh_cluster_replica(c, 0)), 0);
    double t0 = pgh_now_ms();
    pgh_cluster_free(c);
    fprintf(stderr, "timing: free with one hung replica: %.0f ms\n", pgh_now_ms() - t0);
    /* synchronous: everything is gone when free returns */
    cr_expect_not(anything_left(&s), "a server or %s survived pgh_cluster_free()", s.dir);
    no_leaks();
}

/* The reaper of the cluster in dir: sh -c SCRIPT pgh-reaper DIR. */
static pid_t find_reaper(const char *dir)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;
    while (d && (e = readdir(d)) && !found) {
        char path[300], buf[8192];
        snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* the arguments are NUL-separated: look for "pgh-reaper" then dir */
        for (size_t i = 0; i + 1 < n; i += strlen(buf + i) + 1) {
            if (strcmp(buf + i, "pgh-reaper") == 0 && i + 11 < n &&
                strcmp(buf + i + 11, dir) == 0) {
                found = (pid_t)atoi(e->d_name);
                break;
            }
        }
    }
    if (d)
        closedir(d);
    return found;
}

Test(teardown, free_without_reaper)
{
    skip_if_external();
    pgh_cluster *c = start_cluster(1);
    struct snapshot s;
    snap(c, &s);
    pid_t reaper = find_reaper(s.dir);
    cr_assert_gt(reaper, 0, "no reaper for %s", s.dir);
    /* whoever killed it, free must still clean up, hung server included */
    cr_assert_eq(kill(reaper, SIGKILL), 0);
    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    pgh_cluster_free(c);
    cr_expect_not(anything_left(&s), "a server or %s survived pgh_cluster_free()", s.dir);
    no_leaks();
}

/* Start a cluster in a child, hang some of it, report it, die by `how`. */
static void crash_child(int fd, int how)
{
    char err[1024];
    pgh_cluster *c = pgh_cluster_start(2, err, sizeof err);
    struct snapshot s;
    memset(&s, 0, sizeof s);
    if (c) {
        snap(c, &s);
        pgh_node_hang(pgh_cluster_primary(c));
        if (how == SIGKILL)
            pgh_node_hang(pgh_cluster_replica(c, 1));
    } else {
        fprintf(stderr, "child: %s\n", err);
    }
    if (write(fd, &s, sizeof s) != (ssize_t)sizeof s)
        _exit(3);
    if (!c)
        _exit(2);
    if (how == SIGKILL)
        raise(SIGKILL);
    abort();
}

static void crash_and_check(int how)
{
    skip_if_external();
    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        close(pfd[0]);
        crash_child(pfd[1], how);
    }
    close(pfd[1]);
    struct snapshot s;
    ssize_t got = read(pfd[0], &s, sizeof s);
    close(pfd[0]);
    int status;
    waitpid(child, &status, 0);
    double t0 = pgh_now_ms();
    cr_assert_eq(got, (ssize_t)sizeof s, "the child did not report");
    cr_assert(s.n > 0 && s.dir[0], "the child could not start a cluster");
    cr_assert(WIFSIGNALED(status), "the child did not crash");
    cr_expect_eq(WTERMSIG(status), how);
    /* the reaper works in the background: give it a generous while */
    while (anything_left(&s) && pgh_now_ms() - t0 < 30000)
        usleep(10000);
    fprintf(stderr, "timing: everything gone %.0f ms after the test process died of signal %d\n",
            pgh_now_ms() - t0, how);
    cr_expect_not(anything_left(&s), "a server or %s survived the crash", s.dir);
}

Test(teardown, crash_abort)
{
    crash_and_check(SIGABRT);
    no_leaks();
}

Test(teardown, crash_sigkill)
{
    crash_and_check(SIGKILL);
    no_leaks();
}
