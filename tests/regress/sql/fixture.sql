-- The fixture the integration tests rely on.
select count(*), min(id), max(id), count(distinct val) from pgg_items;
select id, val from pgg_items where id in (1, 42, 100) order by id;
-- pgg_kv takes upserts
insert into pgg_kv (k, v) values ('regress', 'a')
on conflict (k) do update set v = excluded.v returning k, v;
insert into pgg_kv (k, v) values ('regress', 'b')
on conflict (k) do update set v = excluded.v returning k, v;
select k, v, updated_at <= now() as stamped from pgg_kv where k = 'regress';
delete from pgg_kv where k = 'regress';
