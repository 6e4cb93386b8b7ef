-- pgg_raise: an ERROR with the SQLSTATE asked for, of any class.
\set SHOW_CONTEXT never
select pgg_raise('57P01', 'pretend the server shuts down');
select pgg_raise('23505');
\set VERBOSITY sqlstate
select pgg_raise('57014', 'statement timeout');
select pgg_raise('53300', 'too many connections');
\set VERBOSITY default
-- every class the classifier cares about, caught in PL/pgSQL
do $$
declare
    s text;
begin
    foreach s in array array['08006', '25006', '40001', '40P01', '53300', '57014',
                             '57P01', '57P02', '57P03', '58000', 'XX000', '22012',
                             '23505', '42601', 'P0001']
    loop
        begin
            perform pgg_raise(s, 'raised ' || s);
        -- OTHERS does not catch 57014 (query_canceled): name it
        exception when query_canceled or others then
            raise notice '% %', sqlstate, sqlerrm;
        end;
    end loop;
end
$$;
-- the session is fine afterwards
select 1 as still_here;
-- a malformed SQLSTATE is the caller's mistake
select pgg_raise('oops');
