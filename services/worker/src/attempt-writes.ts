import { createBatcher, isDbUnavailable, type Db, type TaskStatus } from '@taskbox/shared';
import { finishTerminals, finishWithRetry, resultBytes, type AttemptOutcome, type TerminalFinish } from './finish-sql';
import { startPendingAttempts, type AttemptStart, type LockedTask } from './task-sql';

/** The writes every delivery makes, with deliveries in flight together sharing statements. */
export interface AttemptWrites {
  /** Starts a pending task's next attempt (startPendingAttempts); undefined: take the locked path. */
  startPending(start: AttemptStart): Promise<{ task: LockedTask; attempt: number } | undefined>;
  /**
   * Records how an attempt ended. Returns the task's new status, or null when nothing was written
   * because a newer attempt owns the task.
   */
  finish(taskId: string, attempt: number, outcome: AttemptOutcome): Promise<TaskStatus | null>;
}

// Results of up to WORKER_RESULT_MAX_BYTES (10 MiB by default) each: twenty of them in one statement ran
// past the statement timeout, where each alone is stored in a fraction of it.
const FINISH_BATCH_MAX_BYTES = 1024 * 1024;

/**
 * Starts and terminal finishes go through createBatcher, so that deliveries in flight together share
 * one statement each, finishes up to FINISH_BATCH_MAX_BYTES of results; a retry is a transaction of
 * its own (it is rare, and writes an outbox row).
 */
export function createAttemptWrites(db: Db, leaseMs: number, maxBatch: number): AttemptWrites {
  const options = { maxSize: maxBatch, concurrency: 2, retryAlone: (err: unknown) => !isDbUnavailable(err) };
  const start = createBatcher((starts: AttemptStart[]) => startPendingAttempts(db, starts, leaseMs), options);
  const finishTerminal = createBatcher((finishes: TerminalFinish[]) => finishTerminals(db, finishes), {
    ...options,
    bytes: { of: resultBytes, max: FINISH_BATCH_MAX_BYTES },
  });
  return {
    startPending: start,
    async finish(taskId, attempt, outcome) {
      if (outcome.kind === 'failed' && outcome.retryInMs !== null) {
        return finishWithRetry(db, taskId, attempt, outcome.error, outcome.retryInMs);
      }
      return finishTerminal({ taskId, attempt, outcome });
    },
  };
}
