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

#endif
