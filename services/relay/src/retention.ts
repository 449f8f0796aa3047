import { toError, type Db, type Logger } from '@taskbox/shared';
import { deleteFinishedAttempts, deletePublished } from './outbox-sql';

export interface Retention {
  start(): void;
  stop(): Promise<void>;
  /** One full sweep now; start() runs one every intervalMs. */
  sweep(): Promise<void>;
}

export interface RetentionOptions {
  /** Published outbox rows older than this are deleted. */
  outboxMs: number;
  /** Finished task attempts older than this are deleted. */
  attemptsMs: number;
  intervalMs: number;
}

const BATCH = 1000;

/**
 * Deletes published outbox rows and finished task attempts older than their retention, in batches
 * of 1 000, each its own short statement, so no transaction holds many locks or holds back vacuum.
 * This is the only place that deletes either; several relays running it at once only split the work.
 */
export function createRetention(db: Db, options: RetentionOptions, logger: Logger): Retention {
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;
  let stopping = false;

  async function deleteAll(what: string, retentionMs: number, batch: typeof deletePublished): Promise<void> {
    let total = 0;
    try {
      let deleted: number;
      do {
        deleted = await batch(db, retentionMs, BATCH);
        total += deleted;
      } while (deleted === BATCH && !stopping);
      if (total > 0) logger.info(`deleted ${what}`, { count: total, retentionMs });
    } catch (err) {
      logger.warn(`deleting ${what} failed; will try again`, { error: toError(err).message });
    }
  }

  async function sweep(): Promise<void> {
    await deleteAll('published outbox rows', options.outboxMs, deletePublished);
    await deleteAll('finished task attempts', options.attemptsMs, deleteFinishedAttempts);
  }

  function schedule(): void {
    if (stopping) return;
    timer = setTimeout(() => {
      running = sweep().finally(schedule);
    }, options.intervalMs);
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
    sweep,
  };
}
