import { storableText, toError, type Db, type Logger, type TaskNotifier } from '@taskbox/shared';
import { setStep } from './task-sql';

/** A step's name is a label for a progress bar: longer text is cut. */
export const MAX_STEP_LENGTH = 1000;

export interface ProgressReporter {
  step(name: string): Promise<void>;
  progress(fraction: number): Promise<void>;
}

/**
 * A run's `step` and `progress` (TaskContext). Progress is informational, so neither ever rejects, nor
 * fails the attempt over a progress bar:
 * - at most one write is in flight per run, and calls made meanwhile are merged into the next one, so a
 *   run that reports in a tight loop costs one statement at a time, not the pool the leases need;
 * - a value Postgres could not store is mended (a step's NUL, its length) or dropped (a progress of NaN);
 * - a write that fails (Postgres unavailable) is logged once per run; the next one, or the result,
 *   brings the row up to date.
 * Each promise resolves once its value is written or superseded.
 */
export function progressReporter(
  db: Db,
  taskNotifier: TaskNotifier,
  taskId: string,
  attempt: number,
  logger: Logger,
): ProgressReporter {
  let next: { step?: string; progress?: number } | null = null;
  let writing: Promise<void> | null = null;
  let warned = false;
  const drain = async (): Promise<void> => {
    for (let update = next; update; update = next) {
      next = null;
      try {
        await setStep(db, taskId, attempt, update.step ?? null, update.progress);
        taskNotifier.changed(taskId);
      } catch (err) {
        if (!warned) logger.warn('progress not recorded', { attempt, error: toError(err).message });
        warned = true;
      }
    }
    writing = null;
  };
  const write = (update: { step?: string; progress?: number }): Promise<void> => {
    next = { ...next, ...update };
    return (writing ??= drain());
  };
  return {
    step: (name) => write({ step: storableText(String(name).slice(0, MAX_STEP_LENGTH)) }),
    progress: (fraction) =>
      Number.isFinite(fraction) ? write({ progress: Math.min(1, Math.max(0, fraction)) }) : Promise.resolve(),
  };
}
