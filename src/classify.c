#include "classify.h"

#include <ctype.h>
#include <string.h>

#include "error.h"

_Static_assert(PGG_CLASS__COUNT <= PGG_CLASS_SLOTS,
               "pgg_host_stats.failures has a slot for every class");

/*
 * The built-in table, most specific first.  Everything it does not name is
 * a user error: the host answered, so it is healthy (PGG_CLASS_SUCCESS).
 */
static const pgg_class_rule builtin_rules[] = {
    /* statement_timeout fired on the server: the host is slow. */
    {"57014", PGG_CLASS_TIMEOUT, true},
    /* Shutdown, crash of another backend, still starting up. */
    {"57P01", PGG_CLASS_UNAVAILABLE, true},
    {"57P02", PGG_CLASS_UNAVAILABLE, true},
    {"57P03", PGG_CLASS_UNAVAILABLE, true},
    /* The database went away under us. */
    {"57P04", PGG_CLASS_UNAVAILABLE, true},
    /* idle_session_timeout closed a pooled session: says nothing of the host. */
    {"57P05", PGG_CLASS_IGNORED, true},
    /* Serialization failure, deadlock: the caller's transaction may retry. */
    {"40001", PGG_CLASS_IGNORED, false},
    {"40P01", PGG_CLASS_IGNORED, false},
    {"40003", PGG_CLASS_IGNORED, false},
    {"08", PGG_CLASS_CONNECTION, true},
    {"53", PGG_CLASS_UNAVAILABLE, true},
    {"58", PGG_CLASS_UNAVAILABLE, true},
    {"XX", PGG_CLASS_UNAVAILABLE, true},
};

static const char *const class_names[PGG_CLASS__COUNT] = {
    [PGG_CLASS_SUCCESS] = "success",
    [PGG_CLASS_IGNORED] = "ignored",
    [PGG_CLASS_CONNECTION] = "connection",
    [PGG_CLASS_TIMEOUT] = "timeout",
    [PGG_CLASS_UNAVAILABLE] = "unavailable",
    [PGG_CLASS_WRONG_ROLE] = "wrong_role",
};

const char *pgg_class_name(pgg_class cls)
{
    if ((unsigned)cls < PGG_CLASS__COUNT)
        return class_names[cls];
    return "unknown";
}

int pgg__class_from_name(const char *name, pgg_class *out)
{
    if (!name)
        return PGG_EINVAL;
    for (int i = 0; i < PGG_CLASS__COUNT; i++) {
        if (strcmp(name, class_names[i]) == 0) {
            *out = (pgg_class)i;
            return PGG_OK;
        }
    }
    /* "failure" reads naturally in a config file; it means "unavailable". */
    if (strcmp(name, "failure") == 0) {
        *out = PGG_CLASS_UNAVAILABLE;
        return PGG_OK;
    }
    return PGG_ECONFIG;
}

void pgg__classifier_init(pgg_classifier *c)
{
    memset(c, 0, sizeof *c);
}

static bool valid_sqlstate(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]) && !isupper((unsigned char)s[i]))
            return false;
    }
    return true;
}

int pgg__classifier_override(pgg_classifier *c, const char *sqlstate,
                             pgg_class cls, bool retry, pgg_error *err)
{
    size_t len;

    if (!c || !sqlstate)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "classify: NULL argument");
    len = strlen(sqlstate);
    if ((len != 5 && len != 2) || !valid_sqlstate(sqlstate, len))
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "classify: \"%.16s\" is not a SQLSTATE (five "
                              "characters 0-9/A-Z) or a SQLSTATE class (two)",
                              sqlstate);
    if ((unsigned)cls >= PGG_CLASS__COUNT)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "classify.%s: unknown class %d", sqlstate,
                              (int)cls);
    for (int i = 0; i < c->n; i++) {
        if (strcmp(c->rules[i].sqlstate, sqlstate) == 0) {
            c->rules[i].cls = cls;
            c->rules[i].retry = retry;
            return PGG_OK;
        }
    }
    if (c->n >= PGG_CLASSIFY_MAX_OVERRIDES)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "classify.%s: at most %d overrides", sqlstate,
                              PGG_CLASSIFY_MAX_OVERRIDES);
    memcpy(c->rules[c->n].sqlstate, sqlstate, len + 1);
    c->rules[c->n].cls = cls;
    c->rules[c->n].retry = retry;
    c->n++;
    return PGG_OK;
}

/* Exact code first, then the two-character class. */
static const pgg_class_rule *find_rule(const pgg_class_rule *rules, int n,
                                       const char *sqlstate)
{
    const pgg_class_rule *by_class = NULL;

    for (int i = 0; i < n; i++) {
        if (rules[i].sqlstate[2] == '\0') {
            if (!by_class && memcmp(rules[i].sqlstate, sqlstate, 2) == 0)
                by_class = &rules[i];
        } else if (memcmp(rules[i].sqlstate, sqlstate, 5) == 0) {
            return &rules[i];
        }
    }
    return by_class;
}

static int code_for(pgg_class cls, bool error_result)
{
    switch (cls) {
    case PGG_CLASS_SUCCESS:
    case PGG_CLASS_IGNORED:
        return error_result ? PGG_ESERVER : PGG_OK;
    case PGG_CLASS_CONNECTION:
        return PGG_ECONNECT;
    case PGG_CLASS_TIMEOUT:
        return PGG_ETIMEDOUT;
    case PGG_CLASS_UNAVAILABLE:
        return PGG_EUNAVAILABLE;
    case PGG_CLASS_WRONG_ROLE:
        return PGG_EWRONGROLE;
    case PGG_CLASS__COUNT:
        break;
    }
    return PGG_ESERVER;
}

static bool is_error_status(ExecStatusType status)
{
    return status == PGRES_FATAL_ERROR || status == PGRES_BAD_RESPONSE ||
           status == PGRES_NONFATAL_ERROR;
}

static pgg_verdict verdict(pgg_class cls, bool retry, bool error_result)
{
    pgg_verdict v = {cls, retry, false, code_for(cls, error_result)};
    return v;
}

pgg_verdict pgg__classify(const pgg_classifier *c, pgg_attempt_end end,
                          ExecStatusType status, const char *sqlstate,
                          pgg_intent intent, bool on_standby)
{
    const pgg_class_rule *rule = NULL;
    bool error_result;

    switch (end) {
    case PGG_END_CONNECT_FAILED:
    case PGG_END_NOT_SENT:
    case PGG_END_LOST:
        return verdict(PGG_CLASS_CONNECTION, true, true);
    case PGG_END_DEADLINE:
        return verdict(PGG_CLASS_TIMEOUT, true, true);
    case PGG_END_EXPIRED: {
        /* Time ran out on our side: nothing to say about the host. */
        pgg_verdict v = verdict(PGG_CLASS_IGNORED, false, true);
        v.code = PGG_ETIMEDOUT;
        return v;
    }
    case PGG_END_REFUSED: {
        pgg_verdict v = verdict(PGG_CLASS_IGNORED, false, true);
        v.code = PGG_ESTATE;
        return v;
    }
    case PGG_END_RESULT:
        break;
    }

    error_result = is_error_status(status);
    if (!error_result)
        return verdict(PGG_CLASS_SUCCESS, false, false);

    /* An error libpq made itself (no SQLSTATE): the protocol broke. */
    if (!sqlstate || strlen(sqlstate) != 5)
        return verdict(PGG_CLASS_CONNECTION, true, true);

    if (c)
        rule = find_rule(c->rules, c->n, sqlstate);
    if (rule)
        return verdict(rule->cls, rule->retry, true);

    /* A write refused as read-only: this "primary" is a standby now. */
    if (memcmp(sqlstate, "25006", 5) == 0 && intent == PGG_WRITE) {
        pgg_verdict v = verdict(PGG_CLASS_WRONG_ROLE, false, true);
        v.reprobe_role = true;
        return v;
    }
    /* A recovery conflict cancelled a read on a standby: another host can
     * serve it, and this one is not sick. */
    if (on_standby && intent != PGG_WRITE &&
        (memcmp(sqlstate, "40001", 5) == 0 || memcmp(sqlstate, "40P01", 5) == 0))
        return verdict(PGG_CLASS_IGNORED, true, true);

    rule = find_rule(builtin_rules,
                     (int)(sizeof builtin_rules / sizeof builtin_rules[0]),
                     sqlstate);
    if (rule)
        return verdict(rule->cls, rule->retry, true);
    return verdict(PGG_CLASS_SUCCESS, false, true);
}

pgg_verdict pgg__classify_result(const pgg_classifier *c, pgg_attempt_end end,
                                 const PGresult *res, pgg_intent intent,
                                 bool on_standby)
{
    ExecStatusType status = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    const char *sqlstate;

    /* The common case, without looking up a SQLSTATE there is none of. */
    if (end == PGG_END_RESULT && !is_error_status(status))
        return verdict(PGG_CLASS_SUCCESS, false, false);
    sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return pgg__classify(c, end, status, sqlstate, intent, on_standby);
}

bool pgg__capacity_refusal(const char *sqlstate)
{
    return sqlstate && (strcmp(sqlstate, "53300") == 0 || strcmp(sqlstate, "57P03") == 0);
}

pgg_verdict pgg__classify_connect(const pgg_classifier *c, const char *sqlstate)
{
    const pgg_class_rule *rule = NULL;
    pgg_verdict v;

    if (!sqlstate || strlen(sqlstate) != 5)
        return verdict(PGG_CLASS_CONNECTION, true, true);
    if (c)
        rule = find_rule(c->rules, c->n, sqlstate);
    if (rule)
        return verdict(rule->cls, rule->retry, true);
    /*
     * The server answered and refused this connection's credentials or
     * database: the caller's configuration, the same on every attempt.
     * The host is healthy (it ran the authentication), so its breaker
     * hears nothing: opening it would hide this clear error behind
     * PGG_EOPEN, and a refused startup costs the server one round trip.
     */
    if (memcmp(sqlstate, "28", 2) == 0 || memcmp(sqlstate, "3D000", 5) == 0 ||
        memcmp(sqlstate, "42501", 5) == 0) {
        v = verdict(PGG_CLASS_IGNORED, false, true);
        v.code = PGG_ECONFIG;
        return v;
    }
    /*
     * Too many clients (53300), starting up or shutting down (57P03): the
     * server is alive and answering, it only has no session for us now.
     * That is the caller's bad luck, not the host's failure: the call is
     * told PGG_EUNAVAILABLE at once and may try another host, the breaker
     * hears nothing (an open breaker would outlast the refusal: the first
     * call after a slot frees up would meet PGG_EOPEN), and host.c spaces
     * the next connects to that host out.
     */
    if (pgg__capacity_refusal(sqlstate)) {
        v = verdict(PGG_CLASS_IGNORED, true, true);
        v.code = PGG_EUNAVAILABLE;
        return v;
    }
    /* Shutting down (57P01) and other resource shortages (53xxx): the
     * server is there but cannot take a session now. */
    rule = find_rule(builtin_rules,
                     (int)(sizeof builtin_rules / sizeof builtin_rules[0]),
                     sqlstate);
    if (rule && rule->cls != PGG_CLASS_SUCCESS && rule->cls != PGG_CLASS_IGNORED)
        return verdict(rule->cls, true, true);
    return verdict(PGG_CLASS_CONNECTION, true, true);
}
