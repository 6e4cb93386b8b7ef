/*
 * bench-poll: what the wait of a blocking round trip costs, the question
 * behind the waits of src/link.h: a client thread sends 14 bytes over
 * loopback TCP to an echo thread of the same process and waits for the
 * answer, rotating blocks of 20 round trips of three kinds:
 *   - poll without a timeout, then recv (as PQexec);
 *   - poll with a timeout, then recv (a wait that carries its own backstop:
 *     a high-resolution kernel timer armed and cancelled each time);
 *   - recv alone on a blocking socket with SO_RCVTIMEO (the wait in libpq's
 *     own recv, link.h's pgg_recv_mode: one syscall fewer, and its
 *     timeout is a timer-wheel timer).
 * It prints the client thread's CPU per round trip of each, per round, and
 * the median and range of the per-round ratios to the first kind.  Then it
 * times 20 recv timeouts of the slice on a silent socket: how late
 * SO_RCVTIMEO's timer-wheel timer ends a wait (link.h's
 * PGG_LINK_SLICE_LATE_MS must cover it).
 *
 *   bench-poll [rounds] [timeout_ms] [slice_ms]
 *                              (default 20 rounds, 5005 ms, 20 ms)
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
#include <sys/time.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 20
#define BLOCKS 200
#define MAX_ROUNDS 100
#define KINDS 3

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

/* Sorts v. */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    static const char *const kind[KINDS] = {"poll(-1)+recv", "poll(T)+recv",
                                            "recv(SO_RCVTIMEO)"};
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    int timeout = argc > 2 ? atoi(argv[2]) : 5005;
    int slice = argc > 3 ? atoi(argv[3]) : 20;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    int l = socket(AF_INET, SOCK_STREAM, 0), c, s, one = 1;
    struct timeval tv = {.tv_sec = slice / 1000, .tv_usec = slice % 1000 * 1000};
    double ratio[KINDS][MAX_ROUNDS], late[20];
    pthread_t t;

    if (rounds < 1 || rounds > MAX_ROUNDS || slice < 1) {
        fprintf(stderr, "usage: bench-poll [rounds 1-%d] [timeout_ms] [slice_ms >= 1]\n",
                MAX_ROUNDS);
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
    /* Blocking (as created) with a receive timeout: the polls find the
     * answer there, so their recv does not wait either. */
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (pthread_create(&t, NULL, echo, &s) != 0)
        return 1;
    printf("client CPU per loopback round trip, us: %s, %s (T = %d ms), %s (%d ms)\n",
           kind[0], kind[1], timeout, kind[2], slice);
    /* Round 0 warms up and is not counted. */
    for (int r = 0; r <= rounds; r++) {
        int64_t cpu[KINDS] = {0, 0, 0};

        for (int b = 0; b < BLOCKS; b++) {
            int k = (b + r) % KINDS;
            int64_t c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);

            for (int i = 0; i < BLOCK; i++) {
                char buf[16] = "Q\0\0\0\rSELECT 1";
                struct pollfd p = {.fd = c, .events = POLLIN};

                if (send(c, buf, 14, MSG_NOSIGNAL) != 14 ||
                    (k < 2 && poll(&p, 1, k ? timeout : -1) != 1) ||
                    recv(c, buf, sizeof buf, 0) <= 0) {
                    perror("bench-poll: round trip");
                    return 1;
                }
            }
            cpu[k] += clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
        }
        if (r == 0)
            continue;
        printf("round %2d:", r);
        for (int k = 0; k < KINDS; k++) {
            ratio[k][r - 1] = (double)cpu[k] / (double)cpu[0];
            printf("  %.2f", cpu[k] / 1e3 / (BLOCKS / KINDS * BLOCK));
        }
        printf("  x %.3f  x %.3f\n", ratio[1][r - 1], ratio[2][r - 1]);
    }
    for (int k = 1; k < KINDS; k++) {
        double lo, hi, m;

        m = median(ratio[k], rounds);
        lo = ratio[k][0];
        hi = ratio[k][rounds - 1];
        printf("%s x %s: median %.3f (%.3f-%.3f) over %d rounds\n", kind[k], kind[0], m, lo,
               hi, rounds);
    }
    /* How late a slice ends on a silent socket. */
    for (int i = 0; i < 20; i++) {
        char b[16];
        int64_t t0 = clock_ns(CLOCK_MONOTONIC);

        if (recv(c, b, sizeof b, 0) >= 0) {
            fprintf(stderr, "bench-poll: data on a silent socket\n");
            return 1;
        }
        late[i] = (double)(clock_ns(CLOCK_MONOTONIC) - t0) / 1e6 - slice;
    }
    {
        double m = median(late, 20); /* sorts late[] */

        printf("recv timeouts of %d ms on a silent socket, ms late: median %.2f "
               "(%.2f-%.2f) of 20\n",
               slice, m, late[0], late[19]);
    }
    shutdown(c, SHUT_RDWR);
    pthread_join(t, NULL);
    return 0;
}
