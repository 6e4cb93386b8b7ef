-- pgguard test fixture: the tables the integration tests read and write.
-- Loaded by the test harness into every primary it starts or is given, in one
-- transaction: it must stay idempotent (IF NOT EXISTS, ON CONFLICT) because
-- an external server keeps it between runs.  Plain SQL, no psql commands.

-- Read paths: 100 rows that never change.
CREATE TABLE IF NOT EXISTS pgg_items (
    id  int PRIMARY KEY,
    val text NOT NULL
);
INSERT INTO pgg_items (id, val)
SELECT i, 'item-' || i FROM generate_series(1, 100) AS i
ON CONFLICT (id) DO NOTHING;

-- Write paths: tests upsert their own keys.
CREATE TABLE IF NOT EXISTS pgg_kv (
    k          text PRIMARY KEY,
    v          text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
