/* Internals shared by the harness's files; not for tests. */
#ifndef PGH_HARNESS_INT_H
#define PGH_HARNESS_INT_H

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "harness.h"

/* Facts about this machine, found once per process. */
typedef struct pgh__env {
    bool root;         /* server commands go through runuser */
    uid_t server_uid;  /* owner of the data directories */
    gid_t server_gid;
    char server_user[64];
    char runuser[PATH_MAX];
    char bindir[PATH_MAX];   /* initdb, pg_ctl, postgres */
    char tmpdir[PATH_MAX];   /* where clusters and the template live */
    char version[128];       /* `postgres --version` */
} pgh__env;

/* NULL with the reason in err when the server binaries are missing. */
const pgh__env *pgh__env_get(char *err, size_t errlen);

/* A child process whose stdout and stderr are captured. */
typedef struct pgh__proc {
    pid_t pid;
    int out_fd;
} pgh__proc;

/*
 * Start argv[0] (an absolute path) with stdin from /dev/null, output to a
 * pipe, cwd "/" (the server user may not be able to enter ours), no other
 * inherited descriptor, in its own process group.  When as_server and we are
 * root, through `runuser -u postgres --`.
 */
int pgh__spawn(const char *const argv[], bool as_server, pgh__proc *p,
               char *err, size_t errlen);
/* Collect its output into out (truncated, NUL-terminated) and its exit status;
 * kill its process group at the deadline.  Returns the exit code, or -1 when
 * it was killed, died of a signal or timed out. */
int pgh__wait(pgh__proc *p, int timeout_ms, char *out, size_t outlen);
/* spawn + wait. */
int pgh__run(const char *const argv[], bool as_server, int timeout_ms,
             char *out, size_t outlen);

/* Run sql with a deadline; the last result goes to *last (caller PQclears). */
int pgh__conn_query(PGconn *conn, const char *sql, int timeout_ms, PGresult **last,
                    char sqlstate[6], char *errbuf, size_t errlen);

/* snprintf that never warns about truncation and always terminates. */
void pgh__fmt(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void pgh__vfmt(char *buf, size_t len, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* Set by a test main that has its own way to skip (Criterion's). */
extern void (*pgh__skip_hook)(const char *reason);

/* ---------------------------------------------------- clusters and nodes */

#define PGH_MAX_REPLICAS 8
#define PGH_START_TIMEOUT_S "60"
#define PGH_CMD_TIMEOUT_MS 90000
#define PGH_CONNECT_MS 10000
#define PGH_QUERY_MS 30000
#define PGH_READY_MS 30000

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
    int reaper_fd; /* our end: closing it (or dying) triggers teardown */
};

/* Record why a node function failed (pgh_node_error), print it, return code. */
int pgh__node_fail(pgh_node *n, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* pg_ctl start, split so that several nodes start in parallel. */
int pgh__node_spawn_start(pgh_node *n, pgh__proc *p, char *err, size_t errlen);
/* 0, or fails the node with the server log's tail; *port_taken (may be
 * NULL) tells a lost port apart, for a retry elsewhere. */
int pgh__node_finish_start(pgh_node *n, pgh__proc *p, bool *port_taken);
/* n->host and n->port from n->conninfo. */
void pgh__node_parse_host_port(pgh_node *n);

/* Make the template if needed; its path goes to path. */
int pgh__ensure_template(const pgh__env *env, char *path, size_t pathlen, char *err,
                         size_t errlen);
int pgh__reaper_start(pgh_cluster *c, char *err, size_t errlen);
/* Wake the reaper and wait for its teardown. */
void pgh__reaper_stop(pgh_cluster *c);

/* ---------------------------------------------------------------- helpers */

char *pgh__xstrdup(const char *s);
char *pgh__xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int pgh__rm_rf(const char *path);
int pgh__append_file(const char *path, const char *text, char *err, size_t errlen);
int pgh__touch_server_file(const pgh__env *env, const char *path, char *err, size_t errlen);
void pgh__log_tail(const char *path, char *out, size_t outlen);
bool pgh__file_contains(const char *path, const char *needle);

#endif
