-- pgg_terminate_others: another session of ours, busy in a query, is
-- terminated; this one lives on.  The victim is a background psql, so that its
-- lost connection is not a failure of this test's own psql.
\setenv PGHOST :HOST
\setenv PGPORT :PORT
\setenv PGUSER :USER
\setenv PGDATABASE :DBNAME
\! psql -X -q -c 'select pgg_sleep(60)' >/dev/null 2>&1 &
-- wait (bounded) until the victim runs; pg_stat_activity is a snapshot
-- taken once per transaction unless cleared
do $$
begin
    for i in 1..3000 loop
        perform pg_stat_clear_snapshot();
        exit when exists (select 1 from pg_stat_activity
                          where query like 'select pgg_sleep(60)%' and state = 'active'
                            and pid <> pg_backend_pid());
        perform pg_sleep(0.01);
    end loop;
end
$$;
select count(*) as victims from pg_stat_activity
where query like 'select pgg_sleep(60)%' and pid <> pg_backend_pid();
select pgg_terminate_others() >= 1 as terminated;
-- pgg_terminate_others waits until they are gone
select count(*) as left_over from pg_stat_activity
where query like 'select pgg_sleep(60)%' and pid <> pg_backend_pid();
select 1 as still_here;
