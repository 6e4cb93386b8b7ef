/* Small file and memory helpers shared by the harness's files. */
#include "harness_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *pgh__xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d)
        abort();
    return d;
}

char *pgh__xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

int pgh__rm_rf(const char *path)
{
    const char *argv[] = {"/bin/rm", "-rf", "--", path, NULL};
    char out[256];
    return pgh__run(argv, false, PGH_CMD_TIMEOUT_MS, out, sizeof out);
}

/* Append text to a file in a server-owned directory.  Appending keeps the
 * file's owner, so a root-run harness does not leave root-owned files
 * behind for the server to trip on. */
int pgh__append_file(const char *path, const char *text, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) {
        pgh__fmt(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    int e = errno;
    close(fd);
    if (w != (ssize_t)len) {
        pgh__fmt(err, errlen, "%s: %s", path, strerror(e));
        return -1;
    }
    return 0;
}

/* Create an empty file owned by the server user. */
int pgh__touch_server_file(const pgh__env *env, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || fchown(fd, env->server_uid, env->server_gid) != 0) {
        pgh__fmt(err, errlen, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* The last few lines of a server log, for an error message. */
void pgh__log_tail(const char *path, char *out, size_t outlen)
{
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char buf[8192];
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        fseek(f, size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0, SEEK_SET);
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* keep the last 6 lines */
    int lines = 0;
    char *p = buf + n;
    while (p > buf) {
        p--;
        if (*p == '\n' && p != buf + n - 1 && ++lines == 6) {
            p++;
            break;
        }
    }
    pgh__fmt(out, outlen, "%s", p);
}

bool pgh__file_contains(const char *path, const char *needle)
{
    char tail[2048];
    pgh__log_tail(path, tail, sizeof tail);
    return strstr(tail, needle) != NULL;
}
