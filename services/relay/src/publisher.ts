import type { ChannelModel, ConfirmChannel, Message, Options } from 'amqplib';
import {
  assertTopology,
  inspectQueue,
  queueOfType,
  taskMessageSchema,
  toError,
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
  /**
   * amqplib recovery calls this after every (re)connect: topology, then a fresh confirm channel.
   * `rebuild` asks for that again when the broker closes the channel or keeps returning publishes.
   */
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
 * How long the broker may nack every publish before the relay rebuilds its connection (new channels).
 * RabbitMQ 3.10 was seen (test/chaos/rabbit-cluster.test.ts) to nack every publish, for good, on a
 * channel opened while the quorum queue was electing a new leader after a node died, while a new
 * channel on the same connection was acked at once.
 */
const NACKED_REBUILD_MS = 2000;

/**
 * Publishes outbox rows on a confirm channel. A row counts as published only when the broker acked it
 * and did not return it first: with `mandatory`, an unroutable message is returned before its ack,
 * so an ack alone is not proof it reached a queue. A closed channel or a confirm timeout leaves the row
 * unconfirmed, which means "publish again later", never "done".
 */
export function createPublisher(topology: AmqpTopology, confirmTimeoutMs: number, logger: Logger): Publisher {
  let channel: ConfirmChannel | null = null;
  let model: ChannelModel | null = null;
  let rebuildChannel: (reason: string) => void = () => undefined;
  // Since when every batch has had a message returned as unroutable; null while they route.
  let unroutableSince: number | null = null;
  // Since when the broker has nacked every publish; null while it confirms some.
  let nackedSince: number | null = null;
  // The broker blocked the connection (a memory or disk alarm): publishes would wait for the alarm.
  let blocked = false;
  // Types returned as unroutable because no queue of this relay's topology takes them: warned once each.
  const unknownTypes = new Set<string>();

  /** After each batch: how many messages came back unroutable, and how many reached the queue. */
  function noteReturns(returnedKeys: string[], routed: number): void {
    for (const key of returnedKeys.filter((k) => !queueOfType(topology, k) && !unknownTypes.has(k))) {
      unknownTypes.add(key);
      logger.warn('publishes of a type no queue is bound to come back unroutable; they stay in the outbox', {
        type: key,
        hint: 'a relay or worker that knows this type declares its binding when it connects',
      });
    }
    const returned = returnedKeys.filter((k) => queueOfType(topology, k)).length;
    if (returned === 0) {
      if (routed > 0 && unroutableSince !== null) {
        logger.info('publishes reach the queue again');
        unroutableSince = null;
      }
      return;
    }
    if (unroutableSince === null) {
      unroutableSince = Date.now();
      logger.warn('publishes returned as unroutable: a queue or its binding is missing', {
        queues: topology.queues.map((q) => q.queue),
      });
    } else if (Date.now() - unroutableSince >= UNROUTABLE_REBUILD_MS) {
      rebuildChannel(`publishes returned as unroutable for ${UNROUTABLE_REBUILD_MS} ms`);
    }
  }

  function noteNacks(nacked: number, confirmed: number): void {
    if (nacked === 0 || confirmed > 0) {
      nackedSince = null;
      return;
    }
    nackedSince ??= Date.now();
    if (Date.now() - nackedSince >= NACKED_REBUILD_MS) {
      rebuildChannel(`every publish nacked by the broker for ${NACKED_REBUILD_MS} ms`);
    }
  }

  return {
    async setup(m, rebuild) {
      const ch = await m.createConfirmChannel();
      // A channel error is the broker closing this channel (a 404 on a deleted exchange, say).
      ch.on('error', (err: Error) => rebuild(`publish channel closed by the broker: ${err.message}`));
      ch.on('close', () => {
        if (channel === ch) channel = null;
      });
      await assertTopology(ch, topology, m);
      m.on('blocked', () => (blocked = true));
      m.on('unblocked', () => (blocked = false));
      blocked = false;
      channel = ch;
      model = m;
      rebuildChannel = rebuild;
      unroutableSince = null;
      nackedSince = null;
    },
    connected: () => channel !== null && !blocked,
    ready: () => channel !== null && !blocked && unroutableSince === null,
    async readyMessages() {
      const counts = new Map<string, number>();
      for (const q of topology.queues) {
        if (!model || !channel) return null;
        const queue = await inspectQueue(model, q.queue).catch(() => undefined);
        if (queue === undefined) return null; // no answer: decide on the next pass
        if (queue === null) {
          rebuildChannel(`queue ${q.queue} is missing`);
          return null;
        }
        counts.set(q.name, queue.messageCount);
      }
      return counts;
    },
    async publishBatch(rows) {
      const ch = channel;
      if (!ch) return { published: [], failed: rows.map((r) => ({ id: r.id, error: 'not connected to rabbitmq' })) };

      const outcome = new Map<string, string | null>();
      // Message id → routing key of each message the broker returned as unroutable.
      const returned = new Map<string, string>();
      let nacked = 0;
      let allSettled: () => void = () => undefined;
      const settledPromise = new Promise<void>((resolve) => (allSettled = resolve));
      const conclude = (id: string, error: string | null): void => {
        if (outcome.has(id)) return;
        outcome.set(id, error);
        if (outcome.size === rows.length) allSettled();
      };
      const failRemaining = (error: string): void => rows.forEach((r) => conclude(r.id, error));
      const onReturn = (msg: Message): void => {
        if (typeof msg.properties.messageId === 'string') returned.set(msg.properties.messageId, msg.fields.routingKey);
      };
      const onClose = (): void => failRemaining('channel closed before confirm');
      ch.on('return', onReturn);
      ch.once('close', onClose);
      const timer = setTimeout(() => failRemaining(`no confirm within ${confirmTimeoutMs} ms`), confirmTimeoutMs);
      try {
        for (const row of rows) {
          if (outcome.size === rows.length) break; // the channel closed or the confirm wait timed out
          const confirmed = (err: unknown): void => {
            if (err) {
              nacked++;
              conclude(row.id, `nacked by broker: ${toError(err).message}`);
            } else conclude(row.id, returned.has(row.message_id) ? UNROUTABLE : null);
          };
          try {
            const body = Buffer.from(JSON.stringify(row.payload));
            const writable = ch.publish(topology.exchange, row.routing_key, body, messageOptions(row), confirmed);
            // Backpressure: amqplib buffers what the socket cannot take; wait until it drains.
            if (!writable) await drainedOrClosed(ch, settledPromise);
          } catch (err) {
            conclude(row.id, `publish failed: ${toError(err).message}`);
          }
        }
        if (rows.length === 0) allSettled();
        await settledPromise;
      } finally {
        clearTimeout(timer);
        ch.off('return', onReturn);
        ch.off('close', onClose);
      }
      const result: PublishResult = { published: [], failed: [] };
      for (const [id, error] of outcome) {
        if (error === null) result.published.push(id);
        else result.failed.push({ id, error });
      }
      noteReturns([...returned.values()], result.published.length);
      noteNacks(nacked, result.published.length);
      return result;
    },
  };
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
