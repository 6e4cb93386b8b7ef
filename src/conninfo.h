/*
 * Internal: splitting a multi-host libpq conninfo (key=value or URI) into
 * one parameter set per host, exactly as libpq pairs its host, hostaddr and
 * port lists, so that each host can be connected, pooled and guarded on its
 * own with PQconnectStartParams(keys, vals, 0).
 */
#ifndef PGG_CONNINFO_H
#define PGG_CONNINFO_H

#include <stdbool.h>

#include "pgguard.h"

/* More hosts than this is a configuration error (a fleet, not a cluster). */
#define PGG_MAX_HOSTS 64

/* One server of the conninfo, in conninfo order. */
typedef struct pgg_host_spec {
    /* "host:port" for errors, stats and events: "[::1]:5432" for an IPv6
     * address, "/socket/dir:5432" for a Unix-domain socket.  Never holds a
     * password. */
    char *name;
    /* NULL-terminated, ready for PQconnectStartParams(keys, vals, 0): this
     * host's single host / hostaddr / port, and every other keyword of the
     * conninfo (user, dbname, password, sslmode, ...).  Owned here. */
    const char **keys;
    const char **vals;
    int nparams;       /* entries before the terminating NULL */
    bool unix_socket;  /* reached through a socket directory */
    /* libpq looks a name up to connect (getaddrinfo, inside
     * PQconnectStartParams: it blocks): a host name without hostaddr, or
     * a service file's host; not a numeric address or a socket. */
    bool lookup;
} pgg_host_spec;

/*
 * Parse conninfo and split it into hosts.  On success *out is an array of
 * *n specs (1 <= *n <= PGG_MAX_HOSTS), freed with pgg__host_specs_free().
 * On failure nothing is allocated and *err (PGG_ECONFIG / PGG_ENOMEM) holds
 * a message that never contains a password or the raw conninfo.
 *
 * Where libpq would take host, hostaddr or port from the environment
 * (PGHOST, PGHOSTADDR, PGPORT) because the conninfo does not give them, the
 * environment is read here, at parse time, so that a list in PGHOST splits
 * like one in the conninfo.  With a service (the "service" keyword or
 * PGSERVICE), nothing is read here: libpq resolves the service file when it
 * connects, and the conninfo counts as one host.
 */
int pgg__conninfo_split(const char *conninfo, pgg_host_spec **out, int *n,
                        pgg_error *err);

/*
 * Whether libpq accepts host spec h (the index-th, from 0) as a connect's
 * options, asked without a network round trip: PQconnectStartParams with
 * the host replaced by a socket path no server can listen on (under
 * /dev/null), so that libpq judges every other option (sslmode, gssencmode,
 * channel_binding, ssl_*_protocol_version, a service that is not defined,
 * ...) as it would at each connect, then fails on that path; and hostaddr
 * parsed as libpq parses it (a numeric address).  An option libpq rejects
 * would fail every connect to the host as a connection failure and open
 * its breaker on a configuration error: PGG_ECONFIG here instead, with
 * libpq's message (it names the option), never a password.  Host,
 * hostaddr and port are the check's own (conninfo.c, CHECK_HOSTS): a
 * list of them in the environment or a service file is not judged against
 * the check's host, and nothing is sent, whatever PGHOSTADDR says.
 */
int pgg__host_spec_check(const pgg_host_spec *h, int index, pgg_error *err);

/* Free n specs and the array.  Accepts NULL. */
void pgg__host_specs_free(pgg_host_spec *specs, int n);

/* A deep copy of n specs (NULL for n == 0); PGG_ENOMEM on failure. */
int pgg__host_specs_copy(const pgg_host_spec *src, int n,
                         pgg_host_spec **out);

/*
 * A malloc'd copy of conninfo with every value libpq would store as
 * password or sslpassword replaced by REDACTED, in key=value and URI forms
 * alike (found by reading the text as libpq 15 does: conninfo_scan.h);
 * NULL when out of memory.  PQconninfoParse reads the copy as it reads the
 * original on every other keyword.  A text libpq rejects comes back as a
 * fixed text that libpq rejects too: where its password was meant to be
 * cannot be known.
 */
char *pgg__conninfo_redact(const char *conninfo);

#endif
