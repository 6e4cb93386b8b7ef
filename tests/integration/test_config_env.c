/*
 * pgg_config_from_env against a real server: PGGUARD_SERVERS and
 * PGGUARD_OPTIONS make a working pool; errors name the variable and never
 * the password; unset variables change nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "pool_util.h"

static void clear_env(void)
{
    unsetenv("PGGUARD_SERVERS");
    unsetenv("PGGUARD_OPTIONS");
}

Test(config_env, servers_and_options_from_the_environment_make_a_working_pool)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_error e;
    char v[64];

    clear_env();
    cr_assert_eq(setenv("PGGUARD_SERVERS", pgh_node_conninfo(pgh_cluster_primary(c)), 1), 0);
    cr_assert_eq(setenv("PGGUARD_OPTIONS", "pool_max=2\ncall_timeout_ms=4321 # from the env", 1),
                 0);
    pgg_config *cfg = pgg_config_new();
    cr_assert_not_null(cfg);
    /* The environment wins over what the program set before. */
    cr_assert_eq(pgg_config_set(cfg, "pool_max", "9", &e), PGG_OK);
    cr_assert_eq(pgg_config_set(cfg, "health_interval_ms", "100", &e), PGG_OK);
    cr_assert_eq(pgg_config_from_env(cfg, &e), PGG_OK, "%s", e.message);
    cr_assert_eq(pgg_config_get(cfg, "pool_max", v, sizeof v, &e), PGG_OK);
    cr_expect_str_eq(v, "2");
    cr_assert_eq(pgg_config_get(cfg, "call_timeout_ms", v, sizeof v, &e), PGG_OK);
    cr_expect_str_eq(v, "4321");
    cr_assert_eq(pgg_config_get(cfg, "health_interval_ms", v, sizeof v, &e), PGG_OK);
    cr_expect_str_eq(v, "100", "a key the environment does not name changed");

    pgg_pool *p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    cr_assert_not_null(p, "%s", e.message);
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    read_ok(p, PGG_WRITE, "SELECT count(*) FROM pgg_items", 0);
    clear_env();
    end_test(p, c);
}

Test(config_env, unset_or_empty_variables_change_nothing)
{
    pgg_error e;
    char v[64];

    clear_env();
    pgg_config *cfg = pgg_config_new();
    cr_assert_not_null(cfg);
    cr_assert_eq(pgg_config_set(cfg, "pool_max", "7", &e), PGG_OK);
    cr_assert_eq(pgg_config_from_env(cfg, &e), PGG_OK, "%s", e.message);
    cr_assert_eq(setenv("PGGUARD_OPTIONS", "", 1), 0);
    cr_assert_eq(pgg_config_from_env(cfg, &e), PGG_OK, "%s", e.message);
    cr_assert_eq(pgg_config_get(cfg, "pool_max", v, sizeof v, &e), PGG_OK);
    cr_expect_str_eq(v, "7");
    /* Still no servers: the pool says so. */
    cr_expect_null(pgg_pool_new(cfg, &e));
    cr_expect_eq(e.code, PGG_ECONFIG);
    cr_expect_eq(pgg_config_from_env(NULL, &e), PGG_EINVAL);
    pgg_config_free(cfg);
    clear_env();
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

Test(config_env, errors_name_the_variable_and_never_the_password)
{
    pgg_error e;

    clear_env();
    pgg_config *cfg = pgg_config_new();
    cr_assert_not_null(cfg);
    cr_assert_eq(setenv("PGGUARD_SERVERS",
                        "host=127.0.0.1 port=1 password=sekrit-env target_session_attrs=read-write", 1),
                 0);
    cr_expect_eq(pgg_config_from_env(cfg, &e), PGG_ECONFIG);
    cr_expect_eq(strncmp(e.message, "PGGUARD_SERVERS: ", 17), 0, "%s", e.message);
    cr_expect_null(strstr(e.message, "sekrit"), "password in the message: %s", e.message);

    unsetenv("PGGUARD_SERVERS");
    cr_assert_eq(setenv("PGGUARD_OPTIONS", "pool_max=3 pool_maxx=4", 1), 0);
    cr_expect_eq(pgg_config_from_env(cfg, &e), PGG_ECONFIG);
    cr_expect_eq(strncmp(e.message, "PGGUARD_OPTIONS: ", 17), 0, "%s", e.message);
    cr_expect_not_null(strstr(e.message, "pool_maxx"), "%s", e.message);
    char v[16];
    cr_assert_eq(pgg_config_get(cfg, "pool_max", v, sizeof v, &e), PGG_OK);
    cr_expect_str_eq(v, "3", "the pair before the bad one was not applied");
    pgg_config_free(cfg);
    clear_env();
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}
