/*
 * pgh-cluster: start a harness cluster and keep it up, for running the tests
 * in external mode against it, or for poking at a cluster by hand.
 *
 *   eval "$(pgh-cluster 2 < fifo &)"    # or see tests/harness/external-check
 *
 * Prints `export PGGUARD_TEST_PRIMARY=...` and `export PGGUARD_TEST_REPLICAS=...`
 * lines, then holds the cluster until its standard input reaches EOF or it
 * gets SIGINT/SIGTERM; then it stops everything and removes the directory.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "harness.h"

static void on_signal(int sig)
{
    (void)sig; /* interrupts read() below */
}

int main(int argc, char **argv)
{
    int replicas = argc > 1 ? atoi(argv[1]) : 2;
    /* this process starts the servers: it is not itself in external mode */
    unsetenv("PGGUARD_TEST_PRIMARY");
    unsetenv("PGGUARD_TEST_REPLICAS");
    char err[2048];
    pgh_cluster *c = pgh_cluster_start(replicas, err, sizeof err);
    if (!c) {
        fprintf(stderr, "pgh-cluster: %s\n", err);
        return 1;
    }
    printf("export PGGUARD_TEST_PRIMARY='%s'\n", pgh_node_conninfo(pgh_cluster_primary(c)));
    printf("export PGGUARD_TEST_REPLICAS='");
    for (int i = 0; i < pgh_cluster_replica_count(c); i++)
        printf("%s%s", i ? "," : "", pgh_node_conninfo(pgh_cluster_replica(c, i)));
    printf("'\n");
    fflush(stdout);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    char buf[256];
    while (read(0, buf, sizeof buf) > 0)
        ;
    pgh_cluster_free(c);
    return 0;
}
