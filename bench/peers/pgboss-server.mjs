// pg-boss behind the comparison servers' HTTP shape (bench only). POST /tasks writes the job and the
// task row in one transaction (send() through the transaction's client, pg-boss's `db` option); the
// worker in this process records each task's start, as taskbox's worker does. pg-boss polls: up to
// BATCH jobs every 0.5 s, its shortest interval, so its latency is the polling's.
import { randomUUID } from 'node:crypto';
import PgBoss from 'pg-boss';
import pg from 'pg';
import { createStartTable, inTransaction, serveTasks } from '../lib/task-server.mjs';

const QUEUE = 'noop';
const BATCH = 500;
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.PG_POOL_SIZE ?? 10) });
await createStartTable(pool);

const boss = new PgBoss({ connectionString: process.env.DATABASE_URL });
boss.on('error', (err) => console.error(err));
await boss.start();
await boss.createQueue(QUEUE);
// One statement for the batch pg-boss hands over, as taskbox's worker groups the starts in flight.
await boss.work(QUEUE, { batchSize: BATCH, pollingIntervalSeconds: 0.5 }, async (jobs) => {
  await pool.query(
    `INSERT INTO bench_starts (task_id) SELECT id FROM tasks WHERE id = ANY($1::uuid[]) ON CONFLICT DO NOTHING`,
    [jobs.map((job) => job.data.taskId)],
  );
});

// The row goes last and stamps created_at with the clock, not the transaction's start: from it to the
// commit is one round trip, as for taskbox's single-statement insert.
const INSERT_TASK = `INSERT INTO tasks (id, type, payload, owner, correlation_id, created_at)
  VALUES ($1, 'echo', $2::jsonb, 'bench', $3, clock_timestamp()) RETURNING *`;

const enqueue = (payload) =>
  inTransaction(pool, async (client) => {
    const id = randomUUID();
    await boss.send(QUEUE, { taskId: id }, { db: { executeSql: (text, values) => client.query(text, values) } });
    const { rows } = await client.query(INSERT_TASK, [id, payload, randomUUID()]);
    return rows[0];
  });

serveTasks({
  routes: { tasks: enqueue },
  close: async () => {
    await boss.stop({ graceful: true, wait: true });
    await pool.end();
  },
});
