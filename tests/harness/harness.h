/*
 * pgguard test harness: throwaway PostgreSQL clusters with real faults.
 *
 * A cluster is one primary and N streaming replicas on 127.0.0.1, each on a
 * free port, with data in a fresh temporary directory; or, when the
 * environment names external servers (PGGUARD_TEST_PRIMARY and optionally
 * PGGUARD_TEST_REPLICAS, comma-separated conninfos), a wrapper around those.
 * The fixture and fault helper SQL of sql/ is loaded into the primary in
 * both cases.
 *
 * Teardown: pgh_cluster_free() stops every server and removes the directory.
 * The same happens when the test process dies without freeing (SIGSEGV,
 * abort, SIGKILL): a reaper process started with the cluster notices and
 * cleans up.
 *
 * Thread safety: a cluster and its nodes are driven from one thread at a
 * time.  A proxy may be reconfigured from any thread.
 *
 * Errors: functions returning int give 0 on success and a negative value on
 * failure: -1 (PGH_ERROR) with the reason printed to stderr and kept in
 * pgh_node_error(), PGH_ENOTSUP when the fault cannot be injected into an
 * external server, PGH_ETIMEDOUT when a bounded wait ran out.
 */
#ifndef PGH_HARNESS_H
#define PGH_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PGH_ERROR (-1)
/* The node is an external server: the harness does not control it. */
#define PGH_ENOTSUP (-2)
/* A bounded wait (replay, query, connect) ran out. */
#define PGH_ETIMEDOUT (-3)

typedef struct pgh_cluster pgh_cluster;
typedef struct pgh_node pgh_node;

typedef enum { PGH_STOP_FAST, PGH_STOP_IMMEDIATE } pgh_stop_mode;

/* ---------------------------------------------------------------- cluster */

/*
 * Start a primary and n_replicas streaming replicas (0 <= n_replicas <= 8),
 * ready when it returns: every server accepts connections, the fixture is
 * loaded and every replica has replayed it.  With PGGUARD_TEST_PRIMARY set,
 * wrap the external servers instead: the replica count is then the number of
 * names in PGGUARD_TEST_REPLICAS, whatever n_replicas asks (a test that needs
 * more calls pgh_require_replicas()).  Returns NULL and fills errbuf on
 * failure.
 */
pgh_cluster *pgh_cluster_start(int n_replicas, char *errbuf, size_t errlen);
/* Stop every server the harness started and remove its directory; waits for
 * both.  External servers are left running.  NULL is fine. */
void pgh_cluster_free(pgh_cluster *c);
bool pgh_cluster_is_external(const pgh_cluster *c);
int pgh_cluster_replica_count(const pgh_cluster *c);
/* The node started as primary (still this node after a promotion). */
pgh_node *pgh_cluster_primary(pgh_cluster *c);
/* Replica i, 0-based; NULL when out of range. */
pgh_node *pgh_cluster_replica(pgh_cluster *c, int i);
/* A multi-host conninfo listing the primary then the replicas, e.g.
 * "host=127.0.0.1,127.0.0.1 port=P1,P2 user=postgres dbname=postgres".
 * malloc'd; the caller frees.  NULL on allocation failure. */
char *pgh_cluster_conninfo(pgh_cluster *c);
/* conninfo (key=value or URI) with its host and port replaced, every other
 * setting kept: e.g. to reach a node through a proxy.  malloc'd. */
char *pgh_conninfo_at(const char *conninfo, const char *host, int port);
/* conninfo with its host and port lists replaced ("a,127.0.0.1", "5432,P"),
 * every other setting kept: a multi-host conninfo with some hosts reached
 * through proxies, external servers included.  malloc'd. */
char *pgh_conninfo_hosts(const char *conninfo, const char *hosts, const char *ports);
/* The temporary directory holding the data directories; NULL when external. */
const char *pgh_cluster_dir(const pgh_cluster *c);
/* Skip the running test (see pgh_skip) unless the cluster has n replicas. */
void pgh_require_replicas(const pgh_cluster *c, int n);
/* Skip the running test when the cluster is external: `what` names the fault. */
void pgh_require_local(const pgh_cluster *c, const char *what);

/* ------------------------------------------------------------------- node */

/* "host=127.0.0.1 port=P user=postgres dbname=postgres", or the external
 * conninfo as given (it may hold a password: never print it). */
const char *pgh_node_conninfo(const pgh_node *n);
const char *pgh_node_host(const pgh_node *n);
int pgh_node_port(const pgh_node *n);
/* "primary", "replica1", "replica2"... */
const char *pgh_node_name(const pgh_node *n);
/* The postmaster's pid, or 0 when it is not running or the node is external. */
pid_t pgh_node_pid(const pgh_node *n);
/* The reason of the last failure of a function on this node ("" if none). */
const char *pgh_node_error(const pgh_node *n);
/* The data directory, also the server's Unix socket directory (so
 * "host=<it> port=<port>" reaches the server without TCP); NULL when
 * external. */
const char *pgh_node_datadir(const pgh_node *n);

/* Faults.  External nodes: PGH_ENOTSUP.  Stop and restart first resume a
 * hung node.  Start and restart wait until the server accepts connections. */
int pgh_node_stop(pgh_node *n, pgh_stop_mode m);
int pgh_node_start(pgh_node *n);
int pgh_node_restart(pgh_node *n);
/* SIGSTOP the postmaster, then each of its children; returns once all of
 * them are stopped.  New connections then hang after the TCP handshake. */
int pgh_node_hang(pgh_node *n);
/* SIGCONT them all. */
int pgh_node_resume(pgh_node *n);
/* Promote a replica; returns once pg_is_in_recovery() is false there. */
int pgh_node_promote(pgh_node *n);
/* Rebuild n as a streaming replica of source after a promotion (the old
 * data directory cannot rejoin without pg_rewind): stop n if it runs,
 * replace its data directory with a pg_basebackup of source (slot and
 * application_name are n's name), keep n's port, and start it.  Returns
 * once it accepts connections; wait for replay separately. */
int pgh_node_rebuild_replica(pgh_node *n, pgh_node *source);
/* Pause / resume WAL replay on a replica; pause returns once replay is
 * paused, so later commits on the primary stay invisible there. */
int pgh_node_pause_replay(pgh_node *n);
int pgh_node_resume_replay(pgh_node *n);

/* Not faults (external nodes too). */
/* Wait until `replica` has replayed the primary's current WAL position, read
 * once at the call.  PGH_ETIMEDOUT after timeout_ms. */
int pgh_node_wait_replay(pgh_node *replica, pgh_node *primary, int timeout_ms);
/* pg_terminate_backend() every client backend but the harness's own; on an
 * external node only those of the connecting user opened by this test
 * process (in external mode the harness names every session of the process,
 * PGAPPNAME=pgh-test-PID, because other test processes share the servers). */
int pgh_node_terminate_backends(pgh_node *n);
/* Run SQL (several statements are fine) on a fresh connection. */
int pgh_node_exec(pgh_node *n, const char *sql);
/* Run a query returning one value on a fresh connection; the value is copied
 * into out (NULL becomes "").  For test setup and checks. */
int pgh_node_query_value(pgh_node *n, const char *sql, char *out, size_t outlen);

/* ------------------------------------------------ bounded client helpers */

/* Connect with PQconnectStart + PQconnectPoll + poll(2), giving up at
 * timeout_ms (libpq's own connect_timeout cannot go below 2 s).  NULL with
 * the reason in errbuf on failure or timeout (*timed_out tells which; it may
 * be NULL). */
PGconn *pgh_connect(const char *conninfo, int timeout_ms, bool *timed_out,
                    char *errbuf, size_t errlen);
/* Send sql and wait for its results until timeout_ms.  Returns 0 when every
 * result succeeded, PGH_ETIMEDOUT at the deadline (the connection is then
 * unusable: the caller closes it), -1 on error; the SQLSTATE of the error,
 * if any, goes to sqlstate (6 bytes; may be NULL), the message to errbuf. */
int pgh_conn_exec(PGconn *conn, const char *sql, int timeout_ms,
                  char sqlstate[6], char *errbuf, size_t errlen);

/* Non-zero when LeakSanitizer (ASan builds) or valgrind (memcheck) finds
 * memory leaked so far, after printing the report; 0 otherwise or when
 * neither is present.  Call at the end of a test, after freeing everything:
 * a leak then fails the test instead of scrolling by. */
int pgh_leak_check(void);

/* Monotonic milliseconds, for measuring in tests. */
double pgh_now_ms(void);

/* ------------------------------------------------------------ fault proxy */

/*
 * A TCP proxy in this process (its own threads), listening on 127.0.0.1 at a
 * free port and forwarding to host:port.  Modes apply to new and existing
 * connections; pgh_proxy_set_mode() returns once every existing connection
 * has switched:
 *   PASS       forward both ways.
 *   DELAY      hold each chunk delay_ms before forwarding it, in each
 *              direction: a request/response round trip gains 2 x delay_ms.
 *   BLACKHOLE  accept and read everything, forward and answer nothing.
 *              Bytes swallowed are lost: a connection that saw a blackhole
 *              is not usable after PASS returns.
 *   RESET      send RST on every existing connection and on each new one.
 *   REFUSE     stop listening (new connects get ECONNREFUSED; the port stays
 *              reserved); existing connections keep forwarding.
 *   STARTING   answer each new connection as a server still in recovery
 *              does: its startup packet (after "no" to an SSL or GSS
 *              request) gets FATAL 57P03 "the database system is starting
 *              up" delay_ms after it came, then the connection closes;
 *              existing connections keep forwarding.
 */
typedef struct pgh_proxy pgh_proxy;
typedef enum {
    PGH_PROXY_PASS,
    PGH_PROXY_DELAY,
    PGH_PROXY_BLACKHOLE,
    PGH_PROXY_RESET,
    PGH_PROXY_REFUSE,
    PGH_PROXY_STARTING
} pgh_proxy_mode;

pgh_proxy *pgh_proxy_start(const char *host, int port, char *errbuf, size_t errlen);
int pgh_proxy_port(const pgh_proxy *p);
/* delay_ms is read in DELAY and STARTING modes only. */
void pgh_proxy_set_mode(pgh_proxy *p, pgh_proxy_mode m, int delay_ms);
/* Close every connection and stop the threads.  NULL is fine. */
void pgh_proxy_free(pgh_proxy *p);

/* ------------------------------------------------------------------ skips */

/* Print the reason and end the running test as skipped: inside a Criterion
 * binary built with the harness's main it is a Criterion skip (and the
 * binary exits 77 when every selected test skipped); elsewhere exit(77). */
void pgh_skip(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;

#ifdef __cplusplus
}
#endif

#endif /* PGH_HARNESS_H */
