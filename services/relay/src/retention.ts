import { createPeriodic, toError, type Db, type Logger, type Service } from '@taskbox/shared';
import { deletePublished } from './outbox-sql';
import { deleteFinishedAttempts } from './task-sql';

export interface Retention extends Service {
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
  async function deleteAll(
    what: string,
    retentionMs: number,
    batch: typeof deletePublished,
    signal?: AbortSignal,
  ): Promise<void> {
    let total = 0;
    try {
      let deleted: number;
      do {
        deleted = await batch(db, retentionMs, BATCH);
        total += deleted;
      } while (deleted === BATCH && !signal?.aborted);
      if (total > 0) logger.info(`deleted ${what}`, { count: total, retentionMs });
    } catch (err) {
      logger.warn(`deleting ${what} failed; will try again`, { error: toError(err).message });
    }
  }

  async function sweep(signal?: AbortSignal): Promise<void> {
    await deleteAll('published outbox rows', options.outboxMs, deletePublished, signal);
    await deleteAll('finished task attempts', options.attemptsMs, deleteFinishedAttempts, signal);
  }

  return { ...createPeriodic(options.intervalMs, sweep), sweep };
}
