// The broker's own latency, one message at a time: publish to a confirm, and publish to delivery, on
// a quorum queue as taskbox declares it and on a classic queue for contrast, over a connection with
// the services' socket options. This is the floor under commit → worker start. The last probe turns
// TCP_NODELAY off (amqplib's default) to show what Nagle's algorithm adds to a quorum queue. Then its
// CPU: what RabbitMQ alone spends per message at the end-to-end target rate.
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import amqp from 'amqplib';
import { cpuMeter } from './lib/cpu.mjs';
import { amqpSocketOptions, amqpUrl, randomName, sleep } from './lib/env.mjs';
import { percentile } from './lib/load.mjs';

const SAMPLES = 40;

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

async function probeOver(socketOptions, type) {
  const connection = await amqp.connect(amqpUrl, socketOptions);
  try {
    return await probe(connection, type);
  } finally {
    await connection.close();
  }
}

/**
 * The broker's own CPU at the end-to-end target: `rate` persistent messages/s through a quorum queue,
 * published evenly on a confirm channel, consumed (prefetch as the worker's) and acked on a second
 * connection, and nothing else. RabbitMQ's share of the machine at that rate, before any taskbox code.
 */
async function brokerCpu(rate, seconds, prefetch) {
  const queue = randomName('bench-floor-cpu-');
  const publishing = await amqp.connect(amqpUrl, amqpSocketOptions);
  const consuming = await amqp.connect(amqpUrl, amqpSocketOptions);
  try {
    const publisher = await publishing.createConfirmChannel();
    const consumer = await consuming.createChannel();
    await publisher.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    await consumer.prefetch(prefetch);
    const total = rate * seconds;
    let delivered = 0;
    await consumer.consume(queue, (msg) => {
      if (msg === null) return;
      delivered++;
      consumer.ack(msg);
    });
    const body = Buffer.from(JSON.stringify({ taskId: randomUUID(), type: 'echo', attempt: 1 }));
    const meter = cpuMeter({});
    const start = performance.now();
    for (let sent = 0; sent < total;) {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate));
      for (; sent < due; sent++) publisher.sendToQueue(queue, body, { persistent: true, messageId: String(sent) });
      await sleep(1);
    }
    await publisher.waitForConfirms();
    while (delivered < total) await sleep(10);
    const { msPerTask } = meter.stop(total);
    await publisher.deleteQueue(queue);
    return { rate, seconds, msPerMessage: { rabbitmq: msPerTask.rabbitmq, client: msPerTask.load } };
  } finally {
    await publishing.close();
    await consuming.close();
  }
}

export async function measureBrokerFloor({ targetRate, prefetch }) {
  return {
    quorum: await probeOver(amqpSocketOptions, 'quorum'),
    classic: await probeOver(amqpSocketOptions, 'classic'),
    quorumWithoutNoDelay: await probeOver({ ...amqpSocketOptions, noDelay: false }, 'quorum'),
    cpu: await brokerCpu(targetRate, 5, prefetch),
  };
}
