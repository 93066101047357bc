// Where the package's own files live, whether this module runs from source
// (tsx: installer/paths.ts) or compiled (dist/installer/paths.js) or from an
// installed npm package.  The one place that knows the package layout.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_NAME = 'pgtimewarp';

function findPackageRoot(start: string): string {
  let dir = start;
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      const parsed: unknown = JSON.parse(readFileSync(manifest, 'utf8'));
      if (typeof parsed === 'object' && parsed !== null && (parsed as { name?: unknown }).name === PACKAGE_NAME) {
        return dir;
      }
    }
    const parent = dirname(dir);
    if (parent === dir) {
      throw new Error(`cannot find the ${PACKAGE_NAME} package root above ${start}`);
    }
    dir = parent;
  }
}

export const packageRoot: string = findPackageRoot(dirname(fileURLToPath(import.meta.url)));

/** Store schema migrations, applied by migrateStore(). */
export const migrationsDir: string = join(packageRoot, 'migrations');

/** The C extension's PGXS build directory. */
export const extensionDir: string = join(packageRoot, 'extension');
