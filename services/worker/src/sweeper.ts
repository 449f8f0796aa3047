import {
  createPeriodic,
  toError,
  type Db,
  type Logger,
  type OutboxNotifier,
  type Service,
  type TaskNotifier,
} from '@taskbox/shared';
import { sweepExpiredLeases } from './lease-sql';

/** Every intervalMs, resumes (or fails) tasks whose run stopped renewing its lease. */
export function createSweeper(
  db: Db,
  intervalMs: number,
  outboxNotifier: OutboxNotifier,
  taskNotifier: TaskNotifier,
  logger: Logger,
): Service {
  return createPeriodic(intervalMs, async () => {
    try {
      const { resumed, failed, taskIds } = await sweepExpiredLeases(db, 100);
      if (resumed > 0) outboxNotifier.poke();
      if (taskIds.length > 0) taskNotifier.changed(...taskIds);
      if (resumed + failed > 0) logger.warn('resumed runs whose lease expired', { resumed, failed });
    } catch (err) {
      logger.debug('lease sweep failed; will try again', { error: toError(err).message });
    }
  });
}
