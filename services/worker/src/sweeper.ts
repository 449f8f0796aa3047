import { toError, type Db, type Logger, type OutboxNotifier, type TaskNotifier } from '@taskbox/shared';
import { sweepExpiredLeases } from './task-sql';

export interface Sweeper {
  start(): void;
  stop(): Promise<void>;
}

/** Every intervalMs, resumes (or fails) tasks whose run stopped renewing its lease. */
export function createSweeper(
  db: Db,
  intervalMs: number,
  notifier: OutboxNotifier,
  taskNotifier: TaskNotifier,
  logger: Logger,
): Sweeper {
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;
  let stopping = false;

  async function sweep(): Promise<void> {
    try {
      const { resumed, failed, taskIds } = await sweepExpiredLeases(db, 100);
      if (resumed > 0) notifier.poke();
      if (taskIds.length > 0) taskNotifier.changed(...taskIds);
      if (resumed + failed > 0) logger.warn('resumed runs whose lease expired', { resumed, failed });
    } catch (err) {
      logger.debug('lease sweep failed; will try again', { error: toError(err).message });
    }
  }

  function schedule(): void {
    if (stopping) return;
    timer = setTimeout(() => {
      running = sweep().finally(schedule);
    }, intervalMs);
  }

  return {
    start() {
      if (!timer && !stopping) schedule();
    },
    async stop() {
      stopping = true;
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}
