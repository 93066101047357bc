// pgtimewarp track, untrack, status, asof, diff: to be written.

import type { Command } from 'commander';

export function registerQueryCommands(_program: Command): void {}
