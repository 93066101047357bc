-- pgtimewarp store schema, version 1.
--
-- Everything lives in schema pgtimewarp_store so that a store may share a
-- database with other data (the regression suite even shares the source
-- database through a loopback server).  Every table is keyed by
-- (node_id, schema_name, table_name, ...) first, so each one can later be hash
-- distributed or partitioned on those columns; nothing refers to source OIDs.

CREATE SCHEMA pgtimewarp_store;

-- One row per source database whose WAL an agent reads.
CREATE TABLE pgtimewarp_store.nodes (
    node_id         text PRIMARY KEY CHECK (node_id ~ '^[A-Za-z0-9_.-]{1,63}$'),
    database_name   text,
    system_identifier text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Tables whose history is recorded.  relid is a cache the agent refreshes: an
-- OID means nothing after dump/restore, so lookups always go by name.
CREATE TABLE pgtimewarp_store.tracked_relations (
    node_id          text NOT NULL REFERENCES pgtimewarp_store.nodes ON DELETE CASCADE,
    schema_name      text NOT NULL,
    table_name       text NOT NULL,
    relid            oid,
    pk_columns       text[] NOT NULL CHECK (cardinality(pk_columns) > 0),
    tracked_from_lsn pg_lsn NOT NULL,
    tracked_from_ts  timestamptz NOT NULL,
    untracked_lsn    pg_lsn,
    untracked_ts     timestamptz,
    PRIMARY KEY (node_id, schema_name, table_name),
    CHECK ((untracked_lsn IS NULL) = (untracked_ts IS NULL)),
    CHECK (untracked_lsn IS NULL OR untracked_lsn >= tracked_from_lsn)
);

-- Row versions.  A version is visible at LSN L when
--     valid_from_lsn <= L AND (valid_to_lsn IS NULL OR valid_to_lsn > L).
-- pk is the canonical key encoding: the key columns' text output, in primary
-- key order, rendered under fixed settings (see agent/key.ts and
-- pgtimewarp_pk_key() in the extension).  A DELETE or TRUNCATE is recorded as
-- a version with op 'delete'/'truncate' and no row_data (a tombstone), so
-- every key has exactly one open version once it has been seen, and closing
-- "the previous version" is always one UPDATE of the open one.
-- row_data maps column name -> text output of the value (or JSON null), which
-- round-trips every type exactly through its input function.
CREATE TABLE pgtimewarp_store.row_versions (
    node_id        text NOT NULL,
    schema_name    text NOT NULL,
    table_name     text NOT NULL,
    pk             text[] COLLATE "C" NOT NULL,
    valid_from_lsn pg_lsn NOT NULL,
    valid_to_lsn   pg_lsn,
    valid_from_ts  timestamptz NOT NULL,
    valid_to_ts    timestamptz,
    op             text NOT NULL
                   CHECK (op IN ('baseline', 'insert', 'update', 'delete', 'truncate')),
    row_data       jsonb,
    FOREIGN KEY (node_id, schema_name, table_name)
        REFERENCES pgtimewarp_store.tracked_relations ON DELETE CASCADE,
    CHECK (valid_to_lsn > valid_from_lsn),
    CHECK ((valid_to_lsn IS NULL) = (valid_to_ts IS NULL)),
    CHECK ((op IN ('delete', 'truncate')) = (row_data IS NULL)),
    CHECK (row_data IS NULL OR jsonb_typeof(row_data) = 'object'),
    -- No two versions of one key at one LSN; also the as-of probe:
    -- "pk = $k AND valid_from_lsn <= $L ORDER BY valid_from_lsn DESC LIMIT 1".
    PRIMARY KEY (node_id, schema_name, table_name, pk, valid_from_lsn)
);

-- At most one open version per key; also the agent's "close the open
-- version of these keys" lookup.
CREATE UNIQUE INDEX row_versions_one_open_version
    ON pgtimewarp_store.row_versions (node_id, schema_name, table_name, pk)
    WHERE valid_to_lsn IS NULL;

-- Commit LSN <-> commit time, plus heartbeats in idle periods.
--
-- A time t resolves to the last commit, in LSN order, whose commit time is
-- <= t, so every commit made by t is visible.  Commit times are not in LSN
-- order (concurrent commits take their timestamps before they queue for the
-- WAL, and clocks step), so each entry also carries resolve_ts, the earliest
-- commit time at or after its LSN.  resolve_ts never decreases with LSN, and
-- "the highest LSN with commit_ts <= t" is "the highest LSN with
-- resolve_ts <= t": one probe of lsn_time_map_resolve.  The trigger below
-- keeps it right whoever inserts and in whatever order.
CREATE TABLE pgtimewarp_store.lsn_time_map (
    node_id      text NOT NULL REFERENCES pgtimewarp_store.nodes ON DELETE CASCADE,
    lsn          pg_lsn NOT NULL,
    commit_ts    timestamptz NOT NULL,
    resolve_ts   timestamptz NOT NULL,
    is_heartbeat boolean NOT NULL DEFAULT false,
    PRIMARY KEY (node_id, lsn),
    CHECK (resolve_ts <= commit_ts)
);
CREATE INDEX lsn_time_map_resolve
    ON pgtimewarp_store.lsn_time_map (node_id, resolve_ts, lsn);

CREATE FUNCTION pgtimewarp_store.lsn_time_map_resolve_ts()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- not later than any entry after it ...
    NEW.resolve_ts := least(NEW.commit_ts,
        (SELECT m.resolve_ts FROM pgtimewarp_store.lsn_time_map m
          WHERE m.node_id = NEW.node_id AND m.lsn > NEW.lsn
          ORDER BY m.lsn LIMIT 1));
    -- ... and no entry before it is later than it
    UPDATE pgtimewarp_store.lsn_time_map m
       SET resolve_ts = NEW.resolve_ts
     WHERE m.node_id = NEW.node_id AND m.resolve_ts > NEW.resolve_ts AND m.lsn < NEW.lsn;
    RETURN NEW;
END;
$$;

CREATE TRIGGER lsn_time_map_resolve_ts
    BEFORE INSERT ON pgtimewarp_store.lsn_time_map
    FOR EACH ROW EXECUTE FUNCTION pgtimewarp_store.lsn_time_map_resolve_ts();

-- How far the agent has applied the WAL.  History of every tracked table is
-- complete up to confirmed_lsn (commit time confirmed_ts).  Written in the
-- same store transaction as the row versions it covers.
CREATE TABLE pgtimewarp_store.wal_checkpoints (
    node_id       text PRIMARY KEY REFERENCES pgtimewarp_store.nodes ON DELETE CASCADE,
    slot_name     text NOT NULL,
    confirmed_lsn pg_lsn NOT NULL,
    confirmed_ts  timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtimewarp_store.health_events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY,
    node_id     text NOT NULL REFERENCES pgtimewarp_store.nodes ON DELETE CASCADE,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    severity    text NOT NULL CHECK (severity IN ('info', 'warning', 'error')),
    kind        text NOT NULL,
    message     text NOT NULL,
    detail      jsonb,
    PRIMARY KEY (node_id, event_id)
);
CREATE INDEX health_events_recent ON pgtimewarp_store.health_events (node_id, occurred_at);
