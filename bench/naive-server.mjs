// The dispatch designs taskbox is measured against, for comparison only (never part of taskbox), all in
// this one process. The naive ones write the task row and publish to RabbitMQ themselves:
//   POST /commit-then-publish    commit the row, then publish and wait for the confirm;
//   POST /publish-before-commit  BEGIN, insert, publish + confirm, COMMIT (what an ORM session that
//                                dispatches inside its unit of work does);
//   POST /guarded                as commit-then-publish, but its consumer writes what taskbox's worker
//                                writes around a run (GUARDED_START, GUARDED_FINISH): the price of the
//                                worker's guarantees without the outbox's;
//   POST /outbox                 an outbox at its plainest: the task and its outbox row in one statement,
//                                a relay in this process (no NOTIFY, no process hop) that claims, publishes
//                                and marks as taskbox's does, and the guarded consumer.
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

async function commitThenPublish(payload, variant) {
  const { rows } = await pool.query(INSERT_TASK, [randomUUID(), payload, randomUUID()]);
  await publish(rows[0], variant);
  return rows[0];
}

// The outbox rows, in taskbox's own table (the database is migrated for taskbox): one statement
// writes the task and its message, as taskbox's api does.
const INSERT_TASK_AND_OUTBOX = `WITH task AS (${INSERT_TASK}), message AS (
    INSERT INTO outbox (message_id, task_id, routing_key, payload)
    SELECT gen_random_uuid(), id, type, json_build_object('taskId', id) FROM task
  )
  SELECT * FROM task`;
const CLAIM_LIMIT = 100;
// As the relay's claimBatch and markPublished (services/relay/src/outbox-sql.ts), without its retries;
// unprepared, and its session without bitmap scans, as the relay's, whose reasons are there. Its mark
// writes the mark's own time where the relay's writes the claim's (for the task timeline, not kept here).
const CLAIM = `WITH due AS (
    SELECT id FROM outbox
    WHERE published_at IS NULL AND available_at <= now() AND (locked_until IS NULL OR locked_until < now())
    ORDER BY available_at, id LIMIT ${CLAIM_LIMIT} FOR UPDATE SKIP LOCKED
  )
  UPDATE outbox o SET locked_until = now() + interval '30 seconds', publish_attempts = o.publish_attempts + 1
  FROM due WHERE o.id = due.id
  RETURNING o.id, o.task_id, o.routing_key`;
const MARK = 'UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])';
// Nor does it wait for the WAL flush, as the relay does not: a lost mark is a second publish, which
// the guarded consumer absorbs.
const relayClient = new pg.Client({ connectionString: process.env.DATABASE_URL });
await relayClient.connect();
await relayClient.query('SET enable_bitmapscan = off; SET synchronous_commit = off');
let draining = null;
let wokenWhileDraining = false;

/** Publishes every claimable outbox row; woken after each insert's commit, and every second once used. */
function wakeRelay() {
  if (draining) {
    wokenWhileDraining = true;
    return;
  }
  draining = (async () => {
    let claimed;
    do {
      wokenWhileDraining = false;
      ({ rows: claimed } = await relayClient.query(CLAIM));
      await Promise.all(claimed.map((row) => publish({ id: row.task_id, type: row.routing_key }, 'outbox')));
      if (claimed.length > 0) await relayClient.query(MARK, [claimed.map((row) => row.id)]);
    } while (claimed.length === CLAIM_LIMIT || wokenWhileDraining);
  })().finally(() => (draining = null));
}
// Started by the first /outbox request, so that the other systems' measures carry no claims.
let relayPoll = null;

const routes = {
  'commit-then-publish': (payload) => commitThenPublish(payload, 'commit-then-publish'),
  guarded: (payload) => commitThenPublish(payload, 'guarded'),
  async outbox(payload) {
    const { rows } = await pool.query(INSERT_TASK_AND_OUTBOX, [randomUUID(), payload, randomUUID()]);
    relayPoll ??= setInterval(wakeRelay, 1000);
    wakeRelay();
    return rows[0];
  },
  'publish-before-commit': (payload) =>
    inTransaction(pool, async (client) => {
      const { rows } = await client.query(INSERT_TASK, [randomUUID(), payload, randomUUID()]);
      await publish(rows[0], 'publish-before-commit');
      return rows[0];
    }),
};

// DESIGN.md's worker invariants, as taskbox's worker writes them (services/worker/src/task-sql.ts,
// finish-sql.ts), one delivery per statement: the start commits the task as processing with the
// delivery as its external job id, a lease and an attempt row before the run; the result commits
// before the ack. Named, so prepared, as taskbox's are.
const GUARDED_START = {
  name: 'guarded_start',
  text: `WITH started AS (
      UPDATE tasks SET status = 'processing', attempts = attempts + 1, external_job_id = $2,
        lease_until = now() + interval '5 minutes', started_at = now(), updated_at = now()
      WHERE id = $1 AND status = 'pending' RETURNING id, attempts, external_job_id
    ), attempt AS (
      INSERT INTO task_attempts (task_id, attempt, external_job_id) SELECT id, attempts, external_job_id FROM started
    )
    INSERT INTO bench_starts (task_id) SELECT id FROM started ON CONFLICT DO NOTHING`,
};
const GUARDED_FINISH = {
  name: 'guarded_finish',
  text: `WITH finished AS (
      UPDATE tasks SET status = 'succeeded', result = $2::jsonb, lease_until = NULL, progress = 1,
        finished_at = now(), updated_at = now()
      WHERE id = $1 AND status = 'processing' RETURNING id, attempts
    )
    UPDATE task_attempts a SET outcome = 'succeeded', finished_at = now()
    FROM finished f WHERE a.task_id = f.id AND a.attempt = f.attempts`,
};

/** Starts, runs (a no-op) and finishes the task as taskbox's worker would; false when it is not pending. */
async function runGuarded(taskId, msg) {
  const jobId = `${msg.fields.consumerTag}:${msg.fields.deliveryTag}`;
  const { rowCount } = await pool.query({ ...GUARDED_START, values: [taskId, jobId] });
  if (rowCount !== 1) return false;
  await pool.query({ ...GUARDED_FINISH, values: [taskId, JSON.stringify({ echoed: true })] });
  return true;
}

async function consume() {
  const ch = await connection.createChannel();
  await ch.prefetch(20);
  await ch.consume(names.queue, async (msg) => {
    const { taskId, variant } = JSON.parse(msg.content.toString());
    const counts = (stats[variant] ??= { found: 0, notFound: 0 });
    const guarded = variant === 'guarded' || variant === 'outbox';
    const started = guarded ? await runGuarded(taskId, msg) : await recordStart(pool, taskId);
    if (started) counts.found++;
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
serveTasks({
  routes,
  stats: () => stats,
  close: async () => {
    clearInterval(relayPoll);
    await draining;
    await relayClient.end();
    await connection.close();
  },
});
