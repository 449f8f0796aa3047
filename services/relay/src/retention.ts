import type pg from 'pg';
import { createPeriodic, toError, type Db, type Logger, type Service } from '@taskbox/shared';
import { deletePublished } from './outbox-sql';
import { deleteFinishedAttempts, deleteFinishedTasks } from './task-sql';

export interface Retention extends Service {
  /** One full sweep now, unless another relay's is running; start() runs one every intervalMs. */
  sweep(): Promise<void>;
}

export interface RetentionOptions {
  /** Published outbox rows older than this are deleted. */
  outboxMs: number;
  /** Finished task attempts older than this are deleted. */
  attemptsMs: number;
  /** Tasks that finished longer ago than this are deleted, with their attempts. */
  tasksMs: number;
  intervalMs: number;
}

const BATCH = 1000;

// The session advisory lock a sweep holds, so that with N relays one deletes at a time (and the
// others do not fight it for the same rows). Any fixed number, taskbox's own.
export const RETENTION_LOCK = 7_126_011;

/**
 * Deletes published outbox rows, finished task attempts and finished tasks older than their
 * retention, in batches of 1 000, each its own short statement, so no transaction holds many locks or
 * holds back vacuum, and inserts go on meanwhile. This is the only place that deletes any of them.
 */
export function createRetention(db: Db, pool: pg.Pool, options: RetentionOptions, logger: Logger): Retention {
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
    // The lock lives in this one session; the batches run on other pooled connections meanwhile.
    const holder = await pool.connect().catch((err: unknown) => {
      logger.warn('retention could not reach Postgres; will try again', { error: toError(err).message });
      return null;
    });
    if (!holder) return;
    let broken: Error | undefined;
    try {
      const { rows } = await holder.query<{ got: boolean }>('SELECT pg_try_advisory_lock($1) AS got', [RETENTION_LOCK]);
      if (!rows[0]?.got) return;
      try {
        await deleteAll('published outbox rows', options.outboxMs, deletePublished, signal);
        await deleteAll('finished task attempts', options.attemptsMs, deleteFinishedAttempts, signal);
        await deleteAll('finished tasks', options.tasksMs, deleteFinishedTasks, signal);
      } finally {
        await holder.query('SELECT pg_advisory_unlock($1)', [RETENTION_LOCK]);
      }
    } catch (err) {
      // The lock's session may still hold it, or a query may still be in flight on it: closing the
      // connection ends both, where handing it back to the pool would keep the lock for good.
      broken = toError(err);
      logger.warn('retention sweep failed; will try again', { error: broken.message });
    } finally {
      holder.release(broken);
    }
  }

  return { ...createPeriodic(options.intervalMs, sweep), sweep };
}
