/* Running the server's commands: as the server user, bounded, output kept. */
#include "harness_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void (*pgh__skip_hook)(const char *reason);

void pgh__vfmt(char *buf, size_t len, const char *fmt, va_list ap)
{
    if (len == 0)
        return;
    int n = vsnprintf(buf, len, fmt, ap);
    if (n < 0)
        buf[0] = '\0';
}

void pgh__fmt(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pgh__vfmt(buf, len, fmt, ap);
    va_end(ap);
}

double pgh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void pgh_skip(const char *fmt, ...)
{
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    pgh__vfmt(reason, sizeof reason, fmt, ap);
    va_end(ap);
    fprintf(stderr, "SKIP: %s\n", reason);
    fflush(stderr);
    if (pgh__skip_hook)
        pgh__skip_hook(reason);
    /* meson's code for a skipped test */
    exit(77);
}

static bool is_exec(const char *path)
{
    return access(path, X_OK) == 0;
}

static void strip_newline(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
}

/* The first line of a command's output, for pg_config and --version. */
static int first_line(const char *const argv[], char *out, size_t outlen)
{
    int rc = pgh__run(argv, false, 10000, out, outlen);
    char *nl = strchr(out, '\n');
    if (nl)
        *nl = '\0';
    strip_newline(out);
    return rc == 0 && out[0] ? 0 : -1;
}

static pgh__env env;
static char env_err[512];
static bool env_ok;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static void env_init(void)
{
    env.root = geteuid() == 0;
    if (env.root) {
        /* initdb and pg_ctl refuse to run as root */
        struct passwd *pw = getpwnam("postgres");
        if (!pw) {
            pgh__fmt(env_err, sizeof env_err,
                     "running as root but there is no 'postgres' user to run the servers "
                     "(install postgresql-15, or run as an ordinary user)");
            return;
        }
        env.server_uid = pw->pw_uid;
        env.server_gid = pw->pw_gid;
        pgh__fmt(env.server_user, sizeof env.server_user, "%s", pw->pw_name);
        static const char *const runusers[] = {"/usr/sbin/runuser", "/sbin/runuser",
                                               "/usr/bin/runuser", "/bin/runuser"};
        for (size_t i = 0; i < sizeof runusers / sizeof runusers[0]; i++) {
            if (is_exec(runusers[i])) {
                pgh__fmt(env.runuser, sizeof env.runuser, "%s", runusers[i]);
                break;
            }
        }
        if (!env.runuser[0]) {
            pgh__fmt(env_err, sizeof env_err, "runuser not found (util-linux)");
            return;
        }
    } else {
        env.server_uid = geteuid();
        env.server_gid = getegid();
        struct passwd *pw = getpwuid(env.server_uid);
        pgh__fmt(env.server_user, sizeof env.server_user, "%s", pw ? pw->pw_name : "?");
    }

    /* Data directories go to memory when we can: copying the template onto
     * a disk filesystem costs 0.5 s per node here, onto tmpfs 0.03 s. */
    const char *tmp = getenv("PGGUARD_TEST_TMPDIR");
    struct statfs sfs;
    struct stat st;
    if (!tmp || tmp[0] != '/') {
        tmp = NULL;
        if (statfs("/dev/shm", &sfs) == 0 && sfs.f_type == TMPFS_MAGIC &&
            stat("/dev/shm", &st) == 0 && (st.st_mode & S_ISVTX) && (st.st_mode & 0777) == 0777 &&
            access("/dev/shm", W_OK | X_OK) == 0)
            tmp = "/dev/shm";
    }
    if (!tmp) {
        tmp = getenv("TMPDIR");
        if (!tmp || tmp[0] != '/')
            tmp = "/tmp";
    }
    pgh__fmt(env.tmpdir, sizeof env.tmpdir, "%s", tmp);

    /* The server binaries are not on PATH on Debian: ask pg_config, or take
     * PGGUARD_PG_BINDIR when the user points elsewhere. */
    const char *bindir = getenv("PGGUARD_PG_BINDIR");
    if (bindir && bindir[0]) {
        pgh__fmt(env.bindir, sizeof env.bindir, "%s", bindir);
    } else {
        static const char *const configs[] = {"/usr/bin/pg_config", "/usr/local/bin/pg_config"};
        for (size_t i = 0; i < sizeof configs / sizeof configs[0] && !env.bindir[0]; i++) {
            const char *argv[] = {configs[i], "--bindir", NULL};
            if (is_exec(configs[i]))
                first_line(argv, env.bindir, sizeof env.bindir);
        }
    }
    char path[PATH_MAX + 16];
    pgh__fmt(path, sizeof path, "%s/initdb", env.bindir);
    if (!env.bindir[0] || !is_exec(path)) {
        pgh__fmt(env_err, sizeof env_err,
                 "PostgreSQL server binaries not found (initdb in '%s'): install "
                 "postgresql-15 or set PGGUARD_PG_BINDIR",
                 env.bindir);
        return;
    }
    pgh__fmt(path, sizeof path, "%s/postgres", env.bindir);
    const char *argv[] = {path, "--version", NULL};
    if (first_line(argv, env.version, sizeof env.version) != 0) {
        pgh__fmt(env_err, sizeof env_err, "'%s --version' failed", path);
        return;
    }
    env_ok = true;
}

const pgh__env *pgh__env_get(char *err, size_t errlen)
{
    pthread_once(&env_once, env_init);
    if (!env_ok) {
        pgh__fmt(err, errlen, "%s", env_err);
        return NULL;
    }
    return &env;
}

int pgh__spawn(const char *const argv[], bool as_server, pgh__proc *p, char *err,
               size_t errlen)
{
    p->pid = -1;
    p->out_fd = -1;
    bool via_runuser = as_server && env.root;
    /* Everything is built before the spawn. */
    const char *full[40];
    size_t k = 0;
    if (via_runuser) {
        full[k++] = env.runuser;
        full[k++] = "-u";
        full[k++] = env.server_user;
        full[k++] = "--";
    }
    for (size_t i = 0; argv[i]; i++) {
        if (k + 1 >= sizeof full / sizeof full[0]) {
            pgh__fmt(err, errlen, "too many arguments");
            return -1;
        }
        full[k++] = argv[i];
    }
    full[k] = NULL;

    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        pgh__fmt(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0) {
        pgh__fmt(err, errlen, "/dev/null: %s", strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        return -1;
    }
    /* posix_spawn, not fork: glibc's runs the child on the parent's memory
     * until exec (CLONE_VM|CLONE_VFORK), where fork copies every page
     * table of this process under its memory map's write lock and leaves
     * each page copy-on-write.  A fault bench injects its faults (pg_ctl)
     * from the process whose clients it times: each fork stalled every
     * page fault of every client thread meanwhile, 1-18 ms, then made the
     * first write to each page fault again (measured with bench-faults
     * --async, 2026-12-02: the loops' callbacks slept only around the
     * harness's forks, in both clients). */
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, dfl;
    pid_t pid = -1;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc == 0) {
        rc = posix_spawnattr_init(&at);
        if (rc != 0)
            posix_spawn_file_actions_destroy(&fa);
    }
    if (rc == 0) {
        sigemptyset(&none);
        sigemptyset(&dfl);
        sigaddset(&dfl, SIGPIPE);
        if ((rc = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                                    POSIX_SPAWN_SETPGROUP)) == 0 &&
            (rc = posix_spawnattr_setsigmask(&at, &none)) == 0 &&
            (rc = posix_spawnattr_setsigdefault(&at, &dfl)) == 0 &&
            (rc = posix_spawnattr_setpgroup(&at, 0)) == 0 &&
            (rc = posix_spawn_file_actions_adddup2(&fa, devnull, 0)) == 0 &&
            (rc = posix_spawn_file_actions_adddup2(&fa, pfd[1], 1)) == 0 &&
            (rc = posix_spawn_file_actions_adddup2(&fa, pfd[1], 2)) == 0 &&
            /* Servers started by pg_ctl must not inherit the reaper's pipe
             * or a test's sockets. */
            (rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3)) == 0 &&
            (rc = posix_spawn_file_actions_addchdir_np(&fa, "/")) == 0)
            rc = posix_spawn(&pid, full[0], &fa, &at, (char *const *)full, environ);
        posix_spawnattr_destroy(&at);
        posix_spawn_file_actions_destroy(&fa);
    }
    if (rc != 0) {
        pgh__fmt(err, errlen, "spawn %s: %s", full[0], strerror(rc));
        close(pfd[0]);
        close(pfd[1]);
        close(devnull);
        return -1;
    }
    close(devnull);
    close(pfd[1]);
    p->pid = pid;
    p->out_fd = pfd[0];
    return 0;
}

int pgh__wait(pgh__proc *p, int timeout_ms, char *out, size_t outlen)
{
    char sink[4096];
    size_t used = 0;
    if (out && outlen)
        out[0] = '\0';
    double deadline = pgh_now_ms() + timeout_ms;
    bool timed_out = false;
    while (p->out_fd >= 0) {
        int left = (int)(deadline - pgh_now_ms());
        if (left <= 0) {
            timed_out = true;
            break;
        }
        struct pollfd pfd = {.fd = p->out_fd, .events = POLLIN};
        int r = poll(&pfd, 1, left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue;
        ssize_t n;
        if (out && used + 1 < outlen)
            n = read(p->out_fd, out + used, outlen - used - 1);
        else
            n = read(p->out_fd, sink, sizeof sink);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (out && used + 1 < outlen) {
            used += (size_t)n;
            out[used] = '\0';
        }
    }
    if (p->out_fd >= 0)
        close(p->out_fd);
    p->out_fd = -1;
    if (timed_out)
        kill(-p->pid, SIGKILL);
    int status = 0;
    while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR)
        ;
    p->pid = -1;
    if (timed_out) {
        if (out && used + 40 < outlen)
            pgh__fmt(out + used, outlen - used, "\n(killed after %d ms)", timeout_ms);
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int pgh__run(const char *const argv[], bool as_server, int timeout_ms, char *out,
             size_t outlen)
{
    pgh__proc p;
    char err[256];
    if (pgh__spawn(argv, as_server, &p, err, sizeof err) != 0) {
        pgh__fmt(out, outlen, "%s", err);
        return -1;
    }
    return pgh__wait(&p, timeout_ms, out, outlen);
}
