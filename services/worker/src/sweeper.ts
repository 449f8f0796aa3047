import {
  createPeriodic,
  toError,
  type Db,
  type Logger,
  type OutboxNotifier,
  type Service,
  type TaskNotifier,
} from '@taskbox/shared';
import { sweepExpiredLeases, type SweptTask } from './lease-sql';
import type { WorkerMetrics } from './metrics';

/**
 * Every intervalMs, resumes (or fails) tasks whose run stopped renewing its lease, with a line for each
 * task: the worker that ran it is gone or cut off, so this is the only place its fate is told.
 */
export function createSweeper(
  db: Db,
  intervalMs: number,
  {
    outboxNotifier,
    taskNotifier,
    metrics,
  }: { outboxNotifier: OutboxNotifier; taskNotifier: TaskNotifier; metrics: WorkerMetrics },
  logger: Logger,
): Service {
  let failing = false;
  return createPeriodic(intervalMs, async () => {
    let swept: SweptTask[];
    try {
      swept = await sweepExpiredLeases(db, 100);
    } catch (err) {
      if (!failing) logger.warn('lease sweep failed; will try again', { error: toError(err).message });
      failing = true;
      return;
    }
    if (failing) logger.info('lease sweep works again');
    failing = false;
    if (swept.length === 0) return;
    if (swept.some((t) => t.status === 'pending')) outboxNotifier.poke();
    taskNotifier.changed(...swept.map((t) => t.id));
    for (const task of swept) report(task, metrics, logger);
  });
}

function report(
  { id, status, attempt, correlationId, messageId }: SweptTask,
  metrics: WorkerMetrics,
  logger: Logger,
): void {
  const log = logger.child({ taskId: id, correlationId: correlationId ?? undefined, messageId });
  if (status === 'pending') {
    metrics.failures.inc({ final: 'false' });
    log.warn('run lost: its worker stopped renewing the lease; the next attempt is queued', { attempt });
  } else if (status === 'failed') {
    metrics.failures.inc({ final: 'true' });
    log.error('task failed: its run was lost (its worker stopped renewing the lease) and no attempts are left', {
      attempt,
    });
  } else log.info('task cancelled: its run was lost after a cancel was requested', { attempt });
}
