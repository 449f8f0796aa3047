import type { ChannelModel, ConfirmChannel, Message, Options } from 'amqplib';
import { assertTopology, toError, type AmqpNames, type Logger } from '@taskbox/shared';
import type { ClaimedRow } from './outbox-sql';

export interface PublishResult {
  published: string[];
  failed: { id: string; error: string }[];
}

export interface Publisher {
  /** amqplib recovery calls this after every (re)connect: topology, then a fresh confirm channel. */
  setup(model: ChannelModel): Promise<void>;
  ready(): boolean;
  /** Publishes the rows and resolves when every one is confirmed, returned, nacked or timed out. */
  publishBatch(rows: ClaimedRow[]): Promise<PublishResult>;
}

/**
 * Publishes outbox rows on a confirm channel. A row counts as published only when the broker acked it
 * and did not return it first: with `mandatory`, an unroutable message is returned before its ack,
 * so an ack alone is not proof it reached a queue. A closed channel or a confirm timeout leaves the row
 * unconfirmed, which means "publish again later", never "done".
 */
export function createPublisher(names: AmqpNames, confirmTimeoutMs: number, logger: Logger): Publisher {
  let channel: ConfirmChannel | null = null;

  return {
    async setup(model) {
      const ch = await model.createConfirmChannel();
      ch.on('error', (err: Error) => logger.warn('publish channel error', { error: err.message }));
      ch.on('close', () => {
        if (channel === ch) channel = null;
      });
      await assertTopology(ch, names);
      channel = ch;
    },
    ready: () => channel !== null,
    async publishBatch(rows) {
      const ch = channel;
      if (!ch) return { published: [], failed: rows.map((r) => ({ id: r.id, error: 'not connected to rabbitmq' })) };

      const outcome = new Map<string, string | null>();
      const returned = new Set<string>();
      let allSettled: () => void = () => undefined;
      const settledPromise = new Promise<void>((resolve) => (allSettled = resolve));
      const settle = (id: string, error: string | null): void => {
        if (outcome.has(id)) return;
        outcome.set(id, error);
        if (outcome.size === rows.length) allSettled();
      };
      const settleAll = (error: string): void => rows.forEach((r) => settle(r.id, error));
      const onReturn = (msg: Message): void => {
        if (typeof msg.properties.messageId === 'string') returned.add(msg.properties.messageId);
      };
      const onClose = (): void => settleAll('channel closed before confirm');
      ch.on('return', onReturn);
      ch.once('close', onClose);
      const timer = setTimeout(() => settleAll(`no confirm within ${confirmTimeoutMs} ms`), confirmTimeoutMs);
      try {
        for (const row of rows) {
          if (outcome.size === rows.length) break; // the channel closed or the confirm wait timed out
          const confirmed = (err: unknown): void => {
            if (err) settle(row.id, `nacked by broker: ${toError(err).message}`);
            else settle(row.id, returned.has(row.message_id) ? 'returned as unroutable' : null);
          };
          try {
            const body = Buffer.from(JSON.stringify(row.payload));
            const writable = ch.publish(names.exchange, row.routing_key, body, messageOptions(row), confirmed);
            // Backpressure: amqplib buffers what the socket cannot take; wait until it drains.
            if (!writable) await drainedOrClosed(ch);
          } catch (err) {
            settle(row.id, `publish failed: ${toError(err).message}`);
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
      return result;
    },
  };
}

/** The message properties DESIGN.md names: messageId, correlationId, type, persistent, mandatory... */
function messageOptions(row: ClaimedRow): Options.Publish {
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
      'x-attempt': (row.payload as { attempt?: number }).attempt,
      ...(row.headers.traceparent ? { traceparent: row.headers.traceparent } : {}),
    },
  };
}

function drainedOrClosed(ch: ConfirmChannel): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      ch.off('drain', done);
      ch.off('close', done);
      resolve();
    };
    ch.once('drain', done);
    ch.once('close', done);
  });
}
