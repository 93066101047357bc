// A tracked table's history belongs to the table, not its name, through the
// agent on each plugin:
// - renamed (also inside a transaction that changes it before and after the
//   rename, moved to another schema, its schema renamed, renamed back), its
//   history continues with no gap: every key at every recorded LSN reads
//   back as the table was, under whatever name it has now;
// - its columns renamed (a key column too, inside transactions that change
//   rows before and after), every version reads back under the columns'
//   names now;
// - dropped and created again under the same name by another role, the new
//   table's rows never join the old history (with wal2json, whose filter is
//   by name, they used to), and the new table can be tracked afresh;
// - a forged DDL message changes nothing;
// - another table keeps being recorded meanwhile, and health events say
//   what happened.

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { setupTimewarp, startAgent, type InProcessAgent, type Timewarp } from '../support/timewarp.js';
import { waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

interface Snapshot {
  lsn: string;
  rows: Map<number, string>;
}

describe.each(['pgoutput', 'wal2json'] as const)('history follows the table on %s', (plugin) => {
  let timewarp: Timewarp;
  let agent: InProcessAgent;
  const history: Snapshot[] = [];
  /** cols as it was after each transaction: LSN, and id -> row as JSON under the names of then. */
  const colsHistory: Array<{ lsn: string; rows: Array<Record<string, unknown>> }> = [];
  /** What the table is named now, for snapshots. */
  let name = 'public.items';

  async function snapshot(source: pg.Client): Promise<void> {
    const lsn = await source.query<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`);
    const rows = await source.query<{ id: number; j: string }>(`SELECT id, to_jsonb(t)::text AS j FROM ${name} t`);
    history.push({ lsn: lsn.rows[0]!.lsn, rows: new Map(rows.rows.map((r) => [r.id, r.j])) });
  }

  async function inTransaction(source: pg.Client, statements: string[]): Promise<void> {
    await source.query('BEGIN');
    for (const sql of statements) await source.query(sql);
    await source.query('COMMIT');
  }

  beforeAll(async () => {
    timewarp = await setupTimewarp(cluster(), { sourceDb: `src_${plugin}`, storeDb: `store_${plugin}`, nodeId: plugin });
    const { source } = timewarp;
    await source.query(`CREATE TABLE items (id int PRIMARY KEY, v int, note text)`);
    await source.query(`INSERT INTO items SELECT g, g, 'n' || g FROM generate_series(1, 3) g`);
    await source.query(`CREATE TABLE payroll (id int PRIMARY KEY, salary int)`);
    await source.query(`INSERT INTO payroll VALUES (1, 9000)`);
    await source.query(`CREATE TABLE bystander (id int PRIMARY KEY, n int)`);
    await source.query(`CREATE TABLE cols (id int PRIMARY KEY, a int, b text)`);
    await source.query(`INSERT INTO cols VALUES (1, 1, 'one'), (2, 2, 'two')`);
    await source.query(`CREATE ROLE intruder_${plugin} LOGIN`);
    await source.query(`GRANT CREATE ON SCHEMA public TO intruder_${plugin}`);
    agent = await startAgent(timewarp, plugin);
    for (const t of ['items', 'payroll', 'bystander', 'cols']) await source.query(`SELECT pgtimewarp_track($1)`, [t]);
    await snapshot(source);

    const colsSnapshot = async (): Promise<void> => {
      const lsn = await source.query<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`);
      const rows = await source.query<{ j: Record<string, unknown> }>(`SELECT to_jsonb(t) AS j FROM cols t`);
      colsHistory.push({ lsn: lsn.rows[0]!.lsn, rows: rows.rows.map((r) => r.j) });
    };
    await colsSnapshot();
    await source.query(`UPDATE cols SET a = 10 WHERE id = 1`);
    await colsSnapshot();
    await inTransaction(source, [
      `UPDATE cols SET a = 11 WHERE id = 1`,
      `ALTER TABLE cols RENAME a TO alpha`,
      `UPDATE cols SET alpha = 20 WHERE id = 2`,
    ]);
    await colsSnapshot();
    // the key column, with changes before and after in the same transaction
    await inTransaction(source, [
      `UPDATE cols SET b = 'x' WHERE id = 1`,
      `ALTER TABLE cols RENAME id TO ident`,
      `UPDATE cols SET b = 'y' WHERE ident = 2`,
      `INSERT INTO cols VALUES (3, 3, 'three')`,
    ]);
    await colsSnapshot();
    await source.query(`UPDATE cols SET alpha = 12 WHERE ident = 1`);
    await colsSnapshot();

    const bump = (n: number) => source.query(`INSERT INTO bystander VALUES ($1, 0) ON CONFLICT (id) DO UPDATE SET n = bystander.n + 1`, [n]);
    // changes under the old name and the new one in the transaction that renames
    await inTransaction(source, [
      `UPDATE items SET v = 10 WHERE id = 1`,
      `ALTER TABLE items RENAME TO goods`,
      `UPDATE goods SET v = 11, note = 'after rename' WHERE id = 1`,
      `INSERT INTO goods VALUES (4, 4, 'born renamed')`,
    ]);
    name = 'public.goods';
    await snapshot(source);
    await bump(1);
    await source.query(`UPDATE goods SET v = 20 WHERE id = 2`);
    await snapshot(source);
    await source.query(`CREATE SCHEMA shop`);
    await source.query(`ALTER TABLE goods SET SCHEMA shop`);
    name = 'shop.goods';
    await source.query(`DELETE FROM shop.goods WHERE id = 3`);
    await snapshot(source);
    await source.query(`ALTER SCHEMA shop RENAME TO store`);
    name = 'store.goods';
    await source.query(`UPDATE store.goods SET note = 'in a renamed schema' WHERE id = 4`);
    await snapshot(source);
    await bump(2);
    await inTransaction(source, [`ALTER TABLE store.goods SET SCHEMA public`, `ALTER TABLE public.goods RENAME TO items`]);
    name = 'public.items';
    await source.query(`UPDATE items SET v = 30 WHERE id = 1`);
    await snapshot(source);

    // a forged DDL message naming the rename's log rows changes nothing
    await source.query(`SET ROLE intruder_${plugin}`);
    await source.query(`SELECT pg_logical_emit_message(true, 'pgtimewarp', '{"action": "ddl", "first": 1, "last": 1000}')`);
    // drop and re-create under the same name, by another role
    await source.query(`RESET ROLE`);
    await source.query(`DROP TABLE payroll`);
    await source.query(`SET ROLE intruder_${plugin}`);
    await source.query(`CREATE TABLE payroll (id int PRIMARY KEY, salary int)`);
    await source.query(`INSERT INTO payroll VALUES (1, 1), (2, 2)`);
    await source.query(`RESET ROLE`);
    await bump(1000);
  });

  afterAll(async () => {
    await agent?.stop();
    await timewarp?.source.end();
  });

  it('keeps recording a renamed table, and reads every version under its name now', async () => {
    const { source } = timewarp;
    await waitFor('the last change to the bystander in the store', async () =>
      (await source.query(`SELECT pgtimewarp_asof_pk_lsn('bystander', '{"id": 1000}', 'FFFFFFFF/FFFFFFFF') IS NOT NULL AS ok`)
        .catch(() => ({ rows: [{ ok: false }] }))).rows[0]?.ok === true,
    60_000);
    const ids = new Set<number>();
    for (const s of history) for (const id of s.rows.keys()) ids.add(id);
    let compared = 0;
    for (const s of history) {
      for (const id of ids) {
        const res = await source.query<{ got: string | null }>(
          `SELECT pgtimewarp_asof_pk_lsn('items', $1, $2)::text AS got`, [JSON.stringify({ id }), s.lsn],
        );
        expect(res.rows[0]?.got ?? null, `id ${id} at ${s.lsn}`).toBe(s.rows.get(id) ?? null);
        compared++;
      }
    }
    expect(compared).toBe(history.length * 4);
    const store = await cluster().connect(`store_${plugin}`);
    try {
      const names = await store.query<{ schema_name: string; table_name: string }>(
        `SELECT n.schema_name, n.table_name FROM pgtimewarp_store.relation_renames n
           JOIN pgtimewarp_store.tracked_relations r USING (relation_id)
          WHERE r.table_name = 'items' ORDER BY n.lsn`);
      expect(names.rows.map((r) => `${r.schema_name}.${r.table_name}`)).toEqual([
        'public.goods', 'shop.goods', 'store.goods', 'public.items',
      ]);
      const health = await store.query<{ kind: string; message: string }>(
        `SELECT kind, message FROM pgtimewarp_store.health_events WHERE node_id = $1 AND kind LIKE 'tracked_table_%' ORDER BY event_id`,
        [plugin]);
      expect(health.rows.map((r) => r.kind)).toContain('tracked_table_renamed');
      expect(health.rows.some((r) => r.kind === 'tracked_table_dropped' && r.message.includes('public.payroll'))).toBe(true);
    } finally {
      await store.end();
    }
  });

  it('reads every version of a table whose columns were renamed under the names they have now', async () => {
    const { source } = timewarp;
    const now = (row: Record<string, unknown>): Record<string, unknown> => Object.fromEntries(
      Object.entries(row).map(([k, v]) => [k === 'a' ? 'alpha' : k === 'id' ? 'ident' : k, v]));
    let compared = 0;
    for (const s of colsHistory) {
      for (const ident of [1, 2, 3]) {
        const res = await source.query<{ got: Record<string, unknown> | null }>(
          `SELECT pgtimewarp_asof_pk_lsn('cols', $1, $2) AS got`, [JSON.stringify({ ident }), s.lsn]);
        const was = s.rows.map(now).find((r) => r['ident'] === ident) ?? null;
        expect(res.rows[0]?.got ?? null, `ident ${ident} at ${s.lsn}`).toEqual(was);
        compared++;
      }
    }
    expect(compared).toBe(15);
    const store = await cluster().connect(`store_${plugin}`);
    try {
      const r = await store.query<{ pk_columns: string[]; renames: Array<{ old: string; new: string }> }>(
        `SELECT pk_columns, column_renames AS renames FROM pgtimewarp_store.tracked_relations
          WHERE node_id = $1 AND table_name = 'cols'`, [plugin]);
      expect(r.rows[0]!.pk_columns).toEqual(['ident']);
      expect(r.rows[0]!.renames.map((x) => `${x.old}>${x.new}`)).toEqual(['a>alpha', 'id>ident']);
    } finally {
      await store.end();
    }
  });

  it('ends a dropped table\'s history at the drop: a table created later under its name neither reads nor extends it', async () => {
    const { source } = timewarp;
    const store = await cluster().connect(`store_${plugin}`);
    try {
      const old = await store.query<{ relation_id: number; dropped: boolean; versions: string }>(
        `SELECT r.relation_id, r.dropped_lsn IS NOT NULL AS dropped,
                (SELECT count(*) FROM pgtimewarp_store.row_versions v WHERE v.relation_id = r.relation_id) AS versions
           FROM pgtimewarp_store.tracked_relations r WHERE r.node_id = $1 AND r.table_name = 'payroll'`, [plugin]);
      // the baseline's one row, nothing of the new table's two
      expect(old.rows).toEqual([{ relation_id: expect.any(Number), dropped: true, versions: '1' }]);
    } finally {
      await store.end();
    }
    await expect(source.query(`SELECT pgtimewarp_asof_pk('payroll', '{"id": 1}', now())`)).rejects.toThrow(/not tracked/);
    // the new table is tracked afresh, with a history of its own
    await source.query(`SELECT pgtimewarp_track('payroll')`);
    const now = await source.query<{ salary: string }>(`SELECT pgtimewarp_asof_pk('payroll', '{"id": 2}', now()) ->> 'salary' AS salary`);
    expect(now.rows[0]?.salary).toBe('2');
    // the forged message was believed by nobody
    expect(agent.events.filter((e) => e.event === 'unverified_ddl_message')).toHaveLength(1);
    expect(agent.events.filter((e) => e.level === 'error' || e.event === 'retry')).toEqual([]);
  });
});
