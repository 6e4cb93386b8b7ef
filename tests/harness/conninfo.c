/* Conninfo strings: multi-host for a cluster, host and port swapped for a
 * proxy, host and port read back for an external node. */
#include "harness_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Host and port of a conninfo, for pgh_node_host/port on external nodes. */
void pgh__node_parse_host_port(pgh_node *n)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(n->conninfo, &errmsg);
    PQfreemem(errmsg);
    const char *host = NULL, *port = NULL;
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!strcmp(o->keyword, "host") && o->val)
            host = o->val;
        else if (!strcmp(o->keyword, "port") && o->val)
            port = o->val;
    }
    if (!host)
        host = getenv("PGHOST");
    if (!port)
        port = getenv("PGPORT");
    n->host = pgh__xstrdup(host ? host : "");
    n->port = port && *port ? atoi(port) : 5432;
    PQconninfoFree(opts);
}

/* Append a libpq keyword=value, quoting the value only when it needs it. */
static void append_kv(char **buf, size_t *len, size_t *cap, const char *kw, const char *val)
{
    size_t need = strlen(kw) + 2 * strlen(val) + 8;
    while (*len + need >= *cap) {
        *cap *= 2;
        *buf = realloc(*buf, *cap);
        if (!*buf)
            abort();
    }
    bool quote = !*val || strpbrk(val, " \t\n'\\") != NULL;
    char *p = *buf + *len;
    if (*len)
        *p++ = ' ';
    p += sprintf(p, "%s=", kw);
    if (quote)
        *p++ = '\'';
    for (const char *s = val; *s; s++) {
        if (*s == '\'' || *s == '\\')
            *p++ = '\\';
        *p++ = *s;
    }
    if (quote)
        *p++ = '\'';
    *p = '\0';
    *len = (size_t)(p - *buf);
}

/* host and port first, then every other setting of `conninfo` (user,
 * dbname, password, sslmode...) as key=value */
static char *conninfo_build(const char *conninfo, const char *hosts, const char *ports)
{
    size_t cap = 256, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        abort();
    buf[0] = '\0';
    append_kv(&buf, &len, &cap, "host", hosts);
    append_kv(&buf, &len, &cap, "port", ports);
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &errmsg);
    PQfreemem(errmsg);
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!o->val || !strcmp(o->keyword, "host") || !strcmp(o->keyword, "hostaddr") ||
            !strcmp(o->keyword, "port"))
            continue;
        append_kv(&buf, &len, &cap, o->keyword, o->val);
    }
    PQconninfoFree(opts);
    return buf;
}

char *pgh_cluster_conninfo(pgh_cluster *c)
{
    if (!c)
        return NULL;
    char *hosts = NULL, *ports = NULL;
    size_t hl = 0, pl = 0;
    FILE *hf = open_memstream(&hosts, &hl), *pf = open_memstream(&ports, &pl);
    if (!hf || !pf)
        abort();
    for (int i = 0; i < c->n_nodes; i++) {
        fprintf(hf, "%s%s", i ? "," : "", c->nodes[i].host);
        fprintf(pf, "%s%d", i ? "," : "", c->nodes[i].port);
    }
    fclose(hf);
    fclose(pf);
    char *buf = conninfo_build(c->nodes[0].conninfo, hosts, ports);
    free(hosts);
    free(ports);
    return buf;
}

char *pgh_conninfo_hosts(const char *conninfo, const char *hosts, const char *ports)
{
    return conninfo_build(conninfo, hosts, ports);
}

char *pgh_conninfo_at(const char *conninfo, const char *host, int port)
{
    char ports[16];
    pgh__fmt(ports, sizeof ports, "%d", port);
    return conninfo_build(conninfo, host, ports);
}
