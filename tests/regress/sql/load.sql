-- The files of sql/ load with psql into an empty database, and load again
-- without error: an external server keeps them between runs, and the harness
-- loads them into every primary it is given.
\getenv sqldir PGG_SQL_DIR
-- (the second load's "already exists, skipping" notices name the checkout's
-- path: hidden, errors still show)
set client_min_messages = warning;
\set ECHO none
\i :sqldir/fixture.sql
\i :sqldir/faults.sql
\i :sqldir/fixture.sql
\i :sqldir/faults.sql
\set ECHO all
reset client_min_messages;
select count(*) as items from pgg_items;
select proname, pg_get_function_identity_arguments(oid) as args
from pg_proc where proname like 'pgg\_%' order by proname;
