import type { ChannelModel, ConfirmChannel, Message } from 'amqplib';
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
      let settleAll: (error: string) => void = () => undefined;
      const allSettled = new Promise<void>((resolve) => {
        let left = rows.length;
        const settle = (row: ClaimedRow, error: string | null): void => {
          if (outcome.has(row.id)) return;
          outcome.set(row.id, error);
          if (--left === 0) resolve();
        };
        settleAll = (error) => rows.forEach((r) => settle(r, error));
        for (const row of rows) {
          const headers = row.headers;
          const options = {
            messageId: row.message_id,
            correlationId: headers.correlationId,
            type: row.routing_key,
            contentType: 'application/json',
            persistent: true,
            mandatory: true,
            timestamp: Math.floor(Date.now() / 1000),
            headers: {
              'x-task-id': row.task_id,
              'x-attempt': (row.payload as { attempt?: number }).attempt,
              ...(headers.traceparent ? { traceparent: headers.traceparent } : {}),
            },
          };
          const body = Buffer.from(JSON.stringify(row.payload));
          try {
            ch.publish(names.exchange, row.routing_key, body, options, (err) => {
              if (err) settle(row, `nacked by broker: ${toError(err).message}`);
              else settle(row, returned.has(row.message_id) ? 'returned as unroutable' : null);
            });
          } catch (err) {
            settle(row, `publish failed: ${toError(err).message}`);
          }
        }
        if (rows.length === 0) resolve();
      });
      const onReturn = (msg: Message): void => {
        if (typeof msg.properties.messageId === 'string') returned.add(msg.properties.messageId);
      };
      const onClose = (): void => settleAll('channel closed before confirm');
      ch.on('return', onReturn);
      ch.once('close', onClose);
      const timer = setTimeout(() => settleAll(`no confirm within ${confirmTimeoutMs} ms`), confirmTimeoutMs);
      try {
        await allSettled;
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
