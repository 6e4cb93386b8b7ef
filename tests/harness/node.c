/* One server: its faults (through pg_ctl and signals) and its queries. */
#include "harness_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int pgh__node_fail(pgh_node *n, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pgh__vfmt(n->err, sizeof n->err, fmt, ap);
    va_end(ap);
    fprintf(stderr, "pgh: %s: %s\n", n->name, n->err);
    return code;
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

int pgh__node_spawn_start(pgh_node *n, pgh__proc *p, char *err, size_t errlen)
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

int pgh__node_finish_start(pgh_node *n, pgh__proc *p, bool *port_taken)
{
    char out[2048], tail[2048];
    int rc = pgh__wait(p, PGH_CMD_TIMEOUT_MS, out, sizeof out);
    if (port_taken)
        *port_taken = false;
    if (rc == 0)
        return 0;
    pgh__log_tail(n->logfile, tail, sizeof tail);
    if (port_taken)
        *port_taken = pgh__file_contains(n->logfile, "could not bind") ||
                      pgh__file_contains(n->logfile, "could not create any TCP/IP sockets");
    return pgh__node_fail(n, PGH_ERROR, "pg_ctl start failed: %s\nserver log:\n%s", out, tail);
}

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

const char *pgh_node_datadir(const pgh_node *n)
{
    return n && !n->external ? n->datadir : NULL;
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
        return pgh__node_fail(n, PGH_ENOTSUP, "%s: not supported on an external server", what);
    return 0;
}

static int signal_tree(pgh_node *n, int sig, bool parent_first)
{
    pid_t pm = pgh_node_pid(n);
    if (!pm)
        return pgh__node_fail(n, PGH_ERROR, "the server is not running");
    if (parent_first && kill(pm, sig) != 0)
        return pgh__node_fail(n, PGH_ERROR, "kill %d: %s", (int)pm, strerror(errno));
    pid_t kids[1024];
    int nk = proc_children(pm, kids, 1024);
    for (int i = 0; i < nk; i++)
        kill(kids[i], sig);
    if (!parent_first && kill(pm, sig) != 0)
        return pgh__node_fail(n, PGH_ERROR, "kill %d: %s", (int)pm, strerror(errno));
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
        return pgh__node_fail(n, PGH_ERROR, "pg_ctl stop failed: %s", out);
    return 0;
}

int pgh_node_start(pgh_node *n)
{
    int rc = local_only(n, "start");
    if (rc)
        return rc;
    pgh__proc p;
    char err[512];
    if (pgh__node_spawn_start(n, &p, err, sizeof err) != 0)
        return pgh__node_fail(n, PGH_ERROR, "%s", err);
    return pgh__node_finish_start(n, &p, NULL);
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
        return pgh__node_fail(n, PGH_ERROR, "pg_ctl promote failed: %s", out);
    return 0;
}

int pgh_node_rebuild_replica(pgh_node *n, pgh_node *source)
{
    int rc = local_only(n, "rebuild");
    if (rc)
        return rc;
    if (!source || source->external)
        return pgh__node_fail(n, PGH_ENOTSUP, "rebuild: the source must be a local node");
    if (pgh_node_pid(n) && (rc = pgh_node_stop(n, PGH_STOP_IMMEDIATE)) != 0)
        return rc;
    char err[512];
    const pgh__env *env = pgh__env_get(err, sizeof err);
    if (!env)
        return pgh__node_fail(n, PGH_ERROR, "%s", err);
    /* a slot of that name left by an earlier rebuild would make -C fail */
    char sql[256];
    pgh__fmt(sql, sizeof sql,
             "select count(pg_drop_replication_slot(slot_name)) from pg_replication_slots "
             "where slot_name = '%s'", n->name);
    if (pgh_node_exec(source, sql) != 0)
        return pgh__node_fail(n, PGH_ERROR, "dropping the old slot: %s", source->err);
    if (pgh__rm_rf(n->datadir) != 0)
        return pgh__node_fail(n, PGH_ERROR, "could not remove %s", n->datadir);
    char tool[PATH_MAX + 32], dsn[256], out[2048];
    pgh__fmt(tool, sizeof tool, "%s/pg_basebackup", env->bindir);
    pgh__fmt(dsn, sizeof dsn, "host=%s port=%d user=postgres application_name=%s", source->host,
             source->port, n->name);
    const char *argv[] = {tool, "-d", dsn, "-D", n->datadir, "-R", "-X", "stream",
                          "-c", "fast", "-C", "-S", n->name, NULL};
    if (pgh__run(argv, true, PGH_CMD_TIMEOUT_MS, out, sizeof out) != 0)
        return pgh__node_fail(n, PGH_ERROR, "pg_basebackup failed: %s", out);
    /* pg_basebackup copies the source's socket lock files (its sockets live
     * in its data directory); a stale one of our port would stop the start */
    DIR *d = opendir(n->datadir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strncmp(e->d_name, ".s.PGSQL.", 9) == 0) {
                char path[PATH_MAX + 300];
                pgh__fmt(path, sizeof path, "%s/%s", n->datadir, e->d_name);
                unlink(path);
            }
        }
        closedir(d);
    }
    /* the copy carries the source's port, socket directory and name; the
     * last setting in the file wins (-R put primary_conninfo and the slot in
     * postgresql.auto.conf, which is read after postgresql.conf) */
    char conf[PATH_MAX + 32], text[PATH_MAX + 128];
    pgh__fmt(conf, sizeof conf, "%s/postgresql.conf", n->datadir);
    pgh__fmt(text, sizeof text,
             "port = %d\nunix_socket_directories = '%s'\ncluster_name = 'pgh-%s'\n", n->port,
             n->datadir, n->name);
    if (pgh__append_file(conf, text, err, sizeof err) != 0)
        return pgh__node_fail(n, PGH_ERROR, "%s", err);
    n->hung = false;
    return pgh_node_start(n);
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
    return pgh__node_fail(n, PGH_ETIMEDOUT, "replay did not pause");
}

int pgh_node_resume_replay(pgh_node *n)
{
    int rc = local_only(n, "resume replay");
    if (rc)
        return rc;
    return pgh_node_exec(n, "select pg_wal_replay_resume()");
}

static PGconn *node_connect(pgh_node *n)
{
    char err[512];
    PGconn *conn = pgh_connect(n->conninfo, PGH_CONNECT_MS, NULL, err, sizeof err);
    if (!conn)
        pgh__node_fail(n, PGH_ERROR, "connect: %s", err);
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
        return pgh__node_fail(n, rc, "%s", err);
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
        pgh__node_fail(n, rc, "%s", err);
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
        return pgh__node_fail(replica, PGH_ERROR, "primary: %s", primary->err);
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
            rc = pgh__node_fail(replica, PGH_ERROR, "%s", err);
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
            rc = pgh__node_fail(replica, PGH_ERROR, "not a replica (pg_last_wal_replay_lsn() is null)");
            break;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    } while (pgh_now_ms() < deadline);
    PQfinish(conn);
    if (rc == PGH_ETIMEDOUT)
        pgh__node_fail(replica, rc, "had not replayed %s after %d ms", lsn, timeout_ms);
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
             n->external ? " and usename = current_user"
                           " and application_name = current_setting('application_name')"
                         : "");
    char v[32];
    return pgh_node_query_value(n, sql, v, sizeof v);
}
