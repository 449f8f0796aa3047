import {
  backoffMs,
  isStatementTimeout,
  isTransientDbError,
  PUBLISH_RETRY_BACKOFF,
  sleep,
  toError,
  UNAVAILABLE_BACKOFF,
  UNROUTABLE,
  type Db,
  type Logger,
  type Service,
} from '@taskbox/shared';
import { claimBatch, markPublished, msUntilNextDue, recordPublishFailure, type ClaimedRow } from './outbox-sql';
import type { Publisher, PublishResult } from './publisher';
import type { RelayMetrics } from './metrics';

export interface RelayLoopOptions {
  db: Db;
  publisher: Publisher;
  logger: Logger;
  metrics: RelayMetrics;
  batchSize: number;
  pollMs: number;
  leaseMs: number;
}

export interface RelayLoop extends Service {
  /** Finishes the batch in flight (publish, confirm, mark), then stops. */
  stop(): Promise<void>;
  /** Ask for a drain now (a NOTIFY arrived, or the broker came back). */
  wake(): void;
  /** False while drains fail (Postgres unavailable, or the outbox locked past the statement timeout). */
  draining(): boolean;
}

/**
 * The relay's state machine:
 *
 *   waiting ──wake / poll timer──▶ draining ──batch full──▶ draining
 *      ▲  ▲                           │ batch short
 *      │  └───────────────────────────┘
 *      └── broker not connected (its setup wakes the loop)
 *   draining ──error (db or broker)──▶ backing off ──delay──▶ draining
 *
 * A drain claims a batch, publishes it with confirms, marks the confirmed rows and releases the rest
 * with a per-row backoff. "waiting" lasts the poll interval, or less when an unpublished row falls due
 * sooner (a scheduled task, a retry's backoff): its timer is the wake-up nobody else sends. It does not claim while the broker is disconnected, so an outage costs no
 * publish attempts. One log line per change between healthy and failing, not one per try.
 * "draining" runs up to two drains side by side (see drainLanes).
 */
export function createRelayLoop(options: RelayLoopOptions): RelayLoop {
  const state: LoopState = {
    ...options,
    running: null,
    stopping: false,
    wakeRequested: false,
    wakeUp: null,
    publishFailing: false,
    stopController: new AbortController(),
    lastClaimAt: null,
    failures: 0,
  };
  return {
    async start() {
      if (state.running || state.stopping) return;
      state.running = run(state);
    },
    async stop() {
      state.stopping = true;
      state.stopController.abort();
      state.wakeUp?.();
      await state.running;
    },
    wake() {
      state.wakeRequested = true;
      state.wakeUp?.();
    },
    draining: () => state.failures === 0,
  };
}

interface LoopState extends RelayLoopOptions {
  running: Promise<void> | null;
  stopping: boolean;
  wakeRequested: boolean;
  /** Ends the current wait early; null while the loop is not waiting. */
  wakeUp: (() => void) | null;
  publishFailing: boolean;
  stopController: AbortController;
  /** When the drain's last claim that took rows ran (Postgres's clock), until idle() reads it. */
  lastClaimAt: string | null;
  /** Drains that failed in a row. */
  failures: number;
}

/**
 * One line when publishing starts failing and one when it works again; each row only at debug
 * (enough to follow one task, no cost at the default level), since a missing queue returns every
 * row on every try.
 */
function logBatch(state: LoopState, rows: ClaimedRow[], failed: PublishResult['failed']): void {
  const { logger } = state;
  if (failed.length > 0 && !state.publishFailing) {
    const first = rows.find((row) => row.id === failed[0]?.id);
    logger.warn('outbox rows not published; each is retried with backoff', {
      rows: failed.length,
      error: failed[0]?.error,
      // The first of them, to follow: the rest are at debug.
      outboxId: first?.id,
      messageId: first?.message_id,
      taskId: first?.task_id,
      correlationId: first?.headers.correlationId,
    });
  } else if (failed.length === 0 && state.publishFailing) logger.info('outbox rows publish again');
  state.publishFailing = failed.length > 0;
  if (logger.isDebugEnabled()) {
    const errors = new Map(failed.map((f) => [f.id, f.error]));
    for (const row of rows) {
      const error = errors.get(row.id);
      logger.debug(error === undefined ? 'message published' : 'outbox row not published; will retry', {
        outboxId: row.id,
        messageId: row.message_id,
        taskId: row.task_id,
        correlationId: row.headers.correlationId,
        ...(error === undefined ? {} : { error }),
      });
    }
  }
}

async function drainOnce(state: LoopState): Promise<{ claimed: number; failed: number }> {
  const { db, publisher, metrics } = state;
  if (!publisher.connected()) throw new Error('rabbitmq is not connected');
  const rows = await claimBatch(db, state.batchSize, state.leaseMs);
  const [first] = rows;
  if (!first) return { claimed: 0, failed: 0 };
  state.lastClaimAt = first.claimed_at;
  const endConfirm = metrics.confirmSeconds.startTimer();
  const { published, failed } = await publisher.publishBatch(rows);
  endConfirm();
  // One claim statement: every row carries its time.
  await markPublished(db, published, first.claimed_at);
  const attempts = new Map(rows.map((r) => [r.id, r.publish_attempts]));
  await recordPublishFailure(
    db,
    failed.map((f) => ({ ...f, retryInMs: backoffMs(attempts.get(f.id) ?? 1, PUBLISH_RETRY_BACKOFF) })),
  );
  metrics.batchSize.observe(rows.length);
  metrics.published.inc(published.length);
  metrics.publishFailures.inc(failed.length);
  logBatch(state, rows, failed);
  // An unroutable row (a type no queue is bound to yet) fails on every try, until a relay or worker
  // that knows its type binds it; its own backoff spaces its retries, and it must not end the lane
  // (and pause the drain) for the rows behind it.
  return { claimed: rows.length, failed: failed.filter((f) => f.error !== UNROUTABLE).length };
}

function waitForWake(state: LoopState, ms = state.pollMs): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      state.wakeUp = null;
      resolve();
    }
    state.wakeUp = done;
  });
}

/**
 * Drains batch after batch until one comes back short or has failures; returns the failures. Calls
 * `onFull` after each full batch (a backlog).
 */
async function drainLane(state: LoopState, onFull: () => void): Promise<number> {
  while (!state.stopping) {
    const { claimed, failed } = await drainOnce(state);
    if (failed > 0 || claimed < state.batchSize) return failed;
    onFull();
  }
  return 0;
}

/**
 * Two lanes drain at once, so that one claims and marks in Postgres while the other waits for its
 * confirms: the benchmark found half of a drain spent waiting for quorum-queue confirms. The second
 * lane starts only when the first claims a full batch (a backlog), so a wake-up for a single row
 * costs one claim, not two. Each lane marks only rows the broker confirmed to it; SKIP LOCKED and the
 * lease keep the lanes' batches disjoint. Two lanes may interleave their batches on the queue;
 * nothing relies on order across tasks (competing consumers reorder anyway), and one task's next
 * attempt is written only after its previous one finished. allSettled: both lanes are awaited (and
 * their failures handled) even when one fails first; a lane still running must not outlive this drain.
 */
async function drainLanes(state: LoopState): Promise<number> {
  let backlog: (found: boolean) => void = () => undefined;
  const backlogFound = new Promise<boolean>((resolve) => (backlog = resolve));
  const first = drainLane(state, () => backlog(true)).finally(() => backlog(false));
  const second = backlogFound.then((found) => (found ? drainLane(state, () => undefined) : 0));
  const results = await Promise.allSettled([first, second]);
  const rejected = results.find((r) => r.status === 'rejected');
  if (rejected) throw rejected.reason;
  return results.reduce((sum, r) => sum + (r.status === 'fulfilled' ? r.value : 0), 0);
}

/**
 * After a drain: waits until the next row falls due, at most a poll (also when that read fails). A row
 * that fell due after the drain's last claim, while it published, is due now: no wait.
 */
async function idle(state: LoopState): Promise<void> {
  const { pollMs } = state;
  const since = state.lastClaimAt;
  state.lastClaimAt = null;
  if (state.wakeRequested || state.stopping) return;
  const due = await msUntilNextDue(state.db, since).catch(() => null);
  // A wake-up that came during the read must not wait for the timer.
  if (state.wakeRequested || state.stopping) return;
  await waitForWake(state, due === null ? pollMs : Math.min(pollMs, Math.max(0, Math.ceil(due))));
}

async function run(state: LoopState): Promise<void> {
  const { logger, stopController } = state;
  while (!state.stopping) {
    state.wakeRequested = false;
    // Until the broker is connected there is nothing to do: its setup wakes the loop, and the
    // connection logs its own state changes.
    if (!state.publisher.connected()) {
      await waitForWake(state);
      continue;
    }
    try {
      const failed = await drainLanes(state);
      if (state.failures > 0) logger.info('relay recovered; publishing again', { after: state.failures });
      state.failures = 0;
      if (failed > 0) await sleep(backoffMs(1, PUBLISH_RETRY_BACKOFF), stopController.signal);
    } catch (err) {
      if (state.failures === 0) {
        logger.warn('relay cannot drain the outbox; backing off', {
          error: toError(err).message,
          database: databaseState(err),
        });
      }
      state.failures++;
      await sleep(backoffMs(state.failures, UNAVAILABLE_BACKOFF), stopController.signal);
      continue;
    }
    await idle(state);
  }
}

/** What a failed drain says of Postgres, for its log line. */
function databaseState(err: unknown): string {
  if (isStatementTimeout(err)) return 'statement timeout: the outbox is locked, or the server is busy';
  return isTransientDbError(err) ? 'unavailable' : 'ok';
}
