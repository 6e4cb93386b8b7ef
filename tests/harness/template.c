/*
 * The initdb template: initdb (0.5 to 1 s) runs once per machine, server
 * version and settings, into a directory that every node of every cluster
 * copies (0.03 s on tmpfs).  It is kept in the cluster directory's parent.
 */
#include "harness_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

/* FNV-1a: a stable key for the template's name. */
static uint64_t fnv1a(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

int pgh__ensure_template(const pgh__env *env, char *path, size_t pathlen, char *err,
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
        pgh__rm_rf(tmp);
        return -1;
    }
    char conf[PATH_MAX + 32];
    pgh__fmt(conf, sizeof conf, "%s/postgresql.conf", tmp);
    if (pgh__append_file(conf, template_conf, err, errlen) != 0) {
        pgh__rm_rf(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        pgh__rm_rf(tmp);
        if (e != EEXIST && e != ENOTEMPTY) {
            pgh__fmt(err, errlen, "rename %s: %s", path, strerror(e));
            return -1;
        }
    }
    fprintf(stderr, "pgh: initdb template %s made in %.0f ms\n", path, pgh_now_ms() - t0);
    return 0;
}
