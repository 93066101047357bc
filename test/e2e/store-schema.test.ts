// The store schema (migrations/) as applied by migrateStore(), the upgrade
// of a version 1 store that holds history, and the integrity the store's
// constraints guarantee whatever the agent does.

import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import pg from 'pg';
import { migrate } from 'postgres-migrations';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { migrationsDir } from '../../installer/paths.js';
import { migrateStore } from '../../installer/store.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster();

const STORE_TABLES = [
  'health_events',
  'history_gaps',
  'lsn_time_map',
  'nodes',
  'relation_renames',
  'relation_stats',
  'row_versions',
  'skipped_transactions',
  'tracked_relations',
  'wal_checkpoints',
];

async function createDatabase(name: string): Promise<string> {
  await cluster().psql(`CREATE DATABASE ${name}`);
  return cluster().url(name);
}

describe('migrateStore', () => {
  it('creates the store tables in a fresh database, then has nothing left to apply', async () => {
    const url = await createDatabase('store_fresh');

    expect(await migrateStore(url)).toEqual([
      '1_create_store.sql', '2_compact_versions.sql', '3_safe_history.sql', '4_node_database_oid.sql', '5_relation_stats.sql', '6_column_additions.sql',
    ]);

    const tables = await cluster().psql(
      `SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'pgtimewarp_store'`,
      'store_fresh',
    );
    expect(tables.trim().split(',')).toEqual(STORE_TABLES);

    expect(await migrateStore(url)).toEqual([]);
  });

  it('upgrades a version 1 store that holds history in place, with the same history', async () => {
    const url = await createDatabase('store_upgraded');
    // version 1 alone, as an older install left it
    const v1 = mkdtempSync(join(tmpdir(), 'pgtimewarp-v1-'));
    copyFileSync(join(migrationsDir, '1_create_store.sql'), join(v1, '1_create_store.sql'));
    const client = await cluster().connect('store_upgraded');
    try {
      await migrate({ client }, v1);
      rmSync(v1, { recursive: true });
      // two nodes, three tables; inserts, updates, a key change, a delete, a
      // TRUNCATE and a re-insert after it, as the version 1 writer stored them
      // (each version closed where the key's next one begins)
      await client.query(`
        INSERT INTO pgtimewarp_store.nodes (node_id) VALUES ('n1'), ('n2');
        INSERT INTO pgtimewarp_store.tracked_relations
               (node_id, schema_name, table_name, relid, pk_columns, tracked_from_lsn, tracked_from_ts, untracked_lsn, untracked_ts)
        VALUES ('n1', 'public', 'accounts', 16400, '{id}', '0/1000', '2024-01-01 00:00+00', NULL, NULL),
               ('n1', 'sales', 'orders', 16500, '{region,seq}', '0/1000', '2024-01-01 00:00+00', '0/5000', '2024-01-01 00:05+00'),
               ('n2', 'public', 'accounts', 16400, '{id}', '0/2000', '2024-01-02 00:00+00', NULL, NULL);
        INSERT INTO pgtimewarp_store.row_versions
               (node_id, schema_name, table_name, pk, valid_from_lsn, valid_to_lsn, valid_from_ts, valid_to_ts, op, row_data)
        VALUES ('n1', 'public', 'accounts', '{1}', '0/1000', '0/2000', '2024-01-01 00:00+00', '2024-01-01 00:01+00', 'baseline', '{"id": "1", "b": "10"}'),
               ('n1', 'public', 'accounts', '{1}', '0/2000', '0/3000', '2024-01-01 00:01+00', '2024-01-01 00:02+00', 'update', '{"id": "1", "b": "20"}'),
               ('n1', 'public', 'accounts', '{1}', '0/3000', NULL, '2024-01-01 00:02+00', NULL, 'delete', NULL),
               ('n1', 'public', 'accounts', '{2}', '0/1000', '0/2000', '2024-01-01 00:00+00', '2024-01-01 00:01+00', 'baseline', '{"id": "2", "b": "5"}'),
               ('n1', 'public', 'accounts', '{2}', '0/2000', NULL, '2024-01-01 00:01+00', NULL, 'delete', NULL),
               ('n1', 'public', 'accounts', '{3}', '0/2000', NULL, '2024-01-01 00:01+00', NULL, 'insert', '{"id": "3", "b": "7"}'),
               ('n1', 'sales', 'orders', '{eu,1}', '0/1000', '0/4000', '2024-01-01 00:00+00', '2024-01-01 00:03+00', 'baseline', '{"region": "eu", "seq": "1"}'),
               ('n1', 'sales', 'orders', '{eu,1}', '0/4000', '0/4800', '2024-01-01 00:03+00', '2024-01-01 00:04+00', 'truncate', NULL),
               ('n1', 'sales', 'orders', '{eu,1}', '0/4800', NULL, '2024-01-01 00:04+00', NULL, 'insert', '{"region": "eu", "seq": "1"}'),
               ('n2', 'public', 'accounts', '{1}', '0/2000', NULL, '2024-01-02 00:00+00', NULL, 'baseline', '{"id": "1", "b": "99"}');
      `);
      const HISTORY = `SELECT node_id, schema_name, table_name, pk, valid_from_lsn::text, valid_to_lsn::text,
                              valid_from_ts::text, valid_to_ts::text, op, row_data
                         FROM pgtimewarp_store.%s ORDER BY node_id, schema_name, table_name, pk, valid_from_lsn`;
      const before = (await client.query(HISTORY.replace('%s', 'row_versions'))).rows;
      expect(before).toHaveLength(10);

      expect(await migrateStore(url)).toEqual(['2_compact_versions.sql', '3_safe_history.sql', '4_node_database_oid.sql', '5_relation_stats.sql', '6_column_additions.sql']);

      // the same history, read through the view that spells it out as version 1 stored it
      expect((await client.query(HISTORY.replace('%s', 'row_history'))).rows).toEqual(before);
      // one relation id per tracked table, and a table tracked later gets a new one
      const ids = (await client.query<{ relation_id: number }>(
        `SELECT relation_id FROM pgtimewarp_store.tracked_relations ORDER BY relation_id`)).rows.map((r) => r.relation_id);
      expect(new Set(ids).size).toBe(3);
      // each incarnation's count of versions, from the history already there (6, 3 and 1)
      const { rows: stats } = await client.query<{ relation_id: number; versions: string; counted: string }>(
        `SELECT r.relation_id, s.versions::text,
                (SELECT count(*) FROM pgtimewarp_store.row_versions v WHERE v.relation_id = r.relation_id)::text AS counted
           FROM pgtimewarp_store.tracked_relations r
           LEFT JOIN pgtimewarp_store.relation_stats s ON s.relation_id = r.relation_id
          ORDER BY r.relation_id`);
      expect(stats.map((r) => r.versions).sort()).toEqual(['1', '3', '6']);
      for (const r of stats) expect(r.versions).toBe(r.counted);
      const { rows: next } = await client.query<{ relation_id: number }>(
        `INSERT INTO pgtimewarp_store.tracked_relations (node_id, schema_name, table_name, pk_columns, tracked_from_lsn, tracked_from_ts)
         VALUES ('n1', 'public', 'later', '{id}', '0/9000', '2024-01-09 00:00+00') RETURNING relation_id`);
      expect(next[0]!.relation_id).toBeGreaterThan(Math.max(...ids));
      // the store's own checks still hold on what was converted
      const { rows: bad } = await client.query(
        `SELECT * FROM pgtimewarp_store.row_versions WHERE (op IN ('d', 't')) <> (row_data IS NULL)`);
      expect(bad).toEqual([]);
    } finally {
      await client.end();
    }
  });
});

describe('store constraints', () => {
  let client: pg.Client;
  let relationId: number;

  const version = {
    pk: ['1'],
    valid_from_lsn: '0/1000',
    valid_from_ts: '2024-01-01 00:00:00+00',
    op: 'b',
    row_data: { id: '1', balance: '10' } as Record<string, unknown> | null,
  };
  type Version = typeof version;

  function insertVersion(overrides: Partial<Version>): Promise<pg.QueryResult> {
    const v = { ...version, ...overrides };
    return client.query(
      `INSERT INTO pgtimewarp_store.row_versions (relation_id, pk, valid_from_lsn, valid_from_ts, op, row_data)
       VALUES ($1, $2, $3, $4, $5, $6)`,
      [relationId, v.pk, v.valid_from_lsn, v.valid_from_ts, v.op, v.row_data === null ? null : JSON.stringify(v.row_data)],
    );
  }

  /** Run `body` in a transaction that is always rolled back. */
  async function rolledBack(body: () => Promise<void>): Promise<void> {
    await client.query('BEGIN');
    try {
      await body();
    } finally {
      await client.query('ROLLBACK');
    }
  }

  /** The name of row_versions' CHECK constraint whose definition contains `fragment`. */
  async function checkConstraintContaining(fragment: string): Promise<string> {
    const { rows } = await client.query<{ conname: string }>(
      `SELECT conname FROM pg_constraint
        WHERE conrelid = 'pgtimewarp_store.row_versions'::regclass AND contype = 'c'
          AND pg_get_constraintdef(oid) LIKE '%' || $1 || '%'`,
      [fragment],
    );
    expect(rows).toHaveLength(1);
    return rows[0]!.conname;
  }

  async function expectRejected(
    attempt: Promise<unknown>,
    expected: { code: string; constraint: string },
  ): Promise<void> {
    const error: unknown = await attempt.then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(error, 'the insert should have been rejected').toBeInstanceOf(pg.DatabaseError);
    const dbError = error as pg.DatabaseError;
    expect({ code: dbError.code, constraint: dbError.constraint }).toEqual(expected);
  }

  beforeAll(async () => {
    await migrateStore(await createDatabase('store_constraints'));
    client = await cluster().connect('store_constraints');
    await client.query(`INSERT INTO pgtimewarp_store.nodes (node_id, database_name) VALUES ('n1', 'source')`);
    const { rows } = await client.query<{ relation_id: number }>(
      `INSERT INTO pgtimewarp_store.tracked_relations
         (node_id, schema_name, table_name, pk_columns, tracked_from_lsn, tracked_from_ts)
       VALUES ('n1', 'public', 'accounts', '{id}', '0/1000', '2024-01-01 00:00:00+00')
       RETURNING relation_id`,
    );
    relationId = rows[0]!.relation_id;
  });

  afterAll(async () => {
    await client?.end();
  });

  it('accepts a well-formed history: baseline, update, delete tombstone, each ending where the next begins', async () => {
    await rolledBack(async () => {
      await insertVersion({});
      await insertVersion({ valid_from_lsn: '0/2000', valid_from_ts: '2024-01-01 00:01:00+00', op: 'u', row_data: { id: '1', balance: '20' } });
      await insertVersion({ valid_from_lsn: '0/3000', valid_from_ts: '2024-01-01 00:02:00+00', op: 'd', row_data: null });
      const { rows } = await client.query(
        `SELECT op, valid_from_lsn::text AS from, valid_to_lsn::text AS to FROM pgtimewarp_store.row_history ORDER BY valid_from_lsn`);
      expect(rows).toEqual([
        { op: 'baseline', from: '0/1000', to: '0/2000' },
        { op: 'update', from: '0/2000', to: '0/3000' },
        { op: 'delete', from: '0/3000', to: null },
      ]);
    });
  });

  it('rejects two versions of one key at the same valid_from_lsn (a transaction applied twice)', async () => {
    await rolledBack(async () => {
      await insertVersion({});
      await expectRejected(
        insertVersion({ op: 'u', row_data: { id: '1', balance: '30' } }),
        { code: '23505', constraint: 'row_versions_pkey' },
      );
    });
  });

  it('rejects a delete tombstone that carries row_data, and a row without its data', async () => {
    const constraint = await checkConstraintContaining('= (row_data IS NULL)');
    await rolledBack(async () => {
      await expectRejected(insertVersion({ op: 'd' }), { code: '23514', constraint });
    });
    await rolledBack(async () => {
      await expectRejected(insertVersion({ op: 'u', row_data: null }), { code: '23514', constraint });
    });
  });

  it('rejects an op code it does not know', async () => {
    const constraint = await checkConstraintContaining("'b'::\"char\"");
    await rolledBack(async () => {
      await expectRejected(insertVersion({ op: 'x' }), { code: '23514', constraint });
    });
  });

  it('deletes a tracked incarnation\'s versions and their count with it, and gives a re-tracked name a new relation id', async () => {
    await rolledBack(async () => {
      await insertVersion({});
      await client.query(`INSERT INTO pgtimewarp_store.relation_stats (relation_id, versions) VALUES ($1, 1)`, [relationId]);
      await client.query(`DELETE FROM pgtimewarp_store.tracked_relations WHERE relation_id = $1`, [relationId]);
      expect((await client.query(`SELECT count(*)::int AS n FROM pgtimewarp_store.row_versions`)).rows).toEqual([{ n: 0 }]);
      expect((await client.query(`SELECT count(*)::int AS n FROM pgtimewarp_store.relation_stats`)).rows).toEqual([{ n: 0 }]);
      const { rows } = await client.query<{ relation_id: number }>(
        `INSERT INTO pgtimewarp_store.tracked_relations
           (node_id, schema_name, table_name, pk_columns, tracked_from_lsn, tracked_from_ts)
         VALUES ('n1', 'public', 'accounts', '{id}', '0/5000', '2024-01-05 00:00:00+00') RETURNING relation_id`);
      expect(rows[0]!.relation_id).not.toBe(relationId);
    });
  });

  it('records a table by one live incarnation at a time; a dropped one may share its name and OID', async () => {
    await rolledBack(async () => {
      const track = (relid: number): Promise<unknown> => client.query(
        `INSERT INTO pgtimewarp_store.tracked_relations
           (node_id, schema_name, table_name, relid, pk_columns, tracked_from_lsn, tracked_from_ts)
         VALUES ('n1', 'public', 'payroll', $1, '{id}', '0/5000', '2024-01-05 00:00:00+00')`, [relid]);
      await track(16400);
      await client.query('SAVEPOINT again');
      await expectRejected(track(16400), { code: '23505', constraint: 'tracked_relations_relid_key' });
      await client.query('ROLLBACK TO SAVEPOINT again');
      // another table under the same name: a second incarnation
      await track(16500);
      // once dropped, the OID may come back with a new table
      await client.query(`UPDATE pgtimewarp_store.tracked_relations SET dropped_lsn = '0/6000', dropped_ts = now() WHERE relid = 16400`);
      await track(16400);
    });
  });
});

describe('test cluster', () => {
  it('decodes WAL with wal2json', async () => {
    const client = await cluster().connect();
    try {
      const { rows: settings } = await client.query<{ wal_level: string }>(
        `SELECT current_setting('wal_level') AS wal_level`,
      );
      expect(settings[0]?.wal_level).toBe('logical');

      await client.query(`CREATE TABLE wal2json_probe (id int PRIMARY KEY)`);
      await client.query(`SELECT pg_create_logical_replication_slot('probe', 'wal2json')`);
      try {
        await client.query(`INSERT INTO wal2json_probe VALUES (1)`);
        const { rows } = await client.query<{ data: string }>(
          `SELECT data FROM pg_logical_slot_get_changes('probe', NULL, NULL, 'format-version', '2')`,
        );
        const changes = rows.map((row) => JSON.parse(row.data) as { action: string; table?: string });
        expect(changes).toContainEqual(expect.objectContaining({ action: 'I', table: 'wal2json_probe' }));
      } finally {
        await client.query(`SELECT pg_drop_replication_slot('probe')`);
        await client.query(`DROP TABLE wal2json_probe`);
      }
    } finally {
      await client.end();
    }
  });
});
