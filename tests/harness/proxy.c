/*
 * TCP fault proxy: one acceptor thread, one thread per connection.
 *
 * The kernel here has no netem, so delay, blackhole, reset and refuse come
 * from this userspace proxy on 127.0.0.1 (and a server's "starting up",
 * which a real one says only for a moment of its start).  Each connection thread polls both
 * sockets and a wake pipe; chunks read from one side wait in a FIFO until
 * their due time, then go to the other side.  A mode change bumps a
 * generation counter and wakes every connection; pgh_proxy_set_mode()
 * returns once each has seen it, so a test's next step meets the new mode.
 *
 * REFUSE closes the listening socket (Linux then answers SYNs with RST) and
 * a later mode opens a new one on the same port.  Meanwhile a second socket,
 * bound to the port with SO_REUSEPORT but never listening, keeps any other
 * program from taking it.  The acceptor thread owns the listening socket:
 * set_mode asks and waits, so no thread closes a descriptor another polls.
 */
#include "harness_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_MAX 16384
/* stop reading a side while this much waits to be forwarded */
#define QUEUE_CAP (1 << 20)

struct chunk {
    struct chunk *next;
    double due;
    size_t len, off;
    char data[];
};

struct queue {
    struct chunk *head, *tail;
    size_t bytes;
    double last_due;
};

struct pconn {
    struct pgh_proxy *p;
    struct pconn *next;
    pthread_t th;
    int cfd, ufd;
    int wake[2];
    bool swallow_only; /* accepted during a blackhole: never forwards */
    int starting_ms;   /* accepted in STARTING: answered 57P03 after it (-1: no) */
    bool finished;
    unsigned seen_gen;
};

struct pgh_proxy {
    char *host;
    int up_port;
    int keep_fd; /* holds the port while refusing */
    int lfd;     /* -1 while refusing */
    int port;
    bool want_listen;
    bool listening;
    int wake[2];
    pthread_t acceptor;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pgh_proxy_mode mode;
    int delay_ms;
    unsigned gen;
    bool stopping;
    struct pconn *conns;
};

static void poke(int fd)
{
    ssize_t w = write(fd, "x", 1);
    (void)w; /* a full pipe already holds a wake-up */
}

static void drain(int fd)
{
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
}

/* Close with SO_LINGER 0: the peer gets RST, not FIN. */
static void close_rst(int fd)
{
    if (fd < 0)
        return;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    int one = 1;
    /* a delay test measures our delay, not Nagle's */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void queue_clear(struct queue *q)
{
    while (q->head) {
        struct chunk *c = q->head;
        q->head = c->next;
        free(c);
    }
    q->tail = NULL;
    q->bytes = 0;
}

static void queue_push(struct queue *q, const char *data, size_t len, double due)
{
    struct chunk *c = malloc(sizeof *c + len);
    if (!c)
        abort();
    /* FIFO even when the delay shrinks meanwhile */
    if (due < q->last_due)
        due = q->last_due;
    q->last_due = due;
    c->next = NULL;
    c->due = due;
    c->len = len;
    c->off = 0;
    memcpy(c->data, data, len);
    if (q->tail)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
    q->bytes += len;
}

/* Write every due chunk; false on a write error. */
static bool queue_flush(struct queue *q, int fd, double now, bool *blocked)
{
    *blocked = false;
    while (q->head && q->head->due <= now) {
        struct chunk *c = q->head;
        ssize_t w = send(fd, c->data + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                *blocked = true;
                return true;
            }
            if (errno == EINTR)
                continue;
            return false;
        }
        c->off += (size_t)w;
        q->bytes -= (size_t)w;
        if (c->off == c->len) {
            q->head = c->next;
            if (!q->head)
                q->tail = NULL;
            free(c);
        }
    }
    return true;
}

static int connect_upstream(const char *host, int port)
{
    char service[16];
    pgh__fmt(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, service, &hints, &res) != 0)
        return -1;
    int fd = -1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* Acknowledge the proxy's mode changes (set_mode waits for every live
 * connection); true when the proxy stops. */
static bool saw_mode(struct pconn *pc)
{
    struct pgh_proxy *p = pc->p;
    pthread_mutex_lock(&p->mu);
    bool stopping = p->stopping;
    if (pc->seen_gen != p->gen) {
        pc->seen_gen = p->gen;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return stopping;
}

static uint32_t be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* STARTING: what a server still in recovery answers a new connection.  "No"
 * to an SSL or GSS encryption request at once; the startup packet, after
 * pc->starting_ms, an ErrorResponse FATAL 57P03; then the connection
 * closes, as the server's backend exits. */
static void answer_starting(struct pconn *pc)
{
    static const char fatal[] = "SFATAL\0VFATAL\0C57P03\0"
                                "Mthe database system is starting up\0";
    unsigned char buf[1024];
    size_t have = 0;
    double due = -1;

    set_nonblock(pc->cfd);
    while (!saw_mode(pc)) {
        double now = pgh_now_ms();
        if (due >= 0 && now >= due) {
            /* 'E', its length, the fields, the terminator */
            unsigned char msg[1 + 4 + sizeof fatal];
            uint32_t len = (uint32_t)(4 + sizeof fatal);
            msg[0] = 'E';
            msg[1] = (unsigned char)(len >> 24);
            msg[2] = (unsigned char)(len >> 16);
            msg[3] = (unsigned char)(len >> 8);
            msg[4] = (unsigned char)len;
            memcpy(msg + 5, fatal, sizeof fatal); /* its NUL ends the fields */
            (void)send(pc->cfd, msg, sizeof msg, MSG_NOSIGNAL);
            return;
        }
        struct pollfd fds[2] = {{.fd = pc->wake[0], .events = POLLIN},
                                {.fd = pc->cfd, .events = POLLIN}};
        int timeout = due < 0 ? -1 : (int)(due - now + 0.999);
        if (poll(fds, 2, timeout) < 0 && errno != EINTR)
            return;
        if (fds[0].revents)
            drain(pc->wake[0]);
        if (!(fds[1].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        ssize_t n = recv(pc->cfd, buf + have, sizeof buf - have, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return;
        if (n < 0)
            continue;
        have += (size_t)n;
        /* every whole packet: a length (itself included), then a code */
        while (have >= 8 && be32(buf) >= 8 && be32(buf) <= have) {
            uint32_t len = be32(buf), code = be32(buf + 4);
            if (len == 8 && (code == 80877103 || code == 80877104))
                (void)send(pc->cfd, "N", 1, MSG_NOSIGNAL);
            else if (due < 0)
                due = pgh_now_ms() + pc->starting_ms;
            memmove(buf, buf + len, have - len);
            have -= len;
        }
        if (have == sizeof buf)
            return; /* not a startup */
    }
}

static void *conn_main(void *arg)
{
    struct pconn *pc = arg;
    struct pgh_proxy *p = pc->p;
    struct queue to_up = {0}, to_client = {0};
    bool c_eof = false, u_eof = false, u_shut = false, c_shut = false;
    bool reset = false;

    if (pc->starting_ms >= 0) {
        answer_starting(pc);
        close(pc->cfd);
        pc->cfd = -1;
        pthread_mutex_lock(&p->mu);
        pc->finished = true;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        return NULL;
    }
    if (!pc->swallow_only) {
        pc->ufd = connect_upstream(p->host, p->up_port);
        if (pc->ufd < 0)
            reset = true; /* upstream refused: so does the proxy, as far as it can */
        else
            set_nonblock(pc->ufd);
    }
    set_nonblock(pc->cfd);

    bool want_out_up = false, want_out_client = false;
    while (!reset) {
        pthread_mutex_lock(&p->mu);
        bool stopping = p->stopping;
        pgh_proxy_mode mode = p->mode;
        int delay = mode == PGH_PROXY_DELAY ? p->delay_ms : 0;
        if (pc->seen_gen != p->gen) {
            pc->seen_gen = p->gen;
            pthread_cond_broadcast(&p->cv);
        }
        pthread_mutex_unlock(&p->mu);
        if (stopping)
            break;
        if (mode == PGH_PROXY_RESET) {
            reset = true;
            break;
        }
        bool swallow = mode == PGH_PROXY_BLACKHOLE || pc->swallow_only;
        if (swallow) {
            queue_clear(&to_up);
            queue_clear(&to_client);
            want_out_up = want_out_client = false;
        }

        double now = pgh_now_ms();
        struct pollfd fds[3] = {{.fd = pc->wake[0], .events = POLLIN}};
        int nfds = 1, ci = -1, ui = -1;
        short cev = 0, uev = 0;
        if (!c_eof && (swallow || to_up.bytes < QUEUE_CAP))
            cev |= POLLIN;
        if (want_out_client)
            cev |= POLLOUT;
        if (pc->ufd >= 0) {
            if (!u_eof && (swallow || to_client.bytes < QUEUE_CAP))
                uev |= POLLIN;
            if (want_out_up)
                uev |= POLLOUT;
        }
        if (cev) {
            ci = nfds;
            fds[nfds++] = (struct pollfd){.fd = pc->cfd, .events = cev};
        }
        if (uev) {
            ui = nfds;
            fds[nfds++] = (struct pollfd){.fd = pc->ufd, .events = uev};
        }
        int timeout = -1;
        const struct queue *qs[2] = {&to_up, &to_client};
        for (int i = 0; i < 2; i++) {
            if (qs[i]->head) {
                int ms = (int)(qs[i]->head->due - now + 0.999);
                if (ms < 0)
                    ms = 0;
                if (timeout < 0 || ms < timeout)
                    timeout = ms;
            }
        }
        if (poll(fds, (nfds_t)nfds, timeout) < 0 && errno != EINTR)
            break;
        if (fds[0].revents)
            drain(pc->wake[0]);

        char buf[CHUNK_MAX];
        bool failed = false;
        if (ci >= 0 && (fds[ci].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = recv(pc->cfd, buf, sizeof buf, 0);
            if (n > 0 && !swallow)
                queue_push(&to_up, buf, (size_t)n, pgh_now_ms() + delay);
            else if (n == 0)
                c_eof = true;
            else if (n < 0 && errno != EAGAIN && errno != EINTR)
                failed = true;
        }
        if (ui >= 0 && (fds[ui].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = recv(pc->ufd, buf, sizeof buf, 0);
            if (n > 0 && !swallow)
                queue_push(&to_client, buf, (size_t)n, pgh_now_ms() + delay);
            else if (n == 0)
                u_eof = true;
            else if (n < 0 && errno != EAGAIN && errno != EINTR)
                failed = true;
        }
        if (failed) {
            /* one side reset: pass the reset on */
            reset = true;
            break;
        }
        if (swallow) {
            /* answer nothing; the client's own deadline ends this */
            if (c_eof)
                break;
            continue;
        }
        now = pgh_now_ms();
        if (pc->ufd >= 0 && !queue_flush(&to_up, pc->ufd, now, &want_out_up)) {
            reset = true;
            break;
        }
        if (!queue_flush(&to_client, pc->cfd, now, &want_out_client)) {
            reset = true;
            break;
        }
        /* pass half-closes on once everything before them went through */
        if (c_eof && !to_up.head && !u_shut && pc->ufd >= 0) {
            shutdown(pc->ufd, SHUT_WR);
            u_shut = true;
        }
        if (u_eof && !to_client.head && !c_shut) {
            shutdown(pc->cfd, SHUT_WR);
            c_shut = true;
        }
        if ((c_eof || pc->ufd < 0) && u_eof && !to_up.head && !to_client.head)
            break;
        if (c_eof && pc->ufd < 0)
            break;
    }
    queue_clear(&to_up);
    queue_clear(&to_client);
    if (reset) {
        close_rst(pc->cfd);
        close_rst(pc->ufd);
    } else {
        close(pc->cfd);
        if (pc->ufd >= 0)
            close(pc->ufd);
    }
    pc->cfd = pc->ufd = -1;
    pthread_mutex_lock(&p->mu);
    pc->finished = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void free_conn(struct pconn *pc)
{
    pthread_join(pc->th, NULL);
    close(pc->wake[0]);
    close(pc->wake[1]);
    free(pc);
}

/* Join the connections that ended; the list would grow for ever otherwise. */
static void reap_finished(struct pgh_proxy *p)
{
    struct pconn *done = NULL;
    pthread_mutex_lock(&p->mu);
    for (struct pconn **pp = &p->conns; *pp;) {
        struct pconn *pc = *pp;
        if (pc->finished) {
            *pp = pc->next;
            pc->next = done;
            done = pc;
        } else {
            pp = &pc->next;
        }
    }
    pthread_mutex_unlock(&p->mu);
    while (done) {
        struct pconn *next = done->next;
        free_conn(done);
        done = next;
    }
}

/* A socket bound to 127.0.0.1:port that shares the port with our others. */
static int bound_socket(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int open_listener(int port)
{
    int fd = bound_socket(port);
    if (fd < 0)
        return -1;
    /* the acceptor polls: accept must not block when a racing connect
     * vanished */
    if (listen(fd, 128) != 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void *acceptor_main(void *arg)
{
    struct pgh_proxy *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        bool stopping = p->stopping;
        if (p->want_listen != p->listening) {
            if (p->want_listen) {
                p->lfd = open_listener(p->port);
                if (p->lfd < 0)
                    fprintf(stderr, "pgh: proxy: listen again on %d: %s\n", p->port,
                            strerror(errno));
            } else {
                close(p->lfd);
                p->lfd = -1;
            }
            p->listening = p->want_listen;
            pthread_cond_broadcast(&p->cv);
        }
        bool listening = p->listening && p->lfd >= 0;
        pthread_mutex_unlock(&p->mu);
        if (stopping)
            break;
        struct pollfd fds[2] = {{.fd = p->wake[0], .events = POLLIN},
                                {.fd = p->lfd, .events = POLLIN}};
        if (poll(fds, listening ? 2 : 1, 1000) < 0 && errno != EINTR)
            break;
        if (fds[0].revents)
            drain(p->wake[0]);
        reap_finished(p);
        if (!listening || !(fds[1].revents & POLLIN))
            continue;
        int cfd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd < 0)
            continue; /* EINVAL right after a REFUSE shutdown, EAGAIN... */
        pthread_mutex_lock(&p->mu);
        pgh_proxy_mode mode = p->mode;
        unsigned gen = p->gen;
        int starting_ms = mode == PGH_PROXY_STARTING ? p->delay_ms : -1;
        pthread_mutex_unlock(&p->mu);
        if (mode == PGH_PROXY_RESET || mode == PGH_PROXY_REFUSE) {
            /* REFUSE: accepted just before the listener went down */
            close_rst(cfd);
            continue;
        }
        struct pconn *pc = calloc(1, sizeof *pc);
        if (!pc || pipe2(pc->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
            free(pc);
            close_rst(cfd);
            continue;
        }
        pc->p = p;
        pc->cfd = cfd;
        pc->ufd = -1;
        pc->swallow_only = mode == PGH_PROXY_BLACKHOLE;
        pc->starting_ms = starting_ms;
        pc->seen_gen = gen;
        pthread_mutex_lock(&p->mu);
        pc->next = p->conns;
        p->conns = pc;
        if (pthread_create(&pc->th, NULL, conn_main, pc) != 0) {
            p->conns = pc->next;
            pthread_mutex_unlock(&p->mu);
            close(pc->wake[0]);
            close(pc->wake[1]);
            free(pc);
            close_rst(cfd);
            continue;
        }
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

pgh_proxy *pgh_proxy_start(const char *host, int port, char *errbuf, size_t errlen)
{
    pgh_proxy *p = calloc(1, sizeof *p);
    if (!p) {
        pgh__fmt(errbuf, errlen, "out of memory");
        return NULL;
    }
    p->host = strdup(host ? host : "127.0.0.1");
    p->up_port = port;
    p->mode = PGH_PROXY_PASS;
    p->keep_fd = bound_socket(0);
    p->lfd = -1;
    struct sockaddr_in sa;
    socklen_t slen = sizeof sa;
    if (!p->host || p->keep_fd < 0 ||
        getsockname(p->keep_fd, (struct sockaddr *)&sa, &slen) != 0 ||
        (p->port = ntohs(sa.sin_port), p->lfd = open_listener(p->port)) < 0 ||
        pipe2(p->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        pgh__fmt(errbuf, errlen, "proxy listen: %s", strerror(errno));
        if (p->lfd >= 0)
            close(p->lfd);
        if (p->keep_fd >= 0)
            close(p->keep_fd);
        free(p->host);
        free(p);
        return NULL;
    }
    p->listening = p->want_listen = true;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->acceptor, NULL, acceptor_main, p) != 0) {
        pgh__fmt(errbuf, errlen, "pthread_create failed");
        close(p->lfd);
        close(p->keep_fd);
        close(p->wake[0]);
        close(p->wake[1]);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        free(p->host);
        free(p);
        return NULL;
    }
    return p;
}

int pgh_proxy_port(const pgh_proxy *p)
{
    return p ? p->port : 0;
}

void pgh_proxy_set_mode(pgh_proxy *p, pgh_proxy_mode m, int delay_ms)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->mode = m;
    p->delay_ms = delay_ms < 0 ? 0 : delay_ms;
    unsigned gen = ++p->gen;
    p->want_listen = m != PGH_PROXY_REFUSE;
    poke(p->wake[1]);
    for (struct pconn *pc = p->conns; pc; pc = pc->next)
        if (!pc->finished)
            poke(pc->wake[1]);
    /* wait until the listener and every live connection run in the new mode
     * (bounded: a test must not hang here) */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    for (;;) {
        bool all = p->listening == p->want_listen;
        for (struct pconn *pc = p->conns; pc; pc = pc->next)
            if (!pc->finished && pc->seen_gen != gen)
                all = false;
        if (all || pthread_cond_timedwait(&p->cv, &p->mu, &until) != 0)
            break;
    }
    pthread_mutex_unlock(&p->mu);
}

void pgh_proxy_free(pgh_proxy *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    poke(p->wake[1]);
    for (struct pconn *pc = p->conns; pc; pc = pc->next)
        poke(pc->wake[1]);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->acceptor, NULL);
    /* the acceptor is gone: the list changes no more */
    while (p->conns) {
        struct pconn *pc = p->conns;
        p->conns = pc->next;
        free_conn(pc);
    }
    if (p->lfd >= 0)
        close(p->lfd);
    close(p->keep_fd);
    close(p->wake[0]);
    close(p->wake[1]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->host);
    free(p);
}
