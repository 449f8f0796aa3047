import { toError, type Db, type Logger } from '@taskbox/shared';
import { deletePublished } from './outbox-sql';

export interface Retention {
  start(): void;
  stop(): Promise<void>;
}

const BATCH = 1000;

/**
 * Deletes published outbox rows older than the retention, in batches of 1 000 with a pause between
 * them. This is the only place that deletes outbox rows; several relays running it at once only
 * split the work.
 */
export function createRetention(db: Db, retentionMs: number, intervalMs: number, logger: Logger): Retention {
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;
  let stopping = false;

  async function sweep(): Promise<void> {
    let total = 0;
    try {
      let deleted: number;
      do {
        deleted = await deletePublished(db, retentionMs, BATCH);
        total += deleted;
      } while (deleted === BATCH && !stopping);
      if (total > 0) logger.info('deleted published outbox rows', { count: total, retentionMs });
    } catch (err) {
      logger.warn('outbox retention failed; will try again', { error: toError(err).message });
    }
  }

  function schedule(): void {
    if (stopping) return;
    timer = setTimeout(() => {
      running = sweep().finally(schedule);
    }, intervalMs);
    timer.unref();
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
