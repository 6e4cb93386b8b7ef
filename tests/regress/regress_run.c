/*
 * Run pg_regress over tests/regress against a harness-started server (or the
 * external primary named by PGGUARD_TEST_PRIMARY).
 *
 *   regress_run INPUTDIR OUTPUTDIR SCHEDULE SQLDIR
 *
 * pg_regress recreates its database (pgg_regress) every run: never
 * --use-existing, which can "pass" against a missing database when the
 * expected output captured the error.  The tests load sql/ themselves, from
 * SQLDIR (exported as PGG_SQL_DIR for psql's \getenv).  Exit 0 when every
 * test passed; otherwise the diffs are printed and the exit is 1.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* First line of a command's output; "" on failure. */
static void command_line(const char *cmd, char *out, size_t outlen)
{
    out[0] = '\0';
    FILE *f = popen(cmd, "r");
    if (!f)
        return;
    if (!fgets(out, (int)outlen, f))
        out[0] = '\0';
    pclose(f);
    out[strcspn(out, "\r\n")] = '\0';
}

static void print_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stdout);
    fclose(f);
}

/*
 * pg_regress takes host, port and user as options; every other connection
 * setting of the conninfo (a password, sslmode...) goes through libpq's
 * environment variables, so that it is never on a command line or printed.
 */
static void export_conninfo(const char *conninfo, char *host, char *port, char *user,
                            size_t len)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &errmsg);
    PQfreemem(errmsg);
    snprintf(host, len, "127.0.0.1");
    snprintf(port, len, "5432");
    snprintf(user, len, "postgres");
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!o->val)
            continue;
        if (!strcmp(o->keyword, "host"))
            snprintf(host, len, "%s", o->val);
        else if (!strcmp(o->keyword, "port"))
            snprintf(port, len, "%s", o->val);
        else if (!strcmp(o->keyword, "user"))
            snprintf(user, len, "%s", o->val);
        else if (!strcmp(o->keyword, "dbname"))
            continue; /* pg_regress uses its own database */
        else if (o->envvar)
            setenv(o->envvar, o->val, 1);
    }
    PQconninfoFree(opts);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s INPUTDIR OUTPUTDIR SCHEDULE SQLDIR\n", argv[0]);
        return 2;
    }
    const char *inputdir = argv[1], *outputdir = argv[2], *schedule = argv[3];
    setenv("PGG_SQL_DIR", argv[4], 1);

    char bindir[PATH_MAX], pgxs[PATH_MAX], pg_regress[PATH_MAX + 64];
    command_line("pg_config --bindir", bindir, sizeof bindir);
    const char *override = getenv("PGGUARD_PG_REGRESS");
    if (override && *override) {
        snprintf(pg_regress, sizeof pg_regress, "%s", override);
    } else {
        /* $(dirname $(pg_config --pgxs))/../test/regress/pg_regress */
        command_line("pg_config --pgxs", pgxs, sizeof pgxs);
        snprintf(pg_regress, sizeof pg_regress, "%s/../test/regress/pg_regress", dirname(pgxs));
    }
    if (!bindir[0] || access(pg_regress, X_OK) != 0) {
        fprintf(stderr,
                "pg_regress not found (%s): install postgresql-client-15 and libpq-dev, "
                "or set PGGUARD_PG_REGRESS\n",
                pg_regress);
        return 1;
    }
    /* psql for the tests' background sessions (\!) */
    char path[PATH_MAX * 2];
    const char *oldpath = getenv("PATH");
    snprintf(path, sizeof path, "%s:%s", bindir, oldpath ? oldpath : "/usr/bin:/bin");
    setenv("PATH", path, 1);

    char err[2048];
    pgh_cluster *c = pgh_cluster_start(0, err, sizeof err);
    if (!c) {
        fprintf(stderr, "cluster start: %s\n", err);
        return 1;
    }
    char host[256], port[32], user[128];
    export_conninfo(pgh_node_conninfo(pgh_cluster_primary(c)), host, port, user, sizeof host);
    mkdir(outputdir, 0755);

    char a_bindir[PATH_MAX + 16], a_input[PATH_MAX + 16], a_output[PATH_MAX + 16],
        a_sched[PATH_MAX + 16], a_host[300], a_port[64], a_user[160];
    snprintf(a_bindir, sizeof a_bindir, "--bindir=%s", bindir);
    snprintf(a_input, sizeof a_input, "--inputdir=%s", inputdir);
    snprintf(a_output, sizeof a_output, "--outputdir=%s", outputdir);
    snprintf(a_sched, sizeof a_sched, "--schedule=%s", schedule);
    snprintf(a_host, sizeof a_host, "--host=%s", host);
    snprintf(a_port, sizeof a_port, "--port=%s", port);
    snprintf(a_user, sizeof a_user, "--user=%s", user);
    char *const args[] = {pg_regress, a_bindir, a_input, a_output, a_sched, a_host, a_port,
                          a_user, "--dbname=pgg_regress", NULL};

    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        execv(pg_regress, args);
        fprintf(stderr, "exec %s: %s\n", pg_regress, strerror(errno));
        _exit(127);
    }
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    int ok = pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok) {
        char diffs[PATH_MAX + 32];
        snprintf(diffs, sizeof diffs, "%s/regression.diffs", outputdir);
        printf("==== %s\n", diffs);
        print_file(diffs);
    }
    pgh_cluster_free(c);
    return ok ? 0 : 1;
}
