// Building and installing the C extension with PGXS, only when needed: a
// build that is up to date (make -q) and installed files identical to the
// built ones mean there is nothing to do, so a second install is cheap and
// says "unchanged".

import { execa } from 'execa';
import { accessSync, constants, existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { extensionDir } from './paths.js';

const EXTENSION = 'pgtimewarp';

/** Where PGXS puts each file the extension consists of. */
export interface InstallDirs {
  sharedir: string;
  pkglibdir: string;
}

/** Built file -> installed file, for the files the server loads. */
export function extensionFiles(dirs: InstallDirs): Array<{ built: string; installed: string }> {
  const data = readdirSync(extensionDir).filter((f) => f.startsWith(`${EXTENSION}--`) && f.endsWith('.sql'));
  return [
    ...[`${EXTENSION}.control`, ...data].map((f) => ({ built: join(extensionDir, f), installed: join(dirs.sharedir, 'extension', f) })),
    { built: join(extensionDir, `${EXTENSION}.so`), installed: join(dirs.pkglibdir, `${EXTENSION}.so`) },
  ];
}

function sameContent(a: string, b: string): boolean {
  if (!existsSync(a) || !existsSync(b)) return false;
  return readFileSync(a).equals(readFileSync(b));
}

/** Installed files that differ from the built ones (all of them when nothing is built). */
export function differingFiles(dirs: InstallDirs): string[] {
  return extensionFiles(dirs).filter((f) => !sameContent(f.built, f.installed)).map((f) => f.installed);
}

/**
 * Whether installing would have to write into the server's directories
 * and may not; null when it need not or may.  Judged from the sources
 * (control and SQL) and the library's presence, before anything is built.
 */
export function installDirsUnwritable(dirs: InstallDirs): string | null {
  const files = extensionFiles(dirs);
  const stale = files.some((f) => (f.built.endsWith('.so') ? !existsSync(f.installed) : !sameContent(f.built, f.installed)));
  if (!stale) return null;
  for (const dir of [join(dirs.sharedir, 'extension'), dirs.pkglibdir]) {
    try {
      accessSync(dir, constants.W_OK);
    } catch {
      return `the extension's files must be copied into ${dir}, which this user may not write`;
    }
  }
  return null;
}

function makeArgs(pgConfig: string, target?: string): string[] {
  return ['-C', extensionDir, `PG_CONFIG=${pgConfig}`, ...(target === undefined ? [] : [target])];
}

/** make -q: true when the build is up to date (nothing to compile). */
export async function buildIsUpToDate(pgConfig: string): Promise<boolean> {
  if (!existsSync(join(extensionDir, `${EXTENSION}.so`))) return false;
  const r = await execa('make', ['-q', ...makeArgs(pgConfig)], { reject: false, stdin: 'ignore' });
  return r.exitCode === 0;
}

async function make(pgConfig: string, target: string | undefined, what: string): Promise<void> {
  const r = await execa('make', makeArgs(pgConfig, target), { reject: false, stdin: 'ignore', all: true });
  if (r.exitCode !== 0) {
    const tail = String(r.all ?? '').trim().split('\n').slice(-25).join('\n');
    throw new Error(`${what} failed (make ${makeArgs(pgConfig, target).join(' ')}, exit code ${r.exitCode}):\n${tail}`);
  }
}

export async function buildExtension(pgConfig: string): Promise<void> {
  await make(pgConfig, undefined, 'building the extension');
}

export async function installExtensionFiles(pgConfig: string): Promise<void> {
  await make(pgConfig, 'install', 'installing the extension files');
}
