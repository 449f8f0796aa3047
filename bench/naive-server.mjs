// The naive dispatch, for comparison only (never part of taskbox): the api writes the task row and
// publishes to RabbitMQ itself, with no outbox. Two endpoints:
//   POST /commit-then-publish    commit the row, then publish and wait for the confirm;
//   POST /publish-before-commit  BEGIN, insert, publish + confirm, COMMIT (what an ORM session that
//                                dispatches inside its unit of work does).
// A consumer in this process records each task's start the moment its message arrives, as a worker
// would, and counts how often the row is not there yet. GET /stats returns the counts.
import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import pg from 'pg';
import shared from '../packages/shared/dist/index.js';
import tasks from '../packages/tasks/dist/index.js';
import { createStartTable, INSERT_TASK, inTransaction, recordStart, serveTasks } from './lib/task-server.mjs';

const { amqpNames, amqpSocketOptions, amqpTopology, assertTopology } = shared;
const names = amqpNames(process.env.AMQP_PREFIX);
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.PG_POOL_SIZE ?? 10) });
const connection = await amqp.connect(process.env.AMQP_URL, amqpSocketOptions);
const publishChannel = await connection.createConfirmChannel();
await assertTopology(publishChannel, amqpTopology(process.env.AMQP_PREFIX, tasks.taskTypeList));
await createStartTable(pool);
const stats = {};

function publish(task, variant) {
  const body = Buffer.from(JSON.stringify({ taskId: task.id, type: task.type, attempt: 1, variant }));
  return new Promise((resolve, reject) =>
    publishChannel.publish(
      names.exchange,
      task.type,
      body,
      { messageId: randomUUID(), persistent: true, mandatory: true, contentType: 'application/json' },
      (err) => (err ? reject(err) : resolve()),
    ),
  );
}

const routes = {
  async 'commit-then-publish'(payload) {
    const { rows } = await pool.query(INSERT_TASK, [randomUUID(), payload, randomUUID()]);
    await publish(rows[0], 'commit-then-publish');
    return rows[0];
  },
  'publish-before-commit': (payload) =>
    inTransaction(pool, async (client) => {
      const { rows } = await client.query(INSERT_TASK, [randomUUID(), payload, randomUUID()]);
      await publish(rows[0], 'publish-before-commit');
      return rows[0];
    }),
};

async function consume() {
  const ch = await connection.createChannel();
  await ch.prefetch(20);
  await ch.consume(names.queue, async (msg) => {
    const { taskId, variant } = JSON.parse(msg.content.toString());
    const counts = (stats[variant] ??= { found: 0, notFound: 0 });
    if (await recordStart(pool, taskId)) counts.found++;
    else counts.notFound++;
    // At shutdown the channel may already be closing; an unacked message is simply requeued.
    try {
      ch.ack(msg);
    } catch {
      return;
    }
  });
}

await consume();
serveTasks({ routes, stats: () => stats, close: () => connection.close() });
