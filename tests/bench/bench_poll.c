/*
 * bench-poll: what a poll timeout costs a blocking round trip, the
 * question behind the watchdog's waits (src/watchdog.h): a client thread
 * sends 14 bytes over loopback TCP to an echo thread of the same process
 * and waits for the answer in poll, alternating blocks of 20 round trips
 * that poll without a timeout (as PQexec) and with one (as a wait that
 * carries its own backstop: a kernel timer armed and cancelled each time).
 * It prints the client thread's CPU per round trip of each, per round, and
 * the median and range of the per-round ratios.
 *
 *   bench-poll [rounds] [timeout_ms]      (default 20 rounds, 5005 ms)
 *
 * Not a meson test: it reports, asserts nothing.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 20
#define BLOCKS 200
#define MAX_ROUNDS 100

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *echo(void *arg)
{
    int fd = *(int *)arg;
    char b[64];
    ssize_t n;

    while ((n = recv(fd, b, sizeof b, 0)) > 0)
        if (send(fd, b, (size_t)n, MSG_NOSIGNAL) != n)
            break;
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    int timeout = argc > 2 ? atoi(argv[2]) : 5005;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    int l = socket(AF_INET, SOCK_STREAM, 0), c, s, one = 1;
    double ratio[MAX_ROUNDS];
    pthread_t t;

    if (rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "usage: bench-poll [rounds 1-%d] [timeout_ms]\n", MAX_ROUNDS);
        return 2;
    }
    if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&sa, &sl) != 0) {
        perror("bench-poll: listen");
        return 1;
    }
    c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        (s = accept(l, NULL, NULL)) < 0) {
        perror("bench-poll: connect");
        return 1;
    }
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (pthread_create(&t, NULL, echo, &s) != 0)
        return 1;
    printf("client CPU per loopback round trip, us: poll(-1) against poll(%d)\n", timeout);
    /* Round 0 warms up and is not counted. */
    for (int r = 0; r <= rounds; r++) {
        int64_t cpu[2] = {0, 0};

        for (int b = 0; b < BLOCKS; b++) {
            int timed = (b + r) & 1;
            int64_t c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);

            for (int i = 0; i < BLOCK; i++) {
                char buf[16] = "Q\0\0\0\rSELECT 1";
                struct pollfd p = {.fd = c, .events = POLLIN};

                if (send(c, buf, 14, MSG_NOSIGNAL) != 14 ||
                    poll(&p, 1, timed ? timeout : -1) != 1 ||
                    recv(c, buf, sizeof buf, 0) <= 0) {
                    perror("bench-poll: round trip");
                    return 1;
                }
            }
            cpu[timed] += clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
        }
        if (r == 0)
            continue;
        ratio[r - 1] = (double)cpu[1] / (double)cpu[0];
        printf("round %2d: %.2f  %.2f  x %.3f\n", r, cpu[0] / 1e3 / (BLOCKS / 2 * BLOCK),
               cpu[1] / 1e3 / (BLOCKS / 2 * BLOCK), ratio[r - 1]);
    }
    qsort(ratio, (size_t)rounds, sizeof *ratio, cmp);
    printf("with a timeout x without: median %.3f (%.3f-%.3f) over %d rounds\n",
           rounds % 2 ? ratio[rounds / 2] : (ratio[rounds / 2 - 1] + ratio[rounds / 2]) / 2,
           ratio[0], ratio[rounds - 1], rounds);
    shutdown(c, SHUT_RDWR);
    pthread_join(t, NULL);
    return 0;
}
