import { OUTBOX_CHANNEL } from './outbox';
import type pg from 'pg';
import { toError } from './errors';
import type { Logger } from './logger';

/** The NOTIFY channel that tells api processes which tasks changed (payload: comma-separated ids). */
export const TASK_CHANNEL = 'taskbox_task';

// Postgres rejects NOTIFY payloads of 8000 bytes or more; 200 uuids with commas are 7 399 bytes.
const IDS_PER_NOTIFY = 200;

interface Coalescer {
  send(keys: readonly string[]): void;
  stop(): Promise<void>;
}

/**
 * Sends NOTIFYs after commits, coalesced: at most one in flight per process, and one more after it
 * carrying everything that was committed meanwhile.
 *
 * Why not pg_notify inside the transaction that made the change: NOTIFY takes a cluster-wide lock from
 * pre-commit until the commit is flushed (async.c, PreCommit_Notify), which serializes every commit
 * that notifies: pgbench ran half as many transactions with pg_notify inside. Every listener also polls or times out, so a NOTIFY that fails (Postgres
 * restarting) costs latency, never correctness. (The api's insert is the exception: requests that
 * arrive together already share one statement, so its NOTIFY rides inside it; see insertTasks.)
 */
interface NotifyStatement {
  /** Prepared under this name: it runs after most writes, and each connection parses and plans it once. */
  name: string;
  /** Sends `$2` (payloads) on channel `$1`. */
  text: string;
}

function createCoalescer(pool: pg.Pool, channel: string, logger: Logger, statement: NotifyStatement): Coalescer {
  let inFlight: Promise<void> | null = null;
  let poked = false;
  let queued = new Set<string>();
  const flush = (): void => {
    const keys = [...queued];
    const payloads: string[] = [];
    for (let i = 0; i < keys.length; i += IDS_PER_NOTIFY) payloads.push(keys.slice(i, i + IDS_PER_NOTIFY).join(','));
    if (payloads.length === 0) payloads.push('');
    queued = new Set();
    poked = false;
    // One statement outside any transaction: each payload is delivered when it commits, at once.
    inFlight = pool
      .query({ ...statement, values: [channel, payloads] })
      .then(
        () => undefined,
        (err: unknown) => {
          logger.debug('notify failed; listeners will find the change by polling', {
            channel,
            error: toError(err).message,
          });
        },
      )
      .finally(() => {
        inFlight = null;
        if (poked) flush();
      });
  };
  return {
    send(keys) {
      for (const key of keys) queued.add(key);
      poked = true;
      if (!inFlight) flush();
    },
    async stop() {
      poked = false;
      queued.clear();
      while (inFlight) await inFlight;
    },
  };
}

export interface OutboxNotifier {
  /** Call after a commit that added outbox rows. */
  poke(): void;
  /** Resolves when no NOTIFY is in flight. */
  stop(): Promise<void>;
}

/** Wakes the relay after commits that added outbox rows. */
export function createOutboxNotifier(pool: pg.Pool, logger: Logger): OutboxNotifier {
  const coalescer = createCoalescer(pool, OUTBOX_CHANNEL, logger, {
    name: 'shared_notify',
    text: 'SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p',
  });
  return { poke: () => coalescer.send([]), stop: () => coalescer.stop() };
}

export interface TaskNotifier {
  /** Call after a commit that changed these tasks' status, step or progress. */
  changed(...taskIds: string[]): void;
  /** Resolves when no NOTIFY is in flight. */
  stop(): Promise<void>;
}

/**
 * Tells long-polling api requests (in every api process) that tasks changed; sends nothing while no api
 * process has a request waiting (no fresh row in task_watchers, migration 0010). A read-only statement
 * then: no transaction id, no WAL flush, no notify lock, where a NOTIFY is a commit of its own.
 *
 * Why a waiter cannot miss a change: the statement runs after the change committed, and reads
 * task_watchers at its own start. An api process commits its row BEFORE a waiter's first read of the task
 * (watcher-registration.ts). If this statement did not see the row, the row committed after it began,
 * so after the change: the waiter's first read, later still, sees the change. If it saw the row, the
 * NOTIFY goes out, and the api's LISTEN (open since it started) gets it.
 */
export function createTaskNotifier(pool: pg.Pool, logger: Logger): TaskNotifier {
  const coalescer = createCoalescer(pool, TASK_CHANNEL, logger, {
    name: 'shared_task_notify',
    text: `SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p
           WHERE EXISTS (SELECT 1 FROM task_watchers WHERE until > now())`,
  });
  return { changed: (...taskIds) => coalescer.send(taskIds), stop: () => coalescer.stop() };
}
