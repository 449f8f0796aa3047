import {
  createPeriodic,
  toError,
  type AmqpTopology,
  type Db,
  type Logger,
  type QueueRoute,
  type Service,
} from '@taskbox/shared';
import type { RelayMetrics } from './metrics';
import { publishedSince } from './outbox-sql';
import { republishStranded } from './task-sql';
import type { Publisher } from './publisher';

export interface Reconciler extends Service {
  /** One pass now; returns how many tasks it republished. start() runs one every interval. */
  reconcile(signal?: AbortSignal): Promise<number>;
}

export interface ReconcilerOptions {
  db: Db;
  publisher: Publisher;
  /** The queues to watch, each with the types whose tasks it carries. */
  topology: AmqpTopology;
  logger: Logger;
  metrics: RelayMetrics;
  /** REPUBLISH_AFTER_MS: how long after its last publish an unstarted pending task counts as stranded. */
  afterMs: number;
  /** Called after a pass wrote outbox rows, so the relay loop publishes them now. */
  wake(): void;
}

// While a queue holds more ready messages than the window published to it, a task counts as stranded only this many times later.
const BACKLOG_FACTOR = 12;
const BATCH = 500;

/**
 * No task stays pending for good: the broker can lose what it holds (a purged or deleted queue, a
 * message dead-lettered at its delivery limit, a single node's lost volume), and then nothing else
 * would ever run the task. This republishes such tasks (republishStranded).
 *
 * The rule that keeps it from doubling a legitimate backlog. The queue is FIFO: if a message published
 * before the window (REPUBLISH_AFTER_MS) were still waiting in it, so would be every message published
 * after it, and the queue would hold more ready messages than were published within the window. So
 * when it holds no more than that, no message older than the window is waiting, and a task whose
 * message is older and that no worker started was lost (a worker starts every delivery it receives at
 * once). When the queue holds more (the workers are behind, or none runs), a task may simply be waiting
 * its turn, and counts as stranded only after 12 times as long (an hour by default): a lost message in
 * a long backlog is still found, and a task waiting in it is republished at most once per that bound,
 * whose duplicate the worker drops as stale. One cutoff time serves both the count of recent publishes
 * and which tasks are old enough, so no message is counted as recent and then republished as old; and
 * the count is read before the queue, so that publishes in between can only make the rule stricter.
 *
 * The rule holds per queue: each is FIFO on its own, so each queue's ready messages are compared with
 * the publishes of its own types, and a backlog of reports never delays finding a lost echo.
 */
export function createReconciler(options: ReconcilerOptions): Reconciler {
  const state: ReconcilerState = { ...options, failing: false };
  // Often enough that a stranded task waits little more than afterMs; at least once a minute.
  const intervalMs = Math.min(60_000, Math.max(250, Math.floor(options.afterMs / 4)));
  return {
    ...createPeriodic(intervalMs, (signal) => pass(state, signal)),
    reconcile: (signal) => reconcile(state, signal),
  };
}

interface ReconcilerState extends ReconcilerOptions {
  /** The last pass failed: logged once, until a pass works again. */
  failing: boolean;
}

/** Republishes the stranded tasks of one queue, given its ready messages and its recent publishes. */
async function reconcileQueue(
  state: ReconcilerState,
  queue: QueueRoute,
  window: { cutoff: string; ready: number; recent: number },
  signal?: AbortSignal,
): Promise<number> {
  const { afterMs } = state;
  const caughtUp = window.ready <= window.recent;
  const quietMs = caughtUp ? afterMs : afterMs * BACKLOG_FACTOR;
  const before = { cutoff: window.cutoff, extraMs: quietMs - afterMs };
  const reason = caughtUp
    ? `queue ${queue.name} holds no message older than ${afterMs} ms`
    : `overdue behind ${window.ready} ready messages in queue ${queue.name}`;
  let total = 0;
  let batch;
  do {
    batch = await republishStranded(state.db, before, queue.types, BATCH);
    for (const { message, correlationId } of batch) {
      state.logger.warn('stranded task republished', {
        taskId: message.task_id,
        messageId: message.message_id,
        correlationId,
        reason,
        publishedMoreThanMsAgo: quietMs,
      });
    }
    state.metrics.republished.inc({ queue: queue.name, state: caughtUp ? 'caught-up' : 'backlog' }, batch.length);
    total += batch.length;
  } while (batch.length === BATCH && !signal?.aborted);
  return total;
}

async function reconcile(state: ReconcilerState, signal?: AbortSignal): Promise<number> {
  const { cutoff, byType } = await publishedSince(state.db, state.afterMs);
  const ready = await state.publisher.readyMessages();
  // Not connected, or a queue is missing and being declared again: decide on the next pass.
  if (ready === null) return 0;
  let total = 0;
  for (const queue of state.topology.queues) {
    if (queue.types.length === 0) continue;
    const recent = queue.types.reduce((sum, type) => sum + (byType.get(type) ?? 0), 0);
    total += await reconcileQueue(state, queue, { cutoff, ready: ready.get(queue.name) ?? 0, recent }, signal);
  }
  if (total > 0) state.wake();
  return total;
}

async function pass(state: ReconcilerState, signal: AbortSignal): Promise<void> {
  const { logger } = state;
  try {
    await reconcile(state, signal);
    if (state.failing) logger.info('reconciler works again');
    state.failing = false;
  } catch (err) {
    state.metrics.reconcilerFailures.inc();
    if (!state.failing) logger.warn('reconciler pass failed; will try again', { error: toError(err).message });
    state.failing = true;
  }
}
