import { storableText, toError, unlessAborted, type Db, type Logger, type TaskNotifier } from '@taskbox/shared';
import { setStep } from './task-sql';

/** A step's name is a label for a progress bar: longer text is cut. */
export const MAX_STEP_LENGTH = 1000;

export interface ProgressReporter {
  step(name: string): Promise<void>;
  progress(fraction: number): Promise<void>;
}

interface Update {
  step?: string;
  progress?: number;
}

/**
 * A run's `step` and `progress` (TaskContext). Progress is informational, so neither ever rejects, nor
 * fails the attempt over a progress bar:
 * - at most one write is in flight per run, and the calls made meanwhile are merged into the next one,
 *   so a run that reports in a tight loop costs one statement at a time, not the pool the leases need;
 * - a value Postgres could not store is mended (a step's NUL, its length) or dropped (a progress of NaN);
 * - a write that fails (Postgres unavailable) is logged once per run; the next one, or the result,
 *   brings the row up to date.
 * Each call's promise resolves once the write that carries its value has ended, or at once when the
 * run's `signal` aborts. A write held by a locked or unreachable Postgres lasts up to the statement
 * timeout, longer than the worker's grace: a run that honours its signal would otherwise be given up on
 * as one that ignored it, and a stall of the database would make every worker exit together.
 */
export function progressReporter(
  db: Db,
  taskNotifier: TaskNotifier,
  taskId: string,
  attempt: number,
  logger: Logger,
  signal: AbortSignal,
): ProgressReporter {
  let next: { update: Update; done: Promise<void>; resolve: () => void } | null = null;
  let writing = false;
  let warned = false;
  const drain = async (): Promise<void> => {
    writing = true;
    for (let batch = next; batch; batch = next) {
      next = null;
      try {
        await setStep(db, taskId, attempt, batch.update.step ?? null, batch.update.progress);
        taskNotifier.changed(taskId);
      } catch (err) {
        if (!warned) logger.warn('progress not recorded', { attempt, error: toError(err).message });
        warned = true;
      }
      batch.resolve();
    }
    writing = false;
  };
  const write = (update: Update): Promise<void> => {
    if (!next) {
      let resolve = (): void => undefined;
      const written = new Promise<void>((r) => (resolve = r));
      // Once a batch, not once a call: every call of the batch answers when it is written or the run aborted.
      const done = unlessAborted(written, signal).then(() => undefined);
      next = { update: {}, done, resolve };
    }
    Object.assign(next.update, update);
    const { done } = next;
    if (!writing) void drain();
    return done;
  };
  return {
    step(name) {
      let text: string;
      try {
        text = storableText(String(name).slice(0, MAX_STEP_LENGTH));
      } catch {
        return Promise.resolve(); // a name that throws when turned into text (a Symbol, a toString that throws)
      }
      return write({ step: text });
    },
    progress: (fraction) =>
      Number.isFinite(fraction) ? write({ progress: Math.min(1, Math.max(0, fraction)) }) : Promise.resolve(),
  };
}
