// The relay alone: drain pre-inserted outbox rows, against a bare amqplib confirm-channel loop
// publishing the same messages in the same run.
import { performance } from 'node:perf_hooks';
import amqp from 'amqplib';
import { amqpSocketOptions, amqpUrl, benchPrefix, startService } from './lib/env.mjs';
import { getText, waitUntil } from './lib/load.mjs';
import shared from '../packages/shared/dist/index.js';
import tasks from '../packages/tasks/dist/index.js';

const { amqpNames, amqpTopology, assertTopology } = shared;

async function insertRows(pool, rows) {
  await pool.query(
    `INSERT INTO outbox (message_id, task_id, routing_key, payload, headers)
     SELECT gen_random_uuid(), t.id, 'echo', jsonb_build_object('taskId', t.id, 'type', 'echo', 'attempt', 1),
            jsonb_build_object('correlationId', gen_random_uuid()::text)
     FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $1)) t`,
    [rows],
  );
  // Fresh statistics, as autovacuum would have them on a table that grew slowly.
  await pool.query('VACUUM ANALYZE outbox');
}

async function relayDrain({ db, rows, env }) {
  await insertRows(db.pool, rows);
  const relay = await startService('relay', { databaseUrl: db.url, prefix: benchPrefix(), env });
  // From the moment its health port opens (the loop starts right after), not from process spawn.
  const started = performance.now();
  await waitUntil(
    'the relay to publish every row',
    async () => {
      const { rows: r } = await db.pool.query('SELECT count(*)::int AS n FROM outbox WHERE published_at IS NULL');
      return r[0].n === 0 ? true : undefined;
    },
    600_000,
    100,
  );
  const seconds = (performance.now() - started) / 1000;
  const confirm = await confirmTime(relay.url);
  await relay.stop();
  return { rows, seconds, perSecond: rows / seconds, batches: confirm.count, waitingForConfirmsSeconds: confirm.sum };
}

/** How much of the drain the relay spent waiting for confirms, from its own /metrics. */
async function confirmTime(url) {
  const text = await getText(`${url}/metrics`);
  const metric = (name) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? ([\\d.e+-]+)$`, 'm').exec(text)?.[1] ?? NaN);
  return { sum: metric('relay_confirm_seconds_sum'), count: metric('relay_confirm_seconds_count') };
}

/** The same messages (body, properties, persistence, mandatory) in batches with waitForConfirms. */
async function bareLoop({ db, batchSize }) {
  const prefix = benchPrefix();
  const names = amqpNames(prefix);
  const { rows: messages } = await db.pool.query('SELECT message_id, task_id, payload, headers FROM outbox');
  const connection = await amqp.connect(amqpUrl, amqpSocketOptions);
  try {
    const ch = await connection.createConfirmChannel();
    await assertTopology(ch, amqpTopology(prefix, tasks.taskTypeList));
    const started = performance.now();
    for (let i = 0; i < messages.length; i += batchSize) {
      for (const m of messages.slice(i, i + batchSize)) {
        ch.publish(names.exchange, 'echo', Buffer.from(JSON.stringify(m.payload)), {
          messageId: m.message_id,
          correlationId: m.headers.correlationId,
          type: 'echo',
          contentType: 'application/json',
          persistent: true,
          mandatory: true,
          timestamp: Math.floor(Date.now() / 1000),
          headers: { 'x-task-id': m.task_id, 'x-attempt': 1 },
        });
      }
      await ch.waitForConfirms();
    }
    const seconds = (performance.now() - started) / 1000;
    await ch.close();
    return { rows: messages.length, seconds, perSecond: messages.length / seconds };
  } finally {
    await connection.close();
  }
}

export async function measureRelay({ db, rows, batchSize, env }) {
  const relay = await relayDrain({ db, rows, env });
  const bare = await bareLoop({ db, batchSize });
  return { relay, bare, ratio: relay.perSecond / bare.perSecond, batchSize };
}
