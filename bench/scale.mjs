// Scaling out: the same backlog of tasks drained by 1 relay + 1 worker, then by 3 + 3, each on a fresh
// database and AMQP prefix. Relays claim disjoint batches (SKIP LOCKED), workers compete for messages.
// The tasks are `sleep` tasks (a handler that takes time, as taskbox's long tasks do) and each worker
// runs at most `prefetch` at once, so a worker's concurrency is the limit that replicas lift. With
// echo tasks on one 2-core machine the limit is the shared CPU instead, which replicas cannot lift.
import { performance } from 'node:perf_hooks';
import { benchPrefix, createBenchDatabase, startService } from './lib/env.mjs';
import { waitUntil } from './lib/load.mjs';

/** N pending sleep tasks and their outbox rows, committed at once, then one wake-up for the relays. */
async function insertBacklog(pool, tasks, sleepMs) {
  await pool.query(
    `WITH t AS (
       INSERT INTO tasks (id, type, payload, owner)
       SELECT gen_random_uuid(), 'sleep', jsonb_build_object('ms', $2::int), 'bench' FROM generate_series(1, $1)
       RETURNING id
     )
     INSERT INTO outbox (message_id, task_id, routing_key, payload, headers)
     SELECT gen_random_uuid(), id, 'sleep', jsonb_build_object('taskId', id, 'type', 'sleep', 'attempt', 1), '{}'
     FROM t`,
    [tasks, sleepMs],
  );
  await pool.query(`SELECT pg_notify('taskbox_outbox', '')`);
}

async function drainWith(replicas, { tasks, sleepMs, prefetch }, serviceEnv) {
  const db = await createBenchDatabase();
  const prefix = benchPrefix();
  const services = [];
  for (let i = 0; i < replicas; i++) {
    const workerEnv = { ...serviceEnv.worker, WORKER_PREFETCH: String(prefetch) };
    services.push(await startService('worker', { databaseUrl: db.url, prefix, env: workerEnv, instance: i }));
    services.push(await startService('relay', { databaseUrl: db.url, prefix, env: serviceEnv.relay, instance: i }));
  }
  const started = performance.now();
  await insertBacklog(db.pool, tasks, sleepMs);
  await waitUntil(
    `${replicas} + ${replicas} to finish ${tasks} tasks`,
    async () => {
      const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM tasks WHERE status <> 'succeeded'`);
      return rows[0].n === 0 ? true : undefined;
    },
    600_000,
    100,
  );
  const seconds = (performance.now() - started) / 1000;
  const { rows } = await db.pool.query(
    `SELECT count(*) FILTER (WHERE attempts > 1)::int AS rerun,
            (SELECT count(*)::int FROM outbox WHERE publish_attempts > 1) AS republished
     FROM tasks`,
  );
  await Promise.all(services.map((s) => s.stop()));
  return { replicas, tasks, sleepMs, prefetch, seconds, perSecond: tasks / seconds, ...rows[0] };
}

export async function measureScale({ tasks, serviceEnv }) {
  const load = { tasks, sleepMs: 50, prefetch: 5 };
  const one = await drainWith(1, load, serviceEnv);
  const three = await drainWith(3, load, serviceEnv);
  return { one, three, ratio: three.perSecond / one.perSecond };
}
