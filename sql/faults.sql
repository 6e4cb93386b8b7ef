-- pgguard fault helpers: server-side faults a test asks for in SQL.
-- Loaded with fixture.sql (same rules: idempotent, plain SQL).

-- Raise an ERROR with the given SQLSTATE, e.g. pgg_raise('57P01') looks to
-- the client like a shutdown, pgg_raise('23505') like a constraint violation.
-- The session stays usable afterwards: only the SQLSTATE is borrowed.
CREATE OR REPLACE FUNCTION pgg_raise(sqlstate text, msg text DEFAULT 'raised by pgg_raise')
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = msg;
END
$$;

-- Sleep, then return the seconds asked for: a slow query on demand.
CREATE OR REPLACE FUNCTION pgg_sleep(seconds float8)
RETURNS float8
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(seconds);
    RETURN seconds;
END
$$;

-- Terminate every other client backend of the current user (all databases),
-- waiting until they are gone; returns how many.  Replication connections
-- and other users' sessions are left alone.
CREATE OR REPLACE FUNCTION pgg_terminate_others()
RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    n int := 0;
    p int;
BEGIN
    FOR p IN
        SELECT pid FROM pg_stat_activity
        WHERE usename = current_user
          AND backend_type = 'client backend'
          AND pid <> pg_backend_pid()
    LOOP
        IF pg_terminate_backend(p, 10000) THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;
