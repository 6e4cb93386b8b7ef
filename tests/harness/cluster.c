/*
 * Throwaway clusters: a primary and streaming replicas on 127.0.0.1.
 *
 * Every node is a copy of the initdb template (template.c): the primary
 * starts from it, and a replica is the same copy started with
 * standby.signal, which is a valid cold base backup of the primary (same
 * system identifier, same shutdown checkpoint), so no pg_basebackup is
 * needed.  The primary's slots are created before any replica starts, so
 * the WAL they need is kept.  Teardown is the reaper's (reaper.c).
 */
#include "harness_int.h"

#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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

static int set_port(pgh_node *n, int port, char *err, size_t errlen)
{
    char conf[PATH_MAX + 32], line[PATH_MAX + 128];
    pgh__fmt(conf, sizeof conf, "%s/postgresql.conf", n->datadir);
    /* the last setting in the file wins, so a retry just appends */
    pgh__fmt(line, sizeof line, "port = %d\n", port);
    if (pgh__append_file(conf, line, err, errlen) != 0)
        return -1;
    n->port = port;
    free(n->conninfo);
    n->conninfo = pgh__xasprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres", port);
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
            if (pgh__node_spawn_start(&c->nodes[i], &procs[i], err, errlen) != 0)
                return -1;
        bool taken[PGH_MAX_REPLICAS + 1] = {false};
        for (int i = from; i < to; i++) {
            if (pgh__node_finish_start(&c->nodes[i], &procs[i], &taken[i]) != 0) {
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
                if (pgh__node_spawn_start(&c->nodes[i], &procs[i], err, errlen) != 0)
                    return -1;
                if (pgh__node_finish_start(&c->nodes[i], &procs[i], NULL) != 0) {
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
            names[n++] = pgh__xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);

    size_t cap = 1 << 16, len = 0;
    char *sql = malloc(cap);
    if (!sql)
        abort();
    /* quiet: "already exists, skipping" on every run against a kept server */
    len += (size_t)snprintf(sql, cap,
                            "SET client_min_messages = warning;\nBEGIN;\n"
                            "SELECT pg_advisory_xact_lock(715100);\n");
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

static pgh_cluster *start_external(const char *primary, char *errbuf, size_t errlen)
{
    /* The servers are shared with the test processes running beside this
     * one: every session this process opens (its pools' included, which
     * name no application) carries a name of its own, so that what a test
     * does to "its" sessions (pgh_node_terminate_backends, counts in
     * pg_stat_activity) leaves the neighbours' alone. */
    char app[32];
    snprintf(app, sizeof app, "pgh-test-%ld", (long)getpid());
    setenv("PGAPPNAME", app, 1);

    pgh_cluster *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->external = true;
    c->reaper_fd = -1;
    c->n_nodes = 1;
    node_init(c, &c->nodes[0], 0);
    c->nodes[0].external = true;
    c->nodes[0].conninfo = pgh__xstrdup(primary);

    const char *replicas = getenv("PGGUARD_TEST_REPLICAS");
    if (replicas && *replicas) {
        char *copy = pgh__xstrdup(replicas), *save = NULL;
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
            n->conninfo = pgh__xstrdup(tok);
            c->n_nodes++;
        }
        free(copy);
    }
    for (int i = 0; i < c->n_nodes; i++)
        pgh__node_parse_host_port(&c->nodes[i]);

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
    if (pgh__ensure_template(env, template_dir, sizeof template_dir, errbuf, errlen) != 0)
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
    c->dir = pgh__xstrdup(realpath(dir, real) ? real : dir);
    if (env->root && chown(c->dir, env->server_uid, env->server_gid) != 0) {
        pgh__fmt(errbuf, errlen, "chown %s: %s", c->dir, strerror(errno));
        rmdir(c->dir);
        free(c->dir);
        free(c);
        return NULL;
    }
    if (pgh__reaper_start(c, errbuf, errlen) != 0) {
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
        n->datadir = pgh__xasprintf("%s/%s", c->dir, n->name);
        n->logfile = pgh__xasprintf("%s/%s.log", c->dir, n->name);
        n->host = pgh__xstrdup("127.0.0.1");
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
        if (pgh__append_file(conf, text, errbuf, errlen) != 0)
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
            if (pgh__append_file(conf, text, errbuf, errlen) != 0 ||
                pgh__touch_server_file(env, sig, errbuf, errlen) != 0 ||
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
    pgh__reaper_stop(c);
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
        pgh__rm_rf(c->dir);
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
