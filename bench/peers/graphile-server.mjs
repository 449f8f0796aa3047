// graphile-worker behind the comparison servers' HTTP shape (bench only). POST /tasks writes the task
// row and the job in one statement (graphile_worker.add_job, its documented way to enqueue inside a
// transaction); the worker in this process records each task's start, as taskbox's worker does.
// Batched as its docs advise for throughput: a local queue of concurrency + 1 jobs, and job
// completions grouped with no added delay.
import { randomUUID } from 'node:crypto';
import { run } from 'graphile-worker';
import pg from 'pg';
import { createStartTable, recordStart, serveTasks } from '../lib/task-server.mjs';

const CONCURRENCY = 10;
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.PG_POOL_SIZE ?? 10) });
await createStartTable(pool);

const INSERT_TASK_AND_JOB = `
  WITH task AS (
    INSERT INTO tasks (id, type, payload, owner, correlation_id)
    VALUES ($1, 'echo', $2::jsonb, 'bench', $3) RETURNING *
  ), job AS (
    SELECT graphile_worker.add_job('noop', json_build_object('taskId', id)) FROM task
  )
  SELECT task.* FROM task, job`;

const runner = await run({
  connectionString: process.env.DATABASE_URL,
  concurrency: CONCURRENCY,
  noHandleSignals: true,
  taskList: {
    async noop({ taskId }) {
      if (!(await recordStart(pool, taskId))) throw new Error(`task ${taskId} not found`);
    },
  },
  preset: { worker: { localQueue: { size: CONCURRENCY + 1 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
});

serveTasks({
  routes: {
    async tasks(payload) {
      const { rows } = await pool.query(INSERT_TASK_AND_JOB, [randomUUID(), payload, randomUUID()]);
      return rows[0];
    },
  },
  close: async () => {
    await runner.stop();
    await pool.end();
  },
});
