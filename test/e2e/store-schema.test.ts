// The store schema (migrations/) as applied by migrateStore(), and the
// integrity its constraints guarantee whatever the agent does.

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { migrateStore } from '../../installer/store.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster();

const STORE_TABLES = [
  'health_events',
  'lsn_time_map',
  'nodes',
  'row_versions',
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

    expect(await migrateStore(url)).toEqual(['1_create_store.sql']);

    const tables = await cluster().psql(
      `SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'pgtimewarp_store'`,
      'store_fresh',
    );
    expect(tables.trim().split(',')).toEqual(STORE_TABLES);

    expect(await migrateStore(url)).toEqual([]);
  });
});

describe('store constraints', () => {
  let client: pg.Client;

  const version = {
    node_id: 'n1',
    schema_name: 'public',
    table_name: 'accounts',
    pk: ['1'],
    valid_from_lsn: '0/1000',
    valid_to_lsn: null as string | null,
    valid_from_ts: '2024-01-01 00:00:00+00',
    valid_to_ts: null as string | null,
    op: 'baseline',
    row_data: { id: '1', balance: '10' } as Record<string, unknown> | null,
  };
  type Version = typeof version;

  function insertVersion(overrides: Partial<Version>): Promise<pg.QueryResult> {
    const v = { ...version, ...overrides };
    return client.query(
      `INSERT INTO pgtimewarp_store.row_versions
         (node_id, schema_name, table_name, pk, valid_from_lsn, valid_to_lsn,
          valid_from_ts, valid_to_ts, op, row_data)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
      [
        v.node_id, v.schema_name, v.table_name, v.pk, v.valid_from_lsn, v.valid_to_lsn,
        v.valid_from_ts, v.valid_to_ts, v.op, v.row_data === null ? null : JSON.stringify(v.row_data),
      ],
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
    await client.query(
      `INSERT INTO pgtimewarp_store.tracked_relations
         (node_id, schema_name, table_name, pk_columns, tracked_from_lsn, tracked_from_ts)
       VALUES ('n1', 'public', 'accounts', '{id}', '0/1000', '2024-01-01 00:00:00+00')`,
    );
  });

  afterAll(async () => {
    await client?.end();
  });

  it('accepts a well-formed history: baseline, update, delete tombstone', async () => {
    await rolledBack(async () => {
      await insertVersion({ valid_to_lsn: '0/2000', valid_to_ts: '2024-01-01 00:01:00+00' });
      await insertVersion({
        valid_from_lsn: '0/2000', valid_from_ts: '2024-01-01 00:01:00+00',
        valid_to_lsn: '0/3000', valid_to_ts: '2024-01-01 00:02:00+00',
        op: 'update', row_data: { id: '1', balance: '20' },
      });
      await insertVersion({
        valid_from_lsn: '0/3000', valid_from_ts: '2024-01-01 00:02:00+00', op: 'delete', row_data: null,
      });
      const { rows } = await client.query(`SELECT count(*)::int AS n FROM pgtimewarp_store.row_versions`);
      expect(rows[0]).toEqual({ n: 3 });
    });
  });

  it('rejects a second open version of one key', async () => {
    await rolledBack(async () => {
      await insertVersion({});
      await expectRejected(
        insertVersion({ valid_from_lsn: '0/2000', op: 'update' }),
        { code: '23505', constraint: 'row_versions_one_open_version' },
      );
    });
  });

  it('rejects a version that ends before it starts, or at its start', async () => {
    const constraint = await checkConstraintContaining('valid_to_lsn > valid_from_lsn');
    for (const validTo of ['0/0FFF', '0/1000']) {
      await rolledBack(async () => {
        await expectRejected(
          insertVersion({ valid_to_lsn: validTo, valid_to_ts: '2024-01-01 00:01:00+00' }),
          { code: '23514', constraint },
        );
      });
    }
  });

  it('rejects two versions of one key at the same valid_from_lsn', async () => {
    await rolledBack(async () => {
      await insertVersion({ valid_to_lsn: '0/2000', valid_to_ts: '2024-01-01 00:01:00+00' });
      await expectRejected(
        insertVersion({ op: 'update', row_data: { id: '1', balance: '30' } }),
        { code: '23505', constraint: 'row_versions_pkey' },
      );
    });
  });

  it('rejects a delete tombstone that carries row_data', async () => {
    const constraint = await checkConstraintContaining('= (row_data IS NULL)');
    await rolledBack(async () => {
      await expectRejected(insertVersion({ op: 'delete' }), { code: '23514', constraint });
    });
  });

  it('rejects a version for a relation that is not tracked', async () => {
    await rolledBack(async () => {
      await expectRejected(
        insertVersion({ table_name: 'not_tracked' }),
        { code: '23503', constraint: 'row_versions_node_id_schema_name_table_name_fkey' },
      );
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
