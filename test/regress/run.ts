// npm run test:regress — build and install the extension with PGXS, then run
// its pg_regress suite (make installcheck) against a throwaway cluster.
//
// COPT from the environment reaches the compiler (PGXS appends it to CFLAGS),
// e.g. COPT='-Wall -Wextra -Werror' npm run test:regress.

import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { extensionDir, packageRoot } from '../../installer/paths.js';
import { startCluster, type Cluster } from '../support/cluster.js';

const regressDir = join(packageRoot, 'test', 'regress');
const diffsFile = join(regressDir, 'regression.diffs');

function step(message: string): void {
  console.log(`\n==> ${message}`);
}

/** Run make with its output streamed to ours; resolves to its exit code. */
function make(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  console.log(`$ make ${args.join(' ')}`);
  return new Promise((resolve, reject) => {
    const child = spawn('make', args, { cwd: packageRoot, env, stdio: 'inherit' });
    child.on('error', (err) => reject(new Error(`cannot run make: ${err.message}`)));
    child.on('close', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

async function main(): Promise<number> {
  if (!existsSync(join(extensionDir, 'Makefile'))) {
    console.error(`no ${join(extensionDir, 'Makefile')}: nothing to build`);
    return 1;
  }

  const tests = readdirSync(join(regressDir, 'sql')).filter((name) => name.endsWith('.sql'));
  if (tests.length === 0) {
    // pg_regress reports "All 0 tests passed"; that is not a pass.
    console.error(`no regression tests in ${join(regressDir, 'sql')}`);
    return 1;
  }

  step(`building extension${process.env['COPT'] ? ` (COPT=${process.env['COPT']})` : ''}`);
  if ((await make(['-C', extensionDir])) !== 0) {
    console.error('building the extension failed');
    return 1;
  }

  step('installing extension');
  if ((await make(['-C', extensionDir, 'install'])) !== 0) {
    console.error('installing the extension failed (installing into the PostgreSQL directories needs root)');
    return 1;
  }

  step('starting cluster');
  let cluster: Cluster | undefined;
  try {
    cluster = await startCluster();
    console.log(`cluster on port ${cluster.port}, socket dir ${cluster.socketDir}`);

    step(`running pg_regress: ${tests.length} test file(s) (make installcheck)`);
    rmSync(diffsFile, { force: true });
    const code = await make(['-C', extensionDir, 'installcheck'], {
      ...process.env,
      PGHOST: cluster.socketDir,
      PGPORT: String(cluster.port),
      PGUSER: cluster.superuser,
    });
    if (code !== 0) {
      if (existsSync(diffsFile)) {
        console.error(`\n==> ${diffsFile}\n`);
        console.error(readFileSync(diffsFile, 'utf8'));
      }
      console.error(`\n==> last lines of the server log\n${cluster.logTail(60)}`);
      console.error('\nregression tests failed');
      return 1;
    }
    console.log('\nregression tests passed');
    return 0;
  } finally {
    if (cluster !== undefined) {
      step('stopping cluster');
      await cluster.stop();
    }
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exitCode = 1;
  },
);
