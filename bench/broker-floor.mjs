// The broker's own latency, one message at a time: publish to a confirm, and publish to delivery, on
// a quorum queue as taskbox declares it and on a classic queue for contrast. A quorum queue confirms
// and delivers only after its log is fsynced, so this is the floor under commit → worker start.
import { performance } from 'node:perf_hooks';
import amqp from 'amqplib';
import { amqpUrl, randomName, sleep } from './lib/env.mjs';

const SAMPLES = 40;

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

async function probe(connection, type) {
  const queue = randomName(`bench-floor-${type}-`);
  const publisher = await connection.createConfirmChannel();
  const consumer = await connection.createChannel();
  await publisher.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': type } });
  const sentAt = new Map();
  const delivered = [];
  const confirmed = [];
  try {
    await consumer.consume(queue, (msg) => {
      // null: the broker cancelled the consumer, as it does when the queue is deleted below.
      if (msg === null) return;
      delivered.push(performance.now() - sentAt.get(msg.content.toString()));
      consumer.ack(msg);
    });
    for (let i = 0; i < SAMPLES; i++) {
      sentAt.set(String(i), performance.now());
      await new Promise((resolve, reject) =>
        publisher.sendToQueue(queue, Buffer.from(String(i)), { persistent: true }, (err) =>
          err ? reject(err) : resolve(),
        ),
      );
      confirmed.push(performance.now() - sentAt.get(String(i)));
      await sleep(10);
    }
    while (delivered.length < SAMPLES) await sleep(20);
  } finally {
    await publisher.deleteQueue(queue);
    await publisher.close();
    await consumer.close();
  }
  const stats = (values) => {
    const sorted = values.sort((a, b) => a - b);
    return { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99) };
  };
  return { confirmMs: stats(confirmed), deliverMs: stats(delivered) };
}

export async function measureBrokerFloor() {
  const connection = await amqp.connect(amqpUrl);
  try {
    return { quorum: await probe(connection, 'quorum'), classic: await probe(connection, 'classic') };
  } finally {
    await connection.close();
  }
}
