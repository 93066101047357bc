// The shape of install and uninstall: a list of steps, each of which first
// looks at the state and only then changes what is not yet right.  Run in
// 'plan' mode a step only looks (that is --dry-run); in 'apply' mode it looks,
// then changes.  Shown as a listr2 task list.

import { Listr } from 'listr2';

export type StepStatus = 'changed' | 'unchanged' | 'skipped' | 'would-change';

export interface StepCheck {
  /** Something to do. */
  change: boolean;
  /** What is to change (e.g. "create database store"), or why nothing is. */
  detail: string;
  /** The step does not apply here (e.g. the publication with wal2json). */
  skip?: boolean;
}

export interface Step {
  id: string;
  title: string;
  /** Only looks (prerequisites, connection checks): shown as "ok", never changes anything. */
  checkOnly?: boolean;
  check(): Promise<StepCheck>;
  /** Make the change check() found; returns what was done (default: check's detail). */
  apply(found: StepCheck): Promise<string | void>;
}

export interface StepResult {
  id: string;
  title: string;
  status: StepStatus;
  detail: string;
}

export type Renderer = 'default' | 'simple' | 'silent';

/**
 * Run the steps in order; the first error stops the run and is thrown.
 * `results` receives each step's outcome as it finishes, so a caller sees
 * what was done before a failure too.
 */
export async function runSteps(steps: Step[], mode: 'plan' | 'apply', renderer: Renderer, results: StepResult[] = []): Promise<StepResult[]> {
  let failure: unknown;
  const tasks = new Listr(
    steps.map((step) => ({
      title: step.title,
      task: async (_ctx: unknown, task: { title: string; skip(message?: string): void }): Promise<void> => {
        try {
          await runStep(step, mode, task, results);
        } catch (err) {
          // the list shows the first line; the whole message is the command's error, printed once
          failure = err;
          throw new Error((err instanceof Error ? err.message : String(err)).split('\n')[0]);
        }
      },
    })),
    {
      concurrent: false,
      exitOnError: true,
      renderer,
      // not a terminal: one line per event instead of a redrawn list
      fallbackRenderer: renderer === 'silent' ? 'silent' : 'simple',
      rendererOptions: { collapseSkips: false, collapseErrors: false },
    },
  );
  try {
    await tasks.run();
  } catch (err) {
    throw failure ?? err;
  }
  return results;
}

async function runStep(
  step: Step,
  mode: 'plan' | 'apply',
  task: { title: string; skip(message?: string): void },
  results: StepResult[],
): Promise<void> {
  const found = await step.check();
  let result: StepResult;
  if (found.skip) {
    result = { id: step.id, title: step.title, status: 'skipped', detail: found.detail };
    task.skip(found.detail);
  } else if (!found.change) {
    result = { id: step.id, title: step.title, status: 'unchanged', detail: found.detail };
    task.title = step.checkOnly ? `${step.title}: ok (${found.detail})` : `${step.title}: unchanged${found.detail ? ` (${found.detail})` : ''}`;
  } else if (mode === 'plan') {
    result = { id: step.id, title: step.title, status: 'would-change', detail: found.detail };
    task.title = `${step.title}: would ${found.detail}`;
  } else {
    const done = (await step.apply(found)) || found.detail;
    result = { id: step.id, title: step.title, status: 'changed', detail: done };
    task.title = `${step.title}: ${done}`;
  }
  results.push(result);
}

export interface PlanThenApplyOptions {
  /** Only look (--dry-run): the plan is the outcome. */
  dryRun?: boolean;
  /** listr2 renderer: 'default' on a terminal, 'simple' otherwise, 'silent' (the default) for --json and tests. */
  renderer?: Renderer;
  /** Asked with the plan before anything changes; false aborts.  Not asked when nothing would change. */
  confirm?: (plan: StepResult[]) => Promise<boolean>;
}

/**
 * The run of install and uninstall: under --dry-run the steps only look;
 * otherwise, when there is someone to ask, they look first and the plan is
 * confirmed (unless nothing would change), then they apply.  `steps` makes a
 * fresh list for each pass.  `results` receives each step's outcome of the
 * last pass (the dry run, or the apply) as it finishes, as with runSteps.
 */
export async function planThenApply(steps: () => Step[], opts: PlanThenApplyOptions, results: StepResult[] = []): Promise<StepResult[]> {
  const renderer = opts.renderer ?? 'silent';
  if (opts.dryRun) return runSteps(steps(), 'plan', renderer, results);
  if (opts.confirm !== undefined) {
    const plan = await runSteps(steps(), 'plan', renderer);
    if (plan.some((r) => r.status === 'would-change') && !(await opts.confirm(plan))) {
      throw new Error('not confirmed: nothing was changed');
    }
  }
  return runSteps(steps(), 'apply', renderer, results);
}
