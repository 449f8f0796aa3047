import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';
import { amqpTopology, type AmqpTopology } from '@taskbox/shared';
import { taskTypeList } from '@taskbox/tasks';

export function amqpUrl(): string {
  const url = process.env.TASKBOX_TEST_AMQP_URL;
  if (!url) throw new Error('TASKBOX_TEST_AMQP_URL is not set: run tests through jest (global-setup.ts)');
  return url;
}

/** A random AMQP_PREFIX, so each test file has its own exchanges and queues on the shared broker. */
export function testPrefix(): string {
  return `test-${randomBytes(4).toString('hex')}.`;
}

/** The topology the services declare for a prefix: a queue for each queue the registered types name. */
export function testTopology(prefix: string): AmqpTopology {
  return amqpTopology(prefix, taskTypeList);
}

/** Removes a prefix's topology. Quorum queues refuse ifUnused/ifEmpty, so the deletes are plain. */
export async function deleteTopology(prefix: string): Promise<void> {
  const topology = testTopology(prefix);
  const connection = await amqp.connect(amqpUrl());
  try {
    const ch = await connection.createChannel();
    for (const q of topology.queues) {
      await ch.deleteQueue(q.queue);
      await ch.deleteQueue(q.deadQueue);
      await ch.deleteExchange(q.deadExchange);
    }
    await ch.deleteExchange(topology.exchange);
    await ch.close();
  } finally {
    await connection.close();
  }
}

/**
 * Consumes and acks messages from a queue until `expected` arrived or none came for `idleMs`.
 * (basic.get costs a round trip per message, which is slow on quorum queues.)
 */
export async function drainQueue(queue: string, expected = Infinity, idleMs = 500): Promise<amqp.ConsumeMessage[]> {
  const connection = await amqp.connect(amqpUrl());
  try {
    const ch = await connection.createChannel();
    await ch.prefetch(500);
    const messages: amqp.ConsumeMessage[] = [];
    await new Promise<void>((resolve) => {
      let idle = setTimeout(resolve, idleMs);
      void ch.consume(queue, (m) => {
        if (!m) return resolve();
        messages.push(m);
        ch.ack(m);
        clearTimeout(idle);
        if (messages.length >= expected) resolve();
        else idle = setTimeout(resolve, idleMs);
      });
    });
    await ch.close();
    return messages;
  } finally {
    await connection.close();
  }
}
