import {
  isTransientDbError,
  PermanentError,
  sleep,
  backoffMs,
  UNAVAILABLE_BACKOFF,
  errorJson,
  toError,
} from '@taskbox/shared';
import type { Logger } from '@taskbox/shared';
import type { AttemptDeps, RunResult } from './attempts';
import type { AttemptWrites } from './attempt-writes';
import { releaseLease } from './lease-sql';
import { attemptOutcome, type AttemptOutcome } from './finish-sql';

/**
 * Retries `work` while Postgres is unavailable (capped backoff), until it succeeds or the worker
 * stops; the delivery is held meanwhile. Requeueing instead would raise the message's delivery count
 * on every try, and a quorum queue dead-letters it at its delivery limit.
 */
export async function whilePostgresDown<T>(deps: AttemptDeps, logger: Logger, work: () => Promise<T>): Promise<T> {
  for (let tries = 1; ; tries++) {
    try {
      return await work();
    } catch (err) {
      if (!isTransientDbError(err) || deps.stopping.aborted) throw err;
      if (tries === 1) logger.warn('postgres unavailable; retrying', { error: toError(err).message });
      await sleep(backoffMs(tries, UNAVAILABLE_BACKOFF), deps.stopping);
    }
  }
}

export async function recordOutcome(
  deps: AttemptDeps,
  taskId: string,
  attempt: number,
  outcome: AttemptOutcome,
  logger: Logger,
): Promise<RunResult> {
  let status: Awaited<ReturnType<AttemptWrites['finish']>>;
  try {
    status = await whilePostgresDown(deps, logger, () => deps.writes.finish(taskId, attempt, outcome));
  } catch (err) {
    if (isTransientDbError(err) || outcome.kind !== 'succeeded') {
      logger.error('could not record the attempt; it will be resumed', { attempt, error: toError(err).message });
      await releaseLease(deps.db, taskId, attempt).catch(() => undefined);
      return 'abandoned';
    }
    // The result itself cannot be stored (not JSON, a NUL character...): a retry would produce it
    // again, so the task fails with the reason instead of looping.
    const error = new PermanentError(`the result could not be stored: ${toError(err).message}`);
    return recordOutcome(deps, taskId, attempt, { kind: 'failed', error, retryInMs: null }, logger);
  }
  if (status === null) {
    // An earlier try of this write may have committed, its answer lost: the row then has this run's outcome.
    if ((await attemptOutcome(deps.db, taskId, attempt).catch(() => undefined)) === outcome.kind) {
      deps.taskNotifier.changed(taskId);
      deps.outboxNotifier.poke();
      logger.info('attempt recorded: an earlier try of its write committed, and only its answer was lost', {
        attempt,
        outcome: outcome.kind,
      });
      return 'recorded';
    }
    // The task is no longer processing under this attempt: resumed elsewhere after this run lost its
    // lease, or its start was lost in a failover to a standby that had not received it. The redelivery
    // is decided from the row: dropped in the first case, run again in the second.
    logger.warn("attempt result discarded: the task is no longer this run's; the message goes back to the queue", {
      attempt,
    });
    return 'abandoned';
  }
  deps.taskNotifier.changed(taskId);
  if (status === 'pending') deps.outboxNotifier.poke();
  if (outcome.kind === 'failed') {
    deps.metrics.failures.inc({ final: String(status !== 'pending') });
    const message = status === 'pending' ? 'task attempt failed; retry scheduled' : `task ${status}`;
    logger.warn(message, { attempt, error: errorJson(outcome.error).message, retryInMs: outcome.retryInMs });
  } else logger.info(`task ${status}`, { attempt });
  return 'recorded';
}
