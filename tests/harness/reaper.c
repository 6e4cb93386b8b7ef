/*
 * The reaper: teardown that also happens when the test process dies.
 *
 * A small shell script (so that nothing but exec runs in the forked child of
 * a possibly threaded process) reads one end of a socket pair whose other
 * end only the test process holds.  When the test frees the cluster, or
 * dies, the reaper resumes and immediately stops every postmaster found
 * under the cluster's directory, then removes it.
 */
#include "harness_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* $1: the cluster directory.  Blocks until a line or EOF arrives on stdin. */
static const char reaper_script[] =
    "read -r _ || :\n"
    "base=$1\n"
    "pms=\n"
    "for pidfile in \"$base\"/*/postmaster.pid; do\n"
    "  [ -f \"$pidfile\" ] || continue\n"
    "  dir=${pidfile%/postmaster.pid}\n"
    "  read -r pm < \"$pidfile\" || continue\n"
    /* pids are reused: only a process running in that data directory */
    "  [ \"$(readlink \"/proc/$pm/cwd\" 2>/dev/null)\" = \"$dir\" ] || continue\n"
    "  kids=$(grep -l \"^PPid:[[:space:]]*$pm\\$\" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3)\n"
    /* a hung (SIGSTOPped) server must run again to obey the stop */
    "  kill -CONT $pm $kids 2>/dev/null\n"
    "  kill -QUIT $pm 2>/dev/null\n"
    "  pms=\"$pms $pm\"\n"
    "done\n"
    "alive() {\n"
    "  for p in $pms; do\n"
    "    [ -r /proc/$p/status ] && ! grep -q '^State:[[:space:]]*[ZX]' /proc/$p/status 2>/dev/null && return 0\n"
    "  done\n"
    "  return 1\n"
    "}\n"
    "i=0\n"
    "while alive && [ $i -lt 150 ]; do sleep 0.05; i=$((i+1)); done\n"
    "for p in $pms; do\n"
    "  if [ -r /proc/$p/status ] && ! grep -q '^State:[[:space:]]*[ZX]' /proc/$p/status; then\n"
    "    echo \"pgh-reaper: postmaster $p ignored SIGQUIT, killing it\" >&2\n"
    "    kill -KILL $p $(grep -l \"^PPid:[[:space:]]*$p\\$\" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3) 2>/dev/null\n"
    "  fi\n"
    "done\n"
    "rm -rf \"$base\"\n";

int pgh__reaper_start(pgh_cluster *c, char *err, size_t errlen)
{
    /* a socket pair, not a pipe: writing the wake-up line to a reaper that
     * was killed must fail with EPIPE (MSG_NOSIGNAL), not raise SIGPIPE */
    int pfd[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pfd) != 0) {
        pgh__fmt(err, errlen, "socketpair: %s", strerror(errno));
        return -1;
    }
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    pid_t pid = fork();
    if (pid < 0) {
        pgh__fmt(err, errlen, "fork: %s", strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        if (devnull >= 0)
            close(devnull);
        return -1;
    }
    if (pid == 0) {
        /* own session: a signal to the test's process group (meson's timeout,
         * ^C) must not take the reaper down with the test */
        setsid();
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int s = 1; s < 32; s++)
            if (s != SIGKILL && s != SIGSTOP)
                signal(s, SIG_DFL);
        signal(SIGINT, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        if (dup2(pfd[0], 0) < 0 || devnull < 0 || dup2(devnull, 1) < 0)
            _exit(126);
        /* stderr stays: a reaper's complaint belongs in the test's log */
        closefrom(3);
        if (chdir("/") != 0)
            _exit(126);
        execl("/bin/sh", "sh", "-c", reaper_script, "pgh-reaper", c->dir, (char *)NULL);
        _exit(127);
    }
    close(pfd[0]);
    if (devnull >= 0)
        close(devnull);
    c->reaper = pid;
    c->reaper_fd = pfd[1];
    return 0;
}

void pgh__reaper_stop(pgh_cluster *c)
{
    if (c->reaper_fd >= 0) {
        /* a line wakes the reaper even if a forked child still holds the socket */
        ssize_t w = send(c->reaper_fd, "\n", 1, MSG_NOSIGNAL);
        (void)w;
        close(c->reaper_fd);
        c->reaper_fd = -1;
    }
    if (c->reaper > 0) {
        int status;
        while (waitpid(c->reaper, &status, 0) < 0 && errno == EINTR)
            ;
        c->reaper = 0;
    }
}
