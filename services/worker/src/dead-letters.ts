import type { ConfirmChannel, ConsumeMessage, Message } from 'amqplib';
import { assertDeadPath, DELIVERY_LIMIT, toError, withTimeout, type Logger, type QueueRoute } from '@taskbox/shared';
import type { deadLetterCodes, WorkerMetrics } from './metrics';

/** Why a message goes to the dead-letter queue: a code for metrics and alerts, and what was wrong. */
export interface DeadLetterReason {
  code: (typeof deadLetterCodes)[number];
  detail?: string;
}

/** The x-dead-letter-reason header: the code, then the detail. */
const reasonHeader = (r: DeadLetterReason): string => (r.detail ? `${r.code}: ${r.detail}` : r.code);

// The longest id a delivery's own properties put in a log line: anyone who may publish to the queue
// could otherwise write a header of any size into every line about its message.
const LOGGED_ID_MAX = 200;

const loggedId = (value: unknown): string | undefined =>
  typeof value === 'string' ? value.slice(0, LOGGED_ID_MAX) : undefined;

/**
 * What a delivery says of itself, for the lines logged about it: its message id, its correlation id,
 * and the task the relay named in its headers, even when the body cannot be read.
 */
export function deliveryLogContext(msg: ConsumeMessage): Record<string, string | undefined> {
  return {
    messageId: loggedId(msg.properties.messageId),
    correlationId: loggedId(msg.properties.correlationId),
    taskId: loggedId(msg.properties.headers?.['x-task-id']),
  };
}

/** How long the broker may take to confirm a publish or a cancel before the worker stops waiting. */
export const BROKER_ANSWER_MS = 10_000;

/**
 * Publishes the message to its queue's dead-letter exchange with a reason header, then acks it; a
 * dead-letter queue deleted since the worker connected is declared again, rather than the message lost.
 * `current` says whether `ch` is still the consumer's channel: on one that has closed, the broker has
 * already requeued the message.
 */
export async function deadLetter(
  ch: ConfirmChannel,
  current: () => boolean,
  route: QueueRoute,
  msg: ConsumeMessage,
  why: DeadLetterReason,
  { metrics, log }: { metrics: WorkerMetrics; log: Logger },
): Promise<void> {
  const reason = reasonHeader(why);
  metrics.deadLetters.inc({ reason: why.code, queue: route.name });
  log.error('message dead-lettered', { reason, routingKey: msg.fields.routingKey });
  try {
    if (!(await publishDead(ch, route, msg, reason))) {
      // Its dead-letter queue was deleted (declared at every connect, not since): declared again.
      log.warn('dead-letter queue missing; declaring it again', { deadQueue: route.deadQueue });
      await assertDeadPath(ch, route);
      if (!(await publishDead(ch, route, msg, reason))) throw new Error(`no queue took it from ${route.deadExchange}`);
    }
    ch.ack(msg);
  } catch (err) {
    // The broker's own dead-lettering (queue's x-dead-letter-exchange) still keeps the message.
    log.warn('dead-letter publish failed; rejecting to the queue dead-letter exchange', {
      error: toError(err).message,
    });
    try {
      if (current()) ch.nack(msg, false, false);
    } catch {
      // The connection is closing: the broker requeues the message, and its redelivery is judged again.
    }
  }
}

/** Who waits for the messages a channel's broker returns: one listener a channel, however many wait. */
const returnWatchers = new WeakMap<ConfirmChannel, Set<(back: Message) => void>>();

function watchReturns(ch: ConfirmChannel, watcher: (back: Message) => void): () => void {
  let watchers = returnWatchers.get(ch);
  if (!watchers) {
    const all = new Set<(back: Message) => void>();
    ch.on('return', (back: Message) => all.forEach((w) => w(back)));
    returnWatchers.set(ch, all);
    watchers = all;
  }
  watchers.add(watcher);
  return () => watchers.delete(watcher);
}

/**
 * Publishes the message to its dead-letter exchange, mandatory, and waits for the confirm: false when
 * the broker returned it, no queue being bound there. The broker sends a return before its confirm.
 */
async function publishDead(
  ch: ConfirmChannel,
  route: QueueRoute,
  msg: ConsumeMessage,
  reason: string,
): Promise<boolean> {
  let routed = true;
  const stopWatching = watchReturns(ch, (back) => {
    if (back.fields.exchange === route.deadExchange && back.content.equals(msg.content)) routed = false;
  });
  try {
    const headers = { ...msg.properties.headers, 'x-dead-letter-reason': reason };
    const confirmed = new Promise<void>((resolve, reject) => {
      ch.publish(
        route.deadExchange,
        msg.fields.routingKey,
        msg.content,
        { ...msg.properties, headers, mandatory: true },
        (err) => (err ? reject(toError(err)) : resolve()),
      );
    });
    await withTimeout(confirmed, BROKER_ANSWER_MS, 'dead-letter confirm');
    return routed;
  } finally {
    stopWatching();
  }
}

/**
 * The deliveries of one message in a row that may end in an unexpected error before it is
 * dead-lettered with that error as its reason: an error that comes back five times, a second apart,
 * is not passing, and in the dead-letter queue an operator sees it (the doctor counts dead letters) and
 * `npm run redrive` brings it back once mended. Without this the broker's delivery limit would drop it
 * there twenty deliveries on, with no reason. An unavailable Postgres is held, not counted
 * (whilePostgresDown).
 */
export const UNHANDLED_IN_A_ROW = 5;

// Past this many messages failing at once, the oldest count is forgotten: memory stays bounded, and
// the broker's delivery limit still stops such a message.
const COUNTS_KEPT = 10_000;

/**
 * Counts, per message, this worker's unexpected failures in a row. The broker's x-delivery-count
 * cannot: it also counts every return at a shutdown, a reconnect or a lost lease. Kept in this process
 * only, so a message that fails in several workers is counted in each.
 */
export interface UnhandledCounts {
  /**
   * One more failure of the message; true when that makes UNHANDLED_IN_A_ROW (its count is then
   * dropped), or when its return would reach the queue's delivery limit, where the broker would
   * dead-letter it without a reason (counted in several workers, it may never reach five in one).
   */
  failed(msg: ConsumeMessage): boolean;
  /** A delivery of the message was handled: it starts again from none. */
  handled(msg: ConsumeMessage): void;
}

export function createUnhandledCounts(): UnhandledCounts {
  const counts = new Map<string, number>();
  // The message id; a message without one (not the relay's) by its body.
  const keyOf = (msg: ConsumeMessage): string =>
    typeof msg.properties.messageId === 'string' ? msg.properties.messageId : `body:${msg.content.toString('base64')}`;
  return {
    failed(msg) {
      const returned: unknown = msg.properties.headers?.['x-delivery-count'];
      if (typeof returned === 'number' && returned + 1 >= DELIVERY_LIMIT) return true;
      const key = keyOf(msg);
      const n = (counts.get(key) ?? 0) + 1;
      counts.delete(key);
      if (n >= UNHANDLED_IN_A_ROW) return true;
      counts.set(key, n);
      if (counts.size > COUNTS_KEPT) counts.delete(counts.keys().next().value as string);
      return false;
    },
    handled: (msg) => void counts.delete(keyOf(msg)),
  };
}
