import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';
import { amqpNames } from '@taskbox/shared';

export function amqpUrl(): string {
  const url = process.env.TASKBOX_TEST_AMQP_URL;
  if (!url) throw new Error('TASKBOX_TEST_AMQP_URL is not set: run tests through jest (global-setup.ts)');
  return url;
}

/** A random AMQP_PREFIX, so each test file has its own exchanges and queues on the shared broker. */
export function testPrefix(): string {
  return `test-${randomBytes(4).toString('hex')}.`;
}

/** Removes a prefix's topology. Quorum queues refuse ifUnused/ifEmpty, so the deletes are plain. */
export async function deleteTopology(prefix: string): Promise<void> {
  const names = amqpNames(prefix);
  const connection = await amqp.connect(amqpUrl());
  try {
    const ch = await connection.createChannel();
    await ch.deleteQueue(names.queue);
    await ch.deleteQueue(names.deadQueue);
    await ch.deleteExchange(names.exchange);
    await ch.deleteExchange(names.deadExchange);
    await ch.close();
  } finally {
    await connection.close();
  }
}

/** Reads every message now in a queue (and acks it). */
export async function drainQueue(queue: string): Promise<amqp.GetMessage[]> {
  const connection = await amqp.connect(amqpUrl());
  try {
    const ch = await connection.createChannel();
    const messages: amqp.GetMessage[] = [];
    for (let m = await ch.get(queue); m; m = await ch.get(queue)) {
      messages.push(m);
      ch.ack(m);
    }
    await ch.close();
    return messages;
  } finally {
    await connection.close();
  }
}
