/*
 * basic: the smallest complete pgguard program.
 *
 * A pool over a primary and a replica, one write, one read, and errors
 * printed the way a real program should print them.
 *
 *   basic "host=127.0.0.1,127.0.0.1 port=5432,5433 user=postgres dbname=postgres"
 *   PGGUARD_SERVERS="postgresql://app@db1,db2/app" basic
 *
 * Any libpq conninfo or URI works; a password in it is used to connect but
 * never appears in a pgguard message.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>

#include "pgguard.h"

/*
 * A call failed either before reaching a server (r is NULL: the bulkhead,
 * the breakers, a deadline, a lost connection) or on the server (r holds
 * the error and e.sqlstate its SQLSTATE).  e says which in both cases.
 */
static void report(const char *what, const pgg_error *e)
{
    fprintf(stderr, "%s failed: %s: %s", what, pgg_err_name(e->code),
            e->message);
    if (e->sqlstate[0])
        fprintf(stderr, " (SQLSTATE %s)", e->sqlstate);
    if (e->host[0])
        fprintf(stderr, " [%s]", e->host);
    fputc('\n', stderr);
}

/* Whether r is an answer the program can use. */
static int ok(const PGresult *r)
{
    return r && (PQresultStatus(r) == PGRES_COMMAND_OK ||
                 PQresultStatus(r) == PGRES_TUPLES_OK);
}

int main(int argc, char **argv)
{
    const char *servers = argc > 1 ? argv[1] : getenv("PGGUARD_SERVERS");
    pgg_error e;
    pgg_info info;
    int status = 1;

    if (!servers || !*servers) {
        fprintf(stderr, "usage: %s CONNINFO (or set PGGUARD_SERVERS), e.g.\n"
                        "  %s \"host=127.0.0.1,127.0.0.1 port=5432,5433 "
                        "user=postgres dbname=postgres\"\n",
                argv[0], argv[0]);
        return 2;
    }

    /* The config is ours until pgg_pool_new() copies it. */
    pgg_config *cfg = pgg_config_new();
    if (!cfg) {
        fputs("out of memory\n", stderr);
        return 1;
    }
    if (pgg_config_set_servers(cfg, servers, &e) != PGG_OK ||
        pgg_config_parse(cfg, "call_timeout_ms=2000 connect_timeout_ms=1000 "
                              "read_your_writes=pool",
                         &e) != PGG_OK) {
        report("configuration", &e);
        pgg_config_free(cfg);
        return 1;
    }
    pgg_pool *pool = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    if (!pool) {
        report("pgg_pool_new", &e);
        return 1;
    }

    /* A write goes to the primary, wherever it is now. */
    PGresult *r = pgg_exec(pool, PGG_WRITE,
                           "CREATE TABLE IF NOT EXISTS pgguard_basic ("
                           " id bigserial PRIMARY KEY, note text NOT NULL,"
                           " at timestamptz NOT NULL DEFAULT now())",
                           NULL, NULL, &e);
    if (!ok(r)) {
        report("create table", &e);
        goto out;
    }
    PQclear(r);
    const char *note[] = {"hello from pgguard"};
    r = pgg_exec_params(pool, PGG_WRITE,
                        "INSERT INTO pgguard_basic (note) VALUES ($1) RETURNING id",
                        1, NULL, note, NULL, NULL, NULL, &info, &e);
    if (!ok(r)) {
        report("insert", &e);
        goto out;
    }
    /* The WAL position that makes the row visible, learnt in the same round
     * trip as the INSERT; another process could wait for it with
     * pgg_call.min_lsn. */
    char lsn[32];
    pgg_lsn_format(info.lsn, lsn, sizeof lsn);
    printf("wrote row %s on %s at %s\n", PQgetvalue(r, 0, 0), info.host, lsn);
    PQclear(r);

    /* A read goes to a healthy replica when there is one.  Replication is
     * asynchronous, but with read_your_writes=pool (set above) every read
     * sees every write this pool acknowledged before it: it goes to a
     * replica that has replayed the INSERT (checked in the same round trip
     * as the read), or waits a little for one, or reads the primary. */
    r = pgg_exec(pool, PGG_READ, "SELECT count(*) FROM pgguard_basic", NULL,
                 &info, &e);
    if (!ok(r)) {
        report("read", &e);
        goto out;
    }
    printf("read %s rows on %s (%d attempt%s)\n", PQgetvalue(r, 0, 0),
           info.host, info.attempts, info.attempts == 1 ? "" : "s");
    status = 0;

out:
    PQclear(r); /* PQclear(NULL) is fine */
    pgg_pool_free(pool);
    return status;
}
