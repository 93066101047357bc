// Bounded memory (issue: one transaction of 1,000,000 row changes goes
// through with the agent's RSS under 300 MB).  The real `pgtimewarp agent`
// command runs as a child process, compiled (dist/, built here first) as
// users run it: tsx's loader would add some 40 MB of its own.  Meanwhile one
// transaction makes a million changes to a
// tracked table: 600,000 inserts, 300,000 updates of them, 100,000 deletes
// of keys it inserted.  The agent must store exactly what that transaction
// left, as one commit, and its peak RSS (VmHWM, read from /proc) must stay
// under the limit.  The figures are printed.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';

import { lsnFromText } from '../../agent/decode.js';
import { packageRoot } from '../../installer/paths.js';
import { procStatusKb } from '../support/process.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';
import { waitFor } from '../support/wait.js';

const cluster = useCluster({ settings: { max_wal_size: '2GB' } });
const RSS_LIMIT_KB = 300 * 1024;
const INSERTS = 600_000;
const UPDATES = 300_000;
const DELETES = 100_000;

let agent: ChildProcess | undefined;
let timewarp: Timewarp | undefined;

beforeAll(() => {
  execFileSync(process.execPath, [join(packageRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: packageRoot, stdio: 'inherit' });
}, 120_000);

afterAll(async () => {
  agent?.kill('SIGKILL');
  await timewarp?.source.end();
});

describe('the agent on one transaction of 1,000,000 changes', () => {
  it('stores it exactly, its RSS staying under 300 MB', { timeout: 600_000 }, async () => {
    timewarp = await setupTimewarp(cluster(), { nodeId: 'memory' });
    const { source, sourceUrl, storeUrl } = timewarp;
    await source.query(`CREATE TABLE big (id int PRIMARY KEY, digest text, note text)`);
    await source.query(`SELECT pg_create_logical_replication_slot('memory', 'pgoutput')`);
    await source.query(`CREATE PUBLICATION pgtimewarp`);
    await source.query(`SELECT pgtimewarp_track('big')`);

    const log: string[] = [];
    onTestFailed(() => console.error(`the agent's last log lines:\n${log.slice(-20).join('\n')}`));
    const child = spawn(
      process.execPath,
      ['dist/installer/cli.js', 'agent', '--source', sourceUrl, '--store', storeUrl,
        '--node', 'memory', '--slot', 'memory', '--log-format', 'json'],
      { cwd: packageRoot, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    agent = child;
    for (const out of [child.stdout!, child.stderr!]) createInterface({ input: out }).on('line', (line) => log.push(line));
    const pid = child.pid!;
    const store = await cluster().connect('store');
    try {
      const checkpoint = async (): Promise<bigint> => {
        const res = await store.query<{ lsn: string }>(`SELECT confirmed_lsn::text AS lsn FROM pgtimewarp_store.wal_checkpoints WHERE node_id = 'memory'`);
        return res.rows[0] === undefined ? 0n : lsnFromText(res.rows[0].lsn);
      };
      await waitFor('the agent\'s first checkpoint', async () => (await checkpoint()) > 0n, 60_000);
      const idleKb = procStatusKb(pid, 'VmRSS');

      const started = Date.now();
      await source.query('BEGIN');
      await source.query(`INSERT INTO big SELECT g, md5(g::text), 'inserted' FROM generate_series(1, $1) g`, [INSERTS]);
      await source.query(`UPDATE big SET note = 'updated ' || id WHERE id <= $1`, [UPDATES]);
      await source.query(`DELETE FROM big WHERE id > $1`, [INSERTS - DELETES]);
      await source.query('COMMIT');
      const committed = lsnFromText((await source.query<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`)).rows[0]!.lsn);
      const wroteMs = Date.now() - started;

      let peakRssKb = 0;
      await waitFor('the agent to store the transaction', async () => {
        peakRssKb = Math.max(peakRssKb, procStatusKb(pid, 'VmRSS'));
        return (await checkpoint()) >= committed;
      }, 480_000);
      const hwmKb = procStatusKb(pid, 'VmHWM');
      console.log(
        `agent memory: ${INSERTS + UPDATES + DELETES} changes in one transaction stored ${Date.now() - started - wroteMs} ms ` +
          `after a ${wroteMs} ms commit; RSS idle ${Math.round(idleKb / 1024)} MB, peak (VmHWM) ${Math.round(hwmKb / 1024)} MB ` +
          `(sampled peak ${Math.round(peakRssKb / 1024)} MB), limit ${RSS_LIMIT_KB / 1024} MB`,
      );

      // what the transaction left: keys 1..500000, inserted, the first 300000 updated within it
      const versions = await store.query<{ op: string; n: string; updated: string; first: number; last: number }>(
        `SELECT op, count(*) AS n, count(*) FILTER (WHERE row_data->>'note' LIKE 'updated %') AS updated,
                min((pk[1])::int) AS first, max((pk[1])::int) AS last
           FROM pgtimewarp_store.row_history WHERE node_id = 'memory' GROUP BY op`,
      );
      expect(versions.rows).toEqual([{ op: 'insert', n: String(INSERTS - DELETES), updated: String(UPDATES), first: 1, last: INSERTS - DELETES }]);
      // one commit: every version begins at the same LSN
      const starts = await store.query(`SELECT DISTINCT valid_from_lsn FROM pgtimewarp_store.row_history WHERE node_id = 'memory'`);
      expect(starts.rowCount).toBe(1);
      const row = await source.query(`SELECT pgtimewarp_asof_pk_lsn('big', '{"id": 299999}', $1::pg_lsn) AS r`, [(await source.query(`SELECT pg_current_wal_lsn() AS l`)).rows[0].l]);
      expect(row.rows[0].r).toEqual({ id: 299999, digest: (await source.query(`SELECT md5('299999') AS d`)).rows[0].d, note: 'updated 299999' });
      expect(log.some((line) => line.includes('"event":"spilling"'))).toBe(true);
      expect(log.filter((line) => line.includes('"level":"error"'))).toEqual([]);

      expect(hwmKb).toBeLessThan(RSS_LIMIT_KB);
    } finally {
      await store.end();
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
      agent = undefined;
    }
  });
});
