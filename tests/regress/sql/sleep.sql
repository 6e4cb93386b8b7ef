-- pgg_sleep: returns the seconds asked for, no sooner than that.
select pgg_sleep(0.05) as slept;
do $$
declare
    t0 timestamptz := clock_timestamp();
begin
    perform pgg_sleep(0.2);
    if clock_timestamp() - t0 < interval '0.2 s' then
        raise exception 'pgg_sleep(0.2) woke after %', clock_timestamp() - t0;
    end if;
    raise notice 'slept long enough';
end
$$;
select pgg_sleep(0) as zero;
