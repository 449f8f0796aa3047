import type { ChannelModel, ConfirmChannel, Message, Options } from 'amqplib';
import {
  assertTopology,
  inspectQueue,
  NACKED,
  queueOfType,
  taskMessageSchema,
  toError,
  UNCONFIRMED,
  UNROUTABLE,
  type AmqpTopology,
  type AmqpSetup,
  type Logger,
} from '@taskbox/shared';
import type { ClaimedRow } from './outbox-sql';

export interface PublishResult {
  published: string[];
  failed: { id: string; error: string }[];
}

export interface Publisher {
  /** After every (re)connect: topology, then a fresh confirm channel; `rebuild` asks for that again. */
  setup: AmqpSetup;
  /** A channel is open and the broker does not block the connection: the relay may claim and publish. */
  connected(): boolean;
  /** Connected and its publishes reach the queue (/readyz). */
  ready(): boolean;
  /** Ready messages in each queue, by queue name (passive declares), or null when it cannot tell now. */
  readyMessages(): Promise<Map<string, number> | null>;
  /** Publishes the rows and resolves when every one is confirmed, returned, nacked or timed out. */
  publishBatch(rows: ClaimedRow[]): Promise<PublishResult>;
}

/**
 * How long publishes may keep coming back unroutable before the relay rebuilds its connection, which
 * declares the topology again on new channels. The relay declared a binding for every type it knows,
 * so a return of such a type means its queue or binding is gone (deleted by hand, or a broker that lost
 * it): the worker declares it again when it reconnects, so a short grace lets that happen first, and
 * then the relay does it itself. A type the relay does not know (an api deployed with a new type before
 * the relay) is not counted: declaring again would not bind it. Its row stays in the outbox, retried
 * with backoff, until a relay or worker that knows the type has declared its binding.
 */
const UNROUTABLE_REBUILD_MS = 2000;

/**
 * How long the broker may nack every publish, or leave it unconfirmed (a silent node, until the
 * heartbeat notices), before the relay rebuilds its connection (new channels). RabbitMQ 3.10 was seen
 * (test/chaos/rabbit-cluster.test.ts) to nack every publish, for good, on a channel opened while the
 * quorum queue was electing a leader after a node died; a new channel was acked at once.
 */
const NACKED_REBUILD_MS = 2000;

/**
 * Publishes outbox rows on a confirm channel. A row counts as published only when the broker acked it
 * and did not return it first: with `mandatory`, an unroutable message is returned before its ack,
 * so an ack alone is not proof it reached a queue. A closed channel or a confirm timeout leaves the row
 * unconfirmed, which means "publish again later", never "done".
 */
export function createPublisher(topology: AmqpTopology, confirmTimeoutMs: number, logger: Logger): Publisher {
  const state: PublisherState = {
    topology,
    confirmTimeoutMs,
    logger,
    channel: null,
    model: null,
    rebuildChannel: () => undefined,
    unroutableSince: null,
    nackedSince: null,
    refusing: false,
    blocked: false,
    unknownTypes: new Set<string>(),
  };
  return {
    setup: (m, rebuild) => setupChannel(state, m, rebuild),
    connected: () => state.channel !== null && !state.blocked,
    ready: () => state.channel !== null && !state.blocked && state.unroutableSince === null && !state.refusing,
    readyMessages: () => readyMessages(state),
    publishBatch: (rows) => publishBatch(state, rows),
  };
}

interface PublisherState {
  topology: AmqpTopology;
  confirmTimeoutMs: number;
  logger: Logger;
  channel: ConfirmChannel | null;
  model: ChannelModel | null;
  rebuildChannel: (reason: string) => void;
  // Since when every batch has had a message returned as unroutable; null while they route.
  unroutableSince: number | null;
  // Since when the broker has nacked every publish, timing the next rebuild; a new channel starts it again.
  nackedSince: number | null;
  // The last batch was all nacked or unconfirmed: /readyz is 503, through rebuilds too, until the broker
  // confirms a publish again (the relay retries those rows with backoff, so one comes).
  refusing: boolean;
  // The broker blocked the connection (a memory or disk alarm): publishes would wait for the alarm.
  blocked: boolean;
  // Types returned as unroutable because no queue of this relay's topology takes them: warned once each.
  unknownTypes: Set<string>;
}

async function setupChannel(state: PublisherState, m: ChannelModel, rebuild: (reason: string) => void): Promise<void> {
  const ch = await m.createConfirmChannel();
  // A channel error is the broker closing this channel (a 404 on a deleted exchange, say).
  ch.on('error', (err: Error) => rebuild(`publish channel closed by the broker: ${err.message}`));
  ch.on('close', () => {
    if (state.channel === ch) state.channel = null;
  });
  await assertTopology(ch, state.topology, m);
  m.on('blocked', () => (state.blocked = true));
  m.on('unblocked', () => (state.blocked = false));
  state.blocked = false;
  state.channel = ch;
  state.model = m;
  state.rebuildChannel = rebuild;
  state.unroutableSince = null;
  state.nackedSince = null;
}

async function readyMessages(state: PublisherState): Promise<Map<string, number> | null> {
  const counts = new Map<string, number>();
  for (const q of state.topology.queues) {
    if (!state.model || !state.channel) return null;
    const queue = await inspectQueue(state.model, q.queue).catch(() => undefined);
    if (queue === undefined) return null; // no answer: decide on the next pass
    if (queue === null) {
      state.rebuildChannel(`queue ${q.queue} is missing`);
      return null;
    }
    counts.set(q.name, queue.messageCount);
  }
  return counts;
}

/** After each batch: how many messages came back unroutable, and how many reached the queue. */
function noteReturns(state: PublisherState, returnedKeys: string[], routed: number): void {
  const { topology, logger } = state;
  for (const key of returnedKeys.filter((k) => !queueOfType(topology, k) && !state.unknownTypes.has(k))) {
    state.unknownTypes.add(key);
    logger.warn('publishes of a type no queue is bound to come back unroutable; they stay in the outbox', {
      type: key,
      hint: 'a relay or worker that knows this type declares its binding when it connects',
    });
  }
  const returned = returnedKeys.filter((k) => queueOfType(topology, k)).length;
  if (returned === 0) {
    if (routed > 0 && state.unroutableSince !== null) {
      logger.info('publishes reach the queue again');
      state.unroutableSince = null;
    }
    return;
  }
  if (state.unroutableSince === null) {
    state.unroutableSince = Date.now();
    logger.warn('publishes returned as unroutable: a queue or its binding is missing', {
      queues: topology.queues.map((q) => q.queue),
    });
  } else if (Date.now() - state.unroutableSince >= UNROUTABLE_REBUILD_MS) {
    state.rebuildChannel(`publishes returned as unroutable for ${UNROUTABLE_REBUILD_MS} ms`);
  }
}

function noteNacks(state: PublisherState, nacked: number, confirmed: number): void {
  state.refusing = nacked > 0 && confirmed === 0;
  if (!state.refusing) {
    state.nackedSince = null;
    return;
  }
  state.nackedSince ??= Date.now();
  if (Date.now() - state.nackedSince >= NACKED_REBUILD_MS) {
    state.rebuildChannel(`every publish nacked or unconfirmed for ${NACKED_REBUILD_MS} ms`);
  }
}

/** One batch on its way: each row's outcome as it is settled, and what the broker returned or nacked. */
interface BatchConfirms {
  size: number;
  /** Row id → null when confirmed, else why it was not. */
  outcome: Map<string, string | null>;
  // Message id → routing key of each message the broker returned as unroutable.
  returned: Map<string, string>;
  nacked: number;
  /** Resolves once every row has an outcome. */
  settled: Promise<void>;
  allSettled: () => void;
}

function createBatchConfirms(size: number): BatchConfirms {
  let allSettled: () => void = () => undefined;
  const settled = new Promise<void>((resolve) => (allSettled = resolve));
  return { size, outcome: new Map(), returned: new Map(), nacked: 0, settled, allSettled };
}

/** Settles one row; the first outcome counts (a confirm after a timeout changes nothing). */
function conclude(batch: BatchConfirms, id: string, error: string | null): void {
  if (!batch.outcome.has(id)) batch.outcome.set(id, error);
  if (batch.outcome.size === batch.size) batch.allSettled();
}

async function publishBatch(state: PublisherState, rows: ClaimedRow[]): Promise<PublishResult> {
  const ch = state.channel;
  if (!ch) return { published: [], failed: rows.map((r) => ({ id: r.id, error: 'not connected to rabbitmq' })) };

  const batch = createBatchConfirms(rows.length);
  const failRemaining = (error: string): void => rows.forEach((r) => conclude(batch, r.id, error));
  const onReturn = (msg: Message): void => {
    if (typeof msg.properties.messageId === 'string')
      batch.returned.set(msg.properties.messageId, msg.fields.routingKey);
  };
  const onClose = (): void => failRemaining('channel closed before confirm');
  ch.on('return', onReturn);
  ch.once('close', onClose);
  const { confirmTimeoutMs } = state;
  const timedOut = `${UNCONFIRMED} ${confirmTimeoutMs} ms`;
  const timer = setTimeout(() => failRemaining(timedOut), confirmTimeoutMs);
  try {
    await publishRows(state, ch, rows, batch);
    if (rows.length === 0) batch.allSettled();
    await batch.settled;
  } finally {
    clearTimeout(timer);
    ch.off('return', onReturn);
    ch.off('close', onClose);
  }
  const result: PublishResult = { published: [], failed: [] };
  for (const [id, error] of batch.outcome) {
    if (error === null) result.published.push(id);
    else result.failed.push({ id, error });
  }
  noteReturns(state, [...batch.returned.values()], result.published.length);
  const unconfirmed = result.failed.filter((f) => f.error === timedOut).length;
  noteNacks(state, batch.nacked + unconfirmed, result.published.length);
  return result;
}

/** Publishes each row with its confirm callback, until all are sent or the batch settled early. */
async function publishRows(
  state: PublisherState,
  ch: ConfirmChannel,
  rows: ClaimedRow[],
  batch: BatchConfirms,
): Promise<void> {
  for (const row of rows) {
    if (batch.outcome.size === rows.length) break; // the channel closed or the confirm wait timed out
    const confirmed = (err: unknown): void => {
      if (err) {
        batch.nacked++;
        conclude(batch, row.id, `${NACKED}: ${toError(err).message}`);
      } else conclude(batch, row.id, batch.returned.has(row.message_id) ? UNROUTABLE : null);
    };
    try {
      const body = Buffer.from(JSON.stringify(row.payload));
      const writable = ch.publish(state.topology.exchange, row.routing_key, body, messageOptions(row), confirmed);
      // Backpressure: amqplib buffers what the socket cannot take; wait until it drains.
      if (!writable) await drainedOrClosed(ch, batch.settled);
    } catch (err) {
      conclude(batch, row.id, `publish failed: ${toError(err).message}`);
    }
  }
}

/** The message properties of docs/design.md ("Names on the wire"), mandatory. */
function messageOptions(row: ClaimedRow): Options.Publish {
  // Written by taskbox itself, so it parses; a row that did not would go out without the header, and
  // the worker dead-letters its body with the reason.
  const body = taskMessageSchema.safeParse(row.payload);
  return {
    messageId: row.message_id,
    correlationId: row.headers.correlationId,
    type: row.routing_key,
    contentType: 'application/json',
    persistent: true,
    mandatory: true,
    timestamp: Math.floor(Date.now() / 1000),
    headers: {
      'x-task-id': row.task_id,
      'x-attempt': body.success ? body.data.attempt : undefined,
      ...(row.headers.traceparent ? { traceparent: row.headers.traceparent } : {}),
    },
  };
}

/**
 * Resolves when the channel drains or closes, or when the batch is settled anyway (its confirm wait
 * timed out: a broker that blocked the connection never drains it, and the relay must not wait for it).
 */
function drainedOrClosed(ch: ConfirmChannel, settled: Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      ch.off('drain', done);
      ch.off('close', done);
      resolve();
    };
    ch.once('drain', done);
    ch.once('close', done);
    void settled.then(done);
  });
}
