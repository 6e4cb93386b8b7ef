/*
 * Throwaway clusters: a primary and streaming replicas on 127.0.0.1.
 *
 * Speed: initdb (0.5 to 1 s) runs once per machine into a template directory
 * kept in $TMPDIR, keyed by the server version and our settings.  Every node
 * of every cluster is a copy of that template: the primary starts from it,
 * and a replica is the same copy started with standby.signal, which is a
 * valid cold base backup of the primary (same system identifier, same
 * shutdown checkpoint), so no pg_basebackup is needed.  The primary's slots
 * are created before any replica starts, so the WAL they need is kept.
 *
 * Teardown: a reaper (a small shell script, so that nothing but exec runs in
 * the forked child of a possibly threaded process) reads one end of a socket
 * pair whose other end only the test process holds.  When the test frees the
 * cluster, or dies, the reaper resumes and immediately stops every
 * postmaster found under the cluster's directory, then removes it.
 */
#include "harness_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PGH_MAX_REPLICAS 8
#define PGH_START_TIMEOUT_S "60"
#define PGH_CMD_TIMEOUT_MS 90000
#define PGH_CONNECT_MS 10000
#define PGH_QUERY_MS 30000
#define PGH_READY_MS 30000

/* Settings of every node.  Changing them changes the template's key, so a
 * stale template is never reused. */
static const char template_conf[] =
    "\n# pgguard test harness\n"
    "listen_addresses = '127.0.0.1'\n"
    /* no fsync, but synchronous commits: a commit must survive an immediate
     * stop (asynchronous ones may not), and pg_current_wal_lsn() must cover
     * it for pgh_node_wait_replay() */
    "fsync = off\n"
    "full_page_writes = off\n"
    "shared_buffers = '32MB'\n"
    "max_connections = 100\n"
    "max_wal_senders = 16\n"
    "max_replication_slots = 16\n"
    /* a replica reconnects 200 ms after its primary restarts, not 5 s */
    "wal_retrieve_retry_interval = '200ms'\n"
    "log_line_prefix = '%m [%p] %q%a '\n";

struct pgh_node {
    pgh_cluster *cluster;
    char name[16];
    bool external;
    bool hung;
    char *datadir; /* local nodes */
    char *logfile;
    char *conninfo;
    char *host;
    int port;
    char err[1024];
};

struct pgh_cluster {
    bool external;
    char *dir;
    int n_nodes; /* primary + replicas */
    pgh_node nodes[PGH_MAX_REPLICAS + 1];
    pid_t reaper;
    int reaper_fd; /* write end: closing it (or dying) triggers teardown */
};

/* --------------------------------------------------------------- helpers */

/* PGGUARD_HARNESS_DEBUG=1 prints how long each step of a start takes. */
static void step(const char *what, double *t)
{
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("PGGUARD_HARNESS_DEBUG");
        on = e && *e && *e != '0';
    }
    double now = pgh_now_ms();
    if (on && *t > 0)
        fprintf(stderr, "pgh: %-28s %7.1f ms\n", what, now - *t);
    *t = now;
}

static int node_fail(pgh_node *n, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int node_fail(pgh_node *n, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pgh__vfmt(n->err, sizeof n->err, fmt, ap);
    va_end(ap);
    fprintf(stderr, "pgh: %s: %s\n", n->name, n->err);
    return code;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d)
        abort();
    return d;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

/* FNV-1a: a stable key for the template's name. */
static uint64_t fnv1a(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int rm_rf(const char *path)
{
    const char *argv[] = {"/bin/rm", "-rf", "--", path, NULL};
    char out[256];
    return pgh__run(argv, false, PGH_CMD_TIMEOUT_MS, out, sizeof out);
}

/* Append text to a file in a server-owned directory.  Appending keeps the
 * file's owner, so a root-run harness does not leave root-owned files
 * behind for the server to trip on. */
static int append_file(const char *path, const char *text, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) {
        pgh__fmt(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    int e = errno;
    close(fd);
    if (w != (ssize_t)len) {
        pgh__fmt(err, errlen, "%s: %s", path, strerror(e));
        return -1;
    }
    return 0;
}

/* Create an empty file owned by the server user. */
static int touch_server_file(const pgh__env *env, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || fchown(fd, env->server_uid, env->server_gid) != 0) {
        pgh__fmt(err, errlen, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* The last few lines of a server log, for an error message. */
static void log_tail(const char *path, char *out, size_t outlen)
{
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char buf[8192];
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        fseek(f, size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0, SEEK_SET);
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* keep the last 6 lines */
    int lines = 0;
    char *p = buf + n;
    while (p > buf) {
        p--;
        if (*p == '\n' && p != buf + n - 1 && ++lines == 6) {
            p++;
            break;
        }
    }
    pgh__fmt(out, outlen, "%s", p);
}

static bool file_contains(const char *path, const char *needle)
{
    char tail[2048];
    log_tail(path, tail, sizeof tail);
    return strstr(tail, needle) != NULL;
}

/* A port for a server: random in 20000..31999, below Linux's ephemeral range
 * (32768+) so that outgoing connections do not take it between our check and
 * the server's bind; a conflict anyway makes the start retry. */
static int pick_port(void)
{
    static unsigned seed;
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)time(NULL) ^ (unsigned)(uintptr_t)&seed;
    for (int tries = 0; tries < 200; tries++) {
        int port = 20000 + (int)(rand_r(&seed) % 12000);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        close(fd);
        if (ok)
            return port;
    }
    return -1;
}

/* The postmaster's pid from postmaster.pid, if that process lives. */
static pid_t read_postmaster_pid(const char *datadir)
{
    char path[PATH_MAX];
    pgh__fmt(path, sizeof path, "%s/postmaster.pid", datadir);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    return (pid_t)pid;
}

/* State letter and parent of a process from /proc; 0 when it is gone.
 * A zombie ('Z') has exited: kill(pid, 0) still succeeds on it. */
static char proc_state(pid_t pid, pid_t *ppid)
{
    char path[64], buf[512];
    pgh__fmt(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* the command name may hold spaces and parentheses: parse after the last ')' */
    char *rp = strrchr(buf, ')');
    char state = 0;
    int parent = 0;
    if (!rp || sscanf(rp + 1, " %c %d", &state, &parent) != 2)
        return 0;
    if (ppid)
        *ppid = (pid_t)parent;
    return state;
}

static bool proc_alive(pid_t pid)
{
    char s = proc_state(pid, NULL);
    return s != 0 && s != 'Z' && s != 'X';
}

/* The children of pid, from /proc. */
static int proc_children(pid_t pid, pid_t *out, int max)
{
    int n = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        char *end;
        long v = strtol(e->d_name, &end, 10);
        if (*end || v <= 0)
            continue;
        pid_t ppid = 0;
        char s = proc_state((pid_t)v, &ppid);
        if (s && s != 'Z' && ppid == pid)
            out[n++] = (pid_t)v;
    }
    closedir(d);
    return n;
}

pid_t pgh_node_pid(const pgh_node *n)
{
    if (!n || n->external)
        return 0;
    pid_t pid = read_postmaster_pid(n->datadir);
    return pid > 0 && proc_alive(pid) ? pid : 0;
}

/* ------------------------------------------------------------- template */

static int ensure_template(const pgh__env *env, char *path, size_t pathlen, char *err,
                           size_t errlen)
{
    uint64_t h = fnv1a(0xcbf29ce484222325ULL, env->version);
    h = fnv1a(h, env->bindir);
    h = fnv1a(h, template_conf);
    pgh__fmt(path, pathlen, "%s/pgguard-template-%u-%016" PRIx64, env->tmpdir,
             (unsigned)env->server_uid, h);

    struct stat st;
    char pgver[PATH_MAX + 16];
    pgh__fmt(pgver, sizeof pgver, "%s/PG_VERSION", path);
    if (lstat(path, &st) == 0) {
        /* $TMPDIR is shared: only trust a directory the server user owns */
        if (!S_ISDIR(st.st_mode) || st.st_uid != env->server_uid || (st.st_mode & 077)) {
            pgh__fmt(err, errlen, "%s exists but is not a private directory of %s: remove it",
                     path, env->server_user);
            return -1;
        }
        if (access(pgver, F_OK) == 0)
            return 0;
    }

    /* Build it beside, then rename: concurrent test processes race safely. */
    char tmp[PATH_MAX];
    pgh__fmt(tmp, sizeof tmp, "%s.%d.%ld", path, (int)getpid(), (long)time(NULL));
    char initdb[PATH_MAX + 16];
    pgh__fmt(initdb, sizeof initdb, "%s/initdb", env->bindir);
    const char *argv[] = {initdb, "-D", tmp, "-A", "trust", "-U", "postgres",
                          "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
                          NULL};
    char out[4096];
    double t0 = pgh_now_ms();
    if (pgh__run(argv, true, PGH_CMD_TIMEOUT_MS, out, sizeof out) != 0) {
        pgh__fmt(err, errlen, "initdb failed: %s", out);
        rm_rf(tmp);
        return -1;
    }
    char conf[PATH_MAX + 32];
    pgh__fmt(conf, sizeof conf, "%s/postgresql.conf", tmp);
    if (append_file(conf, template_conf, err, errlen) != 0) {
        rm_rf(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        rm_rf(tmp);
        if (e != EEXIST && e != ENOTEMPTY) {
            pgh__fmt(err, errlen, "rename %s: %s", path, strerror(e));
            return -1;
        }
    }
    fprintf(stderr, "pgh: initdb template %s made in %.0f ms\n", path, pgh_now_ms() - t0);
    return 0;
}

/* --------------------------------------------------------------- reaper */

/* $1: the cluster directory.  Blocks until a line or EOF arrives on stdin. */
static const char reaper_script[] =
    "read -r _ || :\n"
    "base=$1\n"
    "pms=\n"
    "for pidfile in \"$base\"/*/postmaster.pid; do\n"
    "  [ -f \"$pidfile\" ] || continue\n"
    "  dir=${pidfile%/postmaster.pid}\n"
    "  read -r pm < \"$pidfile\" || continue\n"
    /* pids are reused: only a process running in that data directory */
    "  [ \"$(readlink \"/proc/$pm/cwd\" 2>/dev/null)\" = \"$dir\" ] || continue\n"
    "  kids=$(grep -l \"^PPid:[[:space:]]*$pm\\$\" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3)\n"
    /* a hung (SIGSTOPped) server must run again to obey the stop */
    "  kill -CONT $pm $kids 2>/dev/null\n"
    "  kill -QUIT $pm 2>/dev/null\n"
    "  pms=\"$pms $pm\"\n"
    "done\n"
    "alive() {\n"
    "  for p in $pms; do\n"
    "    [ -r /proc/$p/status ] && ! grep -q '^State:[[:space:]]*[ZX]' /proc/$p/status 2>/dev/null && return 0\n"
    "  done\n"
    "  return 1\n"
    "}\n"
    "i=0\n"
    "while alive && [ $i -lt 150 ]; do sleep 0.05; i=$((i+1)); done\n"
    "for p in $pms; do\n"
    "  if [ -r /proc/$p/status ] && ! grep -q '^State:[[:space:]]*[ZX]' /proc/$p/status; then\n"
    "    echo \"pgh-reaper: postmaster $p ignored SIGQUIT, killing it\" >&2\n"
    "    kill -KILL $p $(grep -l \"^PPid:[[:space:]]*$p\\$\" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3) 2>/dev/null\n"
    "  fi\n"
    "done\n"
    "rm -rf \"$base\"\n";

static int start_reaper(pgh_cluster *c, char *err, size_t errlen)
{
    /* a socket pair, not a pipe: writing the wake-up line to a reaper that
     * was killed must fail with EPIPE (MSG_NOSIGNAL), not raise SIGPIPE */
    int pfd[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pfd) != 0) {
        pgh__fmt(err, errlen, "socketpair: %s", strerror(errno));
        return -1;
    }
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    pid_t pid = fork();
    if (pid < 0) {
        pgh__fmt(err, errlen, "fork: %s", strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        if (devnull >= 0)
            close(devnull);
        return -1;
    }
    if (pid == 0) {
        /* own session: a signal to the test's process group (meson's timeout,
         * ^C) must not take the reaper down with the test */
        setsid();
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int s = 1; s < 32; s++)
            if (s != SIGKILL && s != SIGSTOP)
                signal(s, SIG_DFL);
        signal(SIGINT, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        if (dup2(pfd[0], 0) < 0 || devnull < 0 || dup2(devnull, 1) < 0)
            _exit(126);
        /* stderr stays: a reaper's complaint belongs in the test's log */
        closefrom(3);
        if (chdir("/") != 0)
            _exit(126);
        execl("/bin/sh", "sh", "-c", reaper_script, "pgh-reaper", c->dir, (char *)NULL);
        _exit(127);
    }
    close(pfd[0]);
    if (devnull >= 0)
        close(devnull);
    c->reaper = pid;
    c->reaper_fd = pfd[1];
    return 0;
}

static void stop_reaper(pgh_cluster *c)
{
    if (c->reaper_fd >= 0) {
        /* a line wakes the reaper even if a forked child still holds the socket */
        ssize_t w = send(c->reaper_fd, "\n", 1, MSG_NOSIGNAL);
        (void)w;
        close(c->reaper_fd);
        c->reaper_fd = -1;
    }
    if (c->reaper > 0) {
        int status;
        while (waitpid(c->reaper, &status, 0) < 0 && errno == EINTR)
            ;
        c->reaper = 0;
    }
}

/* ------------------------------------------------------------ pg_ctl use */

static int pg_ctl(pgh_node *n, const char *const *args, char *out, size_t outlen)
{
    char err[256];
    const pgh__env *env = pgh__env_get(err, sizeof err);
    if (!env) {
        pgh__fmt(out, outlen, "%s", err);
        return -1;
    }
    char pgctl[PATH_MAX + 16];
    pgh__fmt(pgctl, sizeof pgctl, "%s/pg_ctl", env->bindir);
    const char *argv[16] = {pgctl, "-D", n->datadir};
    size_t k = 3;
    for (size_t i = 0; args[i] && k < 15; i++)
        argv[k++] = args[i];
    argv[k] = NULL;
    return pgh__run(argv, true, PGH_CMD_TIMEOUT_MS, out, outlen);
}

static int spawn_start(pgh_node *n, pgh__proc *p, char *err, size_t errlen)
{
    const pgh__env *env = pgh__env_get(err, errlen);
    if (!env)
        return -1;
    char pgctl[PATH_MAX + 16];
    pgh__fmt(pgctl, sizeof pgctl, "%s/pg_ctl", env->bindir);
    const char *argv[] = {pgctl, "-D", n->datadir, "-l", n->logfile, "-w",
                          "-t", PGH_START_TIMEOUT_S, "start", NULL};
    return pgh__spawn(argv, true, p, err, errlen);
}

static int finish_start(pgh_node *n, pgh__proc *p, bool *port_taken)
{
    char out[2048], tail[2048];
    int rc = pgh__wait(p, PGH_CMD_TIMEOUT_MS, out, sizeof out);
    if (port_taken)
        *port_taken = false;
    if (rc == 0)
        return 0;
    log_tail(n->logfile, tail, sizeof tail);
    if (port_taken)
        *port_taken = file_contains(n->logfile, "could not bind") ||
                      file_contains(n->logfile, "could not create any TCP/IP sockets");
    return node_fail(n, PGH_ERROR, "pg_ctl start failed: %s\nserver log:\n%s", out, tail);
}

static int set_port(pgh_node *n, int port, char *err, size_t errlen)
{
    char conf[PATH_MAX + 32], line[PATH_MAX + 128];
    pgh__fmt(conf, sizeof conf, "%s/postgresql.conf", n->datadir);
    /* the last setting in the file wins, so a retry just appends */
    pgh__fmt(line, sizeof line, "port = %d\n", port);
    if (append_file(conf, line, err, errlen) != 0)
        return -1;
    n->port = port;
    free(n->conninfo);
    n->conninfo = xasprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres", port);
    return 0;
}

/* Start nodes [from, to) in parallel, moving a node to another port when its
 * port was taken meanwhile. */
static int start_nodes(pgh_cluster *c, int from, int to, char *err, size_t errlen)
{
    pgh__proc procs[PGH_MAX_REPLICAS + 1];
    for (int attempt = 0;; attempt++) {
        bool any_taken = false;
        int failed = 0;
        for (int i = from; i < to; i++)
            if (spawn_start(&c->nodes[i], &procs[i], err, errlen) != 0)
                return -1;
        bool taken[PGH_MAX_REPLICAS + 1] = {false};
        for (int i = from; i < to; i++) {
            if (finish_start(&c->nodes[i], &procs[i], &taken[i]) != 0) {
                failed++;
                any_taken |= taken[i];
                if (!taken[i])
                    pgh__fmt(err, errlen, "%s: %s", c->nodes[i].name, c->nodes[i].err);
            }
        }
        if (failed == 0)
            return 0;
        if (!any_taken || attempt >= 5)
            return -1;
        /* start only the nodes that lost their port again, on a new one */
        for (int i = from; i < to; i++) {
            if (taken[i]) {
                if (set_port(&c->nodes[i], pick_port(), err, errlen) != 0)
                    return -1;
                if (spawn_start(&c->nodes[i], &procs[i], err, errlen) != 0)
                    return -1;
                if (finish_start(&c->nodes[i], &procs[i], NULL) != 0) {
                    pgh__fmt(err, errlen, "%s: %s", c->nodes[i].name, c->nodes[i].err);
                    return -1;
                }
            }
        }
        return 0;
    }
}

/* ------------------------------------------------------------ SQL files */

#ifndef PGH_SQL_DIR
#define PGH_SQL_DIR "sql"
#endif

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every .sql file of sql/ in name order, in one transaction under an advisory lock:
 * test processes sharing an external server may load it at the same time,
 * and concurrent CREATE OR REPLACE of one function can fail. */
static char *fixture_sql(char *err, size_t errlen)
{
    const char *dir = getenv("PGGUARD_SQL_DIR");
    if (!dir || !dir[0])
        dir = PGH_SQL_DIR;
    DIR *d = opendir(dir);
    if (!d) {
        pgh__fmt(err, errlen, "SQL directory %s: %s", dir, strerror(errno));
        return NULL;
    }
    char *names[64];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 64) {
        size_t len = strlen(e->d_name);
        if (len > 4 && strcmp(e->d_name + len - 4, ".sql") == 0)
            names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);

    size_t cap = 1 << 16, len = 0;
    char *sql = malloc(cap);
    if (!sql)
        abort();
    len += (size_t)snprintf(sql, cap, "BEGIN;\nSELECT pg_advisory_xact_lock(715100);\n");
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char path[PATH_MAX];
        pgh__fmt(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "r");
        if (!f) {
            pgh__fmt(err, errlen, "%s: %s", path, strerror(errno));
            rc = -1;
        } else {
            char buf[8192];
            size_t got;
            while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
                while (len + got + 64 > cap) {
                    cap *= 2;
                    sql = realloc(sql, cap);
                    if (!sql)
                        abort();
                }
                memcpy(sql + len, buf, got);
                len += got;
            }
            fclose(f);
            sql[len++] = '\n';
        }
        free(names[i]);
    }
    if (n == 0) {
        pgh__fmt(err, errlen, "no .sql file in %s", dir);
        rc = -1;
    }
    memcpy(sql + len, "COMMIT;\n", 9);
    if (rc != 0) {
        free(sql);
        return NULL;
    }
    return sql;
}

static int load_fixture(pgh_node *primary, char *err, size_t errlen)
{
    char *sql = fixture_sql(err, errlen);
    if (!sql)
        return -1;
    int rc = pgh_node_exec(primary, sql);
    free(sql);
    if (rc != 0)
        pgh__fmt(err, errlen, "loading sql/ into the primary: %s", primary->err);
    return rc;
}

/* ------------------------------------------------------------- clusters */

static void node_init(pgh_cluster *c, pgh_node *n, int index)
{
    n->cluster = c;
    if (index == 0)
        pgh__fmt(n->name, sizeof n->name, "primary");
    else
        pgh__fmt(n->name, sizeof n->name, "replica%d", index);
}

static void node_clear(pgh_node *n)
{
    free(n->datadir);
    free(n->logfile);
    free(n->conninfo);
    free(n->host);
}

/* Host and port of a conninfo, for pgh_node_host/port on external nodes. */
static void parse_host_port(pgh_node *n)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(n->conninfo, &errmsg);
    PQfreemem(errmsg);
    const char *host = NULL, *port = NULL;
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!strcmp(o->keyword, "host") && o->val)
            host = o->val;
        else if (!strcmp(o->keyword, "port") && o->val)
            port = o->val;
    }
    if (!host)
        host = getenv("PGHOST");
    if (!port)
        port = getenv("PGPORT");
    n->host = xstrdup(host ? host : "");
    n->port = port && *port ? atoi(port) : 5432;
    PQconninfoFree(opts);
}

static pgh_cluster *start_external(const char *primary, char *errbuf, size_t errlen)
{
    pgh_cluster *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->external = true;
    c->reaper_fd = -1;
    c->n_nodes = 1;
    node_init(c, &c->nodes[0], 0);
    c->nodes[0].external = true;
    c->nodes[0].conninfo = xstrdup(primary);

    const char *replicas = getenv("PGGUARD_TEST_REPLICAS");
    if (replicas && *replicas) {
        char *copy = xstrdup(replicas), *save = NULL;
        for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            while (*tok == ' ')
                tok++;
            if (!*tok)
                continue;
            if (c->n_nodes > PGH_MAX_REPLICAS) {
                pgh__fmt(errbuf, errlen, "PGGUARD_TEST_REPLICAS names more than %d servers",
                         PGH_MAX_REPLICAS);
                free(copy);
                pgh_cluster_free(c);
                return NULL;
            }
            pgh_node *n = &c->nodes[c->n_nodes];
            node_init(c, n, c->n_nodes);
            n->external = true;
            n->conninfo = xstrdup(tok);
            c->n_nodes++;
        }
        free(copy);
    }
    for (int i = 0; i < c->n_nodes; i++)
        parse_host_port(&c->nodes[i]);

    /* Check the roles now: a wrong variable should fail loudly, not as an
     * odd test failure later.  Never echo the conninfo: it may hold a
     * password. */
    for (int i = 0; i < c->n_nodes; i++) {
        char v[16];
        if (pgh_node_query_value(&c->nodes[i], "select pg_is_in_recovery()", v, sizeof v) != 0) {
            pgh__fmt(errbuf, errlen, "external %s (%s:%d): %s", c->nodes[i].name,
                     c->nodes[i].host, c->nodes[i].port, c->nodes[i].err);
            pgh_cluster_free(c);
            return NULL;
        }
        if ((i == 0) != (strcmp(v, "f") == 0)) {
            pgh__fmt(errbuf, errlen, "external %s (%s:%d) is %s", c->nodes[i].name,
                     c->nodes[i].host, c->nodes[i].port,
                     i == 0 ? "in recovery: PGGUARD_TEST_PRIMARY must name the primary"
                            : "not in recovery: PGGUARD_TEST_REPLICAS must name replicas");
            pgh_cluster_free(c);
            return NULL;
        }
    }
    if (load_fixture(&c->nodes[0], errbuf, errlen) != 0) {
        pgh_cluster_free(c);
        return NULL;
    }
    for (int i = 1; i < c->n_nodes; i++) {
        if (pgh_node_wait_replay(&c->nodes[i], &c->nodes[0], PGH_READY_MS) != 0) {
            pgh__fmt(errbuf, errlen, "external %s did not replay the primary's fixture: %s",
                     c->nodes[i].name, c->nodes[i].err);
            pgh_cluster_free(c);
            return NULL;
        }
    }
    return c;
}

pgh_cluster *pgh_cluster_start(int n_replicas, char *errbuf, size_t errlen)
{
    char dummy[8];
    if (!errbuf) {
        errbuf = dummy;
        errlen = sizeof dummy;
    }
    errbuf[0] = '\0';
    const char *ext = getenv("PGGUARD_TEST_PRIMARY");
    if (ext && *ext)
        return start_external(ext, errbuf, errlen);
    if (n_replicas < 0 || n_replicas > PGH_MAX_REPLICAS) {
        pgh__fmt(errbuf, errlen, "n_replicas must be within 0..%d", PGH_MAX_REPLICAS);
        return NULL;
    }
    double t = 0;
    step("", &t);
    const pgh__env *env = pgh__env_get(errbuf, errlen);
    if (!env)
        return NULL;
    step("environment", &t);
    char template_dir[PATH_MAX];
    if (ensure_template(env, template_dir, sizeof template_dir, errbuf, errlen) != 0)
        return NULL;

    pgh_cluster *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->reaper_fd = -1;
    c->n_nodes = 1 + n_replicas;

    char dir[PATH_MAX];
    pgh__fmt(dir, sizeof dir, "%s/pgguard-XXXXXX", env->tmpdir);
    if (!mkdtemp(dir)) {
        pgh__fmt(errbuf, errlen, "mkdtemp %s: %s", dir, strerror(errno));
        free(c);
        return NULL;
    }
    /* the reaper compares this with /proc/PID/cwd: no symlink in it */
    char real[PATH_MAX];
    c->dir = xstrdup(realpath(dir, real) ? real : dir);
    if (env->root && chown(c->dir, env->server_uid, env->server_gid) != 0) {
        pgh__fmt(errbuf, errlen, "chown %s: %s", c->dir, strerror(errno));
        rmdir(c->dir);
        free(c->dir);
        free(c);
        return NULL;
    }
    if (start_reaper(c, errbuf, errlen) != 0) {
        rmdir(c->dir);
        free(c->dir);
        free(c);
        return NULL;
    }
    step("template, dir, reaper", &t);

    /* copy the template once per node, in parallel */
    pgh__proc procs[PGH_MAX_REPLICAS + 1];
    for (int i = 0; i < c->n_nodes; i++) {
        pgh_node *n = &c->nodes[i];
        node_init(c, n, i);
        n->datadir = xasprintf("%s/%s", c->dir, n->name);
        n->logfile = xasprintf("%s/%s.log", c->dir, n->name);
        n->host = xstrdup("127.0.0.1");
        const char *argv[] = {"/bin/cp", "-a", template_dir, n->datadir, NULL};
        if (pgh__spawn(argv, true, &procs[i], errbuf, errlen) != 0) {
            for (int j = 0; j < i; j++)
                pgh__wait(&procs[j], PGH_CMD_TIMEOUT_MS, NULL, 0);
            goto fail;
        }
    }
    int copy_failed = 0;
    for (int i = 0; i < c->n_nodes; i++) {
        char out[1024];
        if (pgh__wait(&procs[i], PGH_CMD_TIMEOUT_MS, out, sizeof out) != 0) {
            pgh__fmt(errbuf, errlen, "copying the template: %s", out);
            copy_failed = 1;
        }
    }
    if (copy_failed)
        goto fail;
    step("copies", &t);

    for (int i = 0; i < c->n_nodes; i++) {
        pgh_node *n = &c->nodes[i];
        char conf[PATH_MAX + 32], text[PATH_MAX * 2];
        pgh__fmt(conf, sizeof conf, "%s/postgresql.conf", n->datadir);
        pgh__fmt(text, sizeof text, "unix_socket_directories = '%s'\ncluster_name = 'pgh-%s'\n",
                 n->datadir, n->name);
        if (append_file(conf, text, errbuf, errlen) != 0)
            goto fail;
        if (i == 0 && set_port(n, pick_port(), errbuf, errlen) != 0)
            goto fail;
    }
    if (start_nodes(c, 0, 1, errbuf, errlen) != 0)
        goto fail;
    step("primary started", &t);

    pgh_node *primary = &c->nodes[0];
    if (c->n_nodes > 1) {
        /* slots first: the replicas start from the template's checkpoint, and
         * a slot keeps the primary from recycling the WAL after it */
        char sql[4096];
        size_t len = (size_t)snprintf(sql, sizeof sql, "select 1");
        for (int i = 1; i < c->n_nodes; i++)
            len += (size_t)snprintf(sql + len, sizeof sql - len,
                                    ", pg_create_physical_replication_slot('%s', true)",
                                    c->nodes[i].name);
        if (pgh_node_exec(primary, sql) != 0) {
            pgh__fmt(errbuf, errlen, "creating slots: %s", primary->err);
            goto fail;
        }
        for (int i = 1; i < c->n_nodes; i++) {
            pgh_node *n = &c->nodes[i];
            char conf[PATH_MAX + 32], sig[PATH_MAX + 32], text[1024];
            pgh__fmt(conf, sizeof conf, "%s/postgresql.conf", n->datadir);
            pgh__fmt(sig, sizeof sig, "%s/standby.signal", n->datadir);
            pgh__fmt(text, sizeof text,
                     "primary_conninfo = 'host=127.0.0.1 port=%d user=postgres "
                     "application_name=%s'\nprimary_slot_name = '%s'\n",
                     primary->port, n->name, n->name);
            if (append_file(conf, text, errbuf, errlen) != 0 ||
                touch_server_file(env, sig, errbuf, errlen) != 0 ||
                set_port(n, pick_port(), errbuf, errlen) != 0)
                goto fail;
        }
    }
    step("slots", &t);
    if (load_fixture(primary, errbuf, errlen) != 0)
        goto fail;
    step("fixture", &t);
    if (c->n_nodes > 1 && start_nodes(c, 1, c->n_nodes, errbuf, errlen) != 0)
        goto fail;
    step("replicas started", &t);
    for (int i = 1; i < c->n_nodes; i++) {
        if (pgh_node_wait_replay(&c->nodes[i], primary, PGH_READY_MS) != 0) {
            pgh__fmt(errbuf, errlen, "%s did not catch up: %s", c->nodes[i].name,
                     c->nodes[i].err);
            goto fail;
        }
    }
    step("replicas caught up", &t);
    return c;

fail:
    fprintf(stderr, "pgh: cluster start failed: %s\n", errbuf);
    pgh_cluster_free(c);
    return NULL;
}

void pgh_cluster_free(pgh_cluster *c)
{
    if (!c)
        return;
    /* The reaper does the teardown in both cases, freed or crashed, so the
     * crash path is the one every test exercises. */
    stop_reaper(c);
    if (!c->external && c->dir && access(c->dir, F_OK) == 0) {
        /* the reaper was killed or failed: do its work here */
        fprintf(stderr, "pgh: %s survived the reaper: stopping the servers here\n", c->dir);
        for (int i = 0; i < c->n_nodes; i++) {
            pgh_node *n = &c->nodes[i];
            if (n->datadir && pgh_node_pid(n)) {
                c->nodes[i].hung = true; /* resume first, whatever we knew */
                pgh_node_stop(n, PGH_STOP_IMMEDIATE);
            }
        }
        rm_rf(c->dir);
    }
    for (int i = 0; i < c->n_nodes; i++)
        node_clear(&c->nodes[i]);
    free(c->dir);
    free(c);
}

bool pgh_cluster_is_external(const pgh_cluster *c)
{
    return c && c->external;
}

int pgh_cluster_replica_count(const pgh_cluster *c)
{
    return c ? c->n_nodes - 1 : 0;
}

pgh_node *pgh_cluster_primary(pgh_cluster *c)
{
    return c ? &c->nodes[0] : NULL;
}

pgh_node *pgh_cluster_replica(pgh_cluster *c, int i)
{
    if (!c || i < 0 || i >= c->n_nodes - 1)
        return NULL;
    return &c->nodes[i + 1];
}

const char *pgh_cluster_dir(const pgh_cluster *c)
{
    return c && !c->external ? c->dir : NULL;
}

void pgh_require_replicas(const pgh_cluster *c, int n)
{
    if (pgh_cluster_replica_count(c) < n)
        pgh_skip("needs %d replicas, the external servers give %d (set PGGUARD_TEST_REPLICAS)",
                 n, pgh_cluster_replica_count(c));
}

void pgh_require_local(const pgh_cluster *c, const char *what)
{
    if (pgh_cluster_is_external(c))
        pgh_skip("%s cannot be injected into external servers", what);
}

/* Append a libpq keyword=value, quoting the value only when it needs it. */
static void append_kv(char **buf, size_t *len, size_t *cap, const char *kw, const char *val)
{
    size_t need = strlen(kw) + 2 * strlen(val) + 8;
    while (*len + need >= *cap) {
        *cap *= 2;
        *buf = realloc(*buf, *cap);
        if (!*buf)
            abort();
    }
    bool quote = !*val || strpbrk(val, " \t\n'\\") != NULL;
    char *p = *buf + *len;
    if (*len)
        *p++ = ' ';
    p += sprintf(p, "%s=", kw);
    if (quote)
        *p++ = '\'';
    for (const char *s = val; *s; s++) {
        if (*s == '\'' || *s == '\\')
            *p++ = '\\';
        *p++ = *s;
    }
    if (quote)
        *p++ = '\'';
    *p = '\0';
    *len = (size_t)(p - *buf);
}

/* host and port first, then every other setting of `conninfo` (user,
 * dbname, password, sslmode...) as key=value */
static char *conninfo_build(const char *conninfo, const char *hosts, const char *ports)
{
    size_t cap = 256, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        abort();
    buf[0] = '\0';
    append_kv(&buf, &len, &cap, "host", hosts);
    append_kv(&buf, &len, &cap, "port", ports);
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &errmsg);
    PQfreemem(errmsg);
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!o->val || !strcmp(o->keyword, "host") || !strcmp(o->keyword, "hostaddr") ||
            !strcmp(o->keyword, "port"))
            continue;
        append_kv(&buf, &len, &cap, o->keyword, o->val);
    }
    PQconninfoFree(opts);
    return buf;
}

char *pgh_cluster_conninfo(pgh_cluster *c)
{
    if (!c)
        return NULL;
    char *hosts = NULL, *ports = NULL;
    size_t hl = 0, pl = 0;
    FILE *hf = open_memstream(&hosts, &hl), *pf = open_memstream(&ports, &pl);
    if (!hf || !pf)
        abort();
    for (int i = 0; i < c->n_nodes; i++) {
        fprintf(hf, "%s%s", i ? "," : "", c->nodes[i].host);
        fprintf(pf, "%s%d", i ? "," : "", c->nodes[i].port);
    }
    fclose(hf);
    fclose(pf);
    char *buf = conninfo_build(c->nodes[0].conninfo, hosts, ports);
    free(hosts);
    free(ports);
    return buf;
}

char *pgh_conninfo_at(const char *conninfo, const char *host, int port)
{
    char ports[16];
    pgh__fmt(ports, sizeof ports, "%d", port);
    return conninfo_build(conninfo, host, ports);
}

/* ----------------------------------------------------------------- nodes */

const char *pgh_node_conninfo(const pgh_node *n)
{
    return n ? n->conninfo : NULL;
}

const char *pgh_node_host(const pgh_node *n)
{
    return n ? n->host : NULL;
}

int pgh_node_port(const pgh_node *n)
{
    return n ? n->port : 0;
}

const char *pgh_node_name(const pgh_node *n)
{
    return n ? n->name : NULL;
}

const char *pgh_node_error(const pgh_node *n)
{
    return n ? n->err : "";
}

static int local_only(pgh_node *n, const char *what)
{
    if (!n)
        return PGH_ERROR;
    n->err[0] = '\0';
    if (n->external)
        return node_fail(n, PGH_ENOTSUP, "%s: not supported on an external server", what);
    return 0;
}

static int signal_tree(pgh_node *n, int sig, bool parent_first)
{
    pid_t pm = pgh_node_pid(n);
    if (!pm)
        return node_fail(n, PGH_ERROR, "the server is not running");
    if (parent_first && kill(pm, sig) != 0)
        return node_fail(n, PGH_ERROR, "kill %d: %s", (int)pm, strerror(errno));
    pid_t kids[1024];
    int nk = proc_children(pm, kids, 1024);
    for (int i = 0; i < nk; i++)
        kill(kids[i], sig);
    if (!parent_first && kill(pm, sig) != 0)
        return node_fail(n, PGH_ERROR, "kill %d: %s", (int)pm, strerror(errno));
    if (sig == SIGSTOP) {
        /* SIGSTOP is asynchronous: return when every process is stopped, so
         * the caller's next connect surely meets a hung server */
        double deadline = pgh_now_ms() + 5000;
        for (int i = -1; i < nk; i++) {
            pid_t p = i < 0 ? pm : kids[i];
            char s;
            while ((s = proc_state(p, NULL)) && s != 'T' && s != 't' && s != 'Z' &&
                   pgh_now_ms() < deadline) {
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
            }
        }
    }
    return 0;
}

int pgh_node_hang(pgh_node *n)
{
    int rc = local_only(n, "hang");
    if (rc)
        return rc;
    /* the postmaster first: once stopped it forks no new child to miss */
    rc = signal_tree(n, SIGSTOP, true);
    if (rc == 0)
        n->hung = true;
    return rc;
}

int pgh_node_resume(pgh_node *n)
{
    int rc = local_only(n, "resume");
    if (rc)
        return rc;
    rc = signal_tree(n, SIGCONT, false);
    if (rc == 0)
        n->hung = false;
    return rc;
}

int pgh_node_stop(pgh_node *n, pgh_stop_mode m)
{
    int rc = local_only(n, "stop");
    if (rc)
        return rc;
    if (n->hung && pgh_node_resume(n) != 0)
        return PGH_ERROR;
    const char *args[] = {"-m", m == PGH_STOP_IMMEDIATE ? "immediate" : "fast", "-w",
                          "-t", PGH_START_TIMEOUT_S, "stop", NULL};
    char out[2048];
    if (pg_ctl(n, args, out, sizeof out) != 0)
        return node_fail(n, PGH_ERROR, "pg_ctl stop failed: %s", out);
    return 0;
}

int pgh_node_start(pgh_node *n)
{
    int rc = local_only(n, "start");
    if (rc)
        return rc;
    pgh__proc p;
    char err[512];
    if (spawn_start(n, &p, err, sizeof err) != 0)
        return node_fail(n, PGH_ERROR, "%s", err);
    return finish_start(n, &p, NULL);
}

int pgh_node_restart(pgh_node *n)
{
    int rc = local_only(n, "restart");
    if (rc)
        return rc;
    if ((rc = pgh_node_stop(n, PGH_STOP_FAST)) != 0)
        return rc;
    return pgh_node_start(n);
}

int pgh_node_promote(pgh_node *n)
{
    int rc = local_only(n, "promote");
    if (rc)
        return rc;
    const char *args[] = {"-w", "-t", PGH_START_TIMEOUT_S, "promote", NULL};
    char out[2048];
    if (pg_ctl(n, args, out, sizeof out) != 0)
        return node_fail(n, PGH_ERROR, "pg_ctl promote failed: %s", out);
    return 0;
}

int pgh_node_pause_replay(pgh_node *n)
{
    int rc = local_only(n, "pause replay");
    if (rc)
        return rc;
    if (pgh_node_exec(n, "select pg_wal_replay_pause()") != 0)
        return PGH_ERROR;
    /* 'pause requested' already holds back the next record */
    char v[64];
    double deadline = pgh_now_ms() + PGH_READY_MS;
    do {
        if (pgh_node_query_value(n, "select pg_get_wal_replay_pause_state()", v, sizeof v) != 0)
            return PGH_ERROR;
        if (strcmp(v, "not paused") != 0)
            return 0;
    } while (pgh_now_ms() < deadline);
    return node_fail(n, PGH_ETIMEDOUT, "replay did not pause");
}

int pgh_node_resume_replay(pgh_node *n)
{
    int rc = local_only(n, "resume replay");
    if (rc)
        return rc;
    return pgh_node_exec(n, "select pg_wal_replay_resume()");
}

/* ----------------------------------------------------- queries on nodes */

static PGconn *node_connect(pgh_node *n)
{
    char err[512];
    PGconn *conn = pgh_connect(n->conninfo, PGH_CONNECT_MS, NULL, err, sizeof err);
    if (!conn)
        node_fail(n, PGH_ERROR, "connect: %s", err);
    return conn;
}

int pgh_node_exec(pgh_node *n, const char *sql)
{
    if (!n)
        return PGH_ERROR;
    n->err[0] = '\0';
    PGconn *conn = node_connect(n);
    if (!conn)
        return PGH_ERROR;
    char err[1024], state[6];
    int rc = pgh_conn_exec(conn, sql, PGH_QUERY_MS, state, err, sizeof err);
    PQfinish(conn);
    if (rc != 0)
        return node_fail(n, rc, "%s", err);
    return 0;
}

int pgh_node_query_value(pgh_node *n, const char *sql, char *out, size_t outlen)
{
    if (!n)
        return PGH_ERROR;
    n->err[0] = '\0';
    if (outlen)
        out[0] = '\0';
    PGconn *conn = node_connect(n);
    if (!conn)
        return PGH_ERROR;
    PGresult *res = NULL;
    char err[1024];
    int rc = pgh__conn_query(conn, sql, PGH_QUERY_MS, &res, NULL, err, sizeof err);
    if (rc != 0)
        node_fail(n, rc, "%s", err);
    else if (PQntuples(res) >= 1 && PQnfields(res) >= 1)
        pgh__fmt(out, outlen, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(conn);
    return rc;
}

int pgh_node_wait_replay(pgh_node *replica, pgh_node *primary, int timeout_ms)
{
    if (!replica || !primary)
        return PGH_ERROR;
    replica->err[0] = '\0';
    char lsn[64], sql[160], v[16];
    if (pgh_node_query_value(primary, "select pg_current_wal_lsn()", lsn, sizeof lsn) != 0)
        return node_fail(replica, PGH_ERROR, "primary: %s", primary->err);
    pgh__fmt(sql, sizeof sql,
             "select coalesce(pg_last_wal_replay_lsn() >= '%s'::pg_lsn, 'n')", lsn);
    double deadline = pgh_now_ms() + timeout_ms;
    PGconn *conn = node_connect(replica);
    if (!conn)
        return PGH_ERROR;
    int rc = PGH_ETIMEDOUT;
    do {
        PGresult *res = NULL;
        char err[1024];
        int qrc = pgh__conn_query(conn, sql, PGH_QUERY_MS, &res, NULL, err, sizeof err);
        if (qrc != 0 || PQntuples(res) != 1) {
            rc = node_fail(replica, PGH_ERROR, "%s", err);
            PQclear(res);
            break;
        }
        pgh__fmt(v, sizeof v, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
        if (v[0] == 't') {
            rc = 0;
            break;
        }
        if (v[0] == 'n') {
            rc = node_fail(replica, PGH_ERROR, "not a replica (pg_last_wal_replay_lsn() is null)");
            break;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    } while (pgh_now_ms() < deadline);
    PQfinish(conn);
    if (rc == PGH_ETIMEDOUT)
        node_fail(replica, rc, "had not replayed %s after %d ms", lsn, timeout_ms);
    return rc;
}

int pgh_node_terminate_backends(pgh_node *n)
{
    if (!n)
        return PGH_ERROR;
    char ver[16];
    if (pgh_node_query_value(n, "select current_setting('server_version_num')::int >= 140000",
                             ver, sizeof ver) != 0)
        return PGH_ERROR;
    /* with a timeout (PostgreSQL 14+) pg_terminate_backend waits until the
     * backend is gone, so the caller's next step meets it dead */
    char sql[512];
    pgh__fmt(sql, sizeof sql,
             "select count(pg_terminate_backend(pid%s)) from pg_stat_activity "
             "where backend_type = 'client backend' and pid <> pg_backend_pid()%s",
             ver[0] == 't' ? ", 10000" : "",
             n->external ? " and usename = current_user" : "");
    char v[32];
    return pgh_node_query_value(n, sql, v, sizeof v);
}
