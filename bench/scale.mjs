// Scaling out: the same backlog of echo tasks drained by 1 relay + 1 worker, then by 3 + 3, each on a
// fresh database and AMQP prefix. Relays claim disjoint batches (SKIP LOCKED), workers compete for
// messages; this measures whether adding replicas adds throughput on this machine.
import { performance } from 'node:perf_hooks';
import { benchPrefix, createBenchDatabase, startService } from './lib/env.mjs';
import { waitUntil } from './lib/load.mjs';

/** N pending echo tasks and their outbox rows, committed at once, then one wake-up for the relays. */
async function insertBacklog(pool, tasks) {
  await pool.query(
    `WITH t AS (
       INSERT INTO tasks (id, type, payload, owner)
       SELECT gen_random_uuid(), 'echo', '{}', 'bench' FROM generate_series(1, $1)
       RETURNING id
     )
     INSERT INTO outbox (message_id, task_id, routing_key, payload, headers)
     SELECT gen_random_uuid(), id, 'echo', jsonb_build_object('taskId', id, 'type', 'echo', 'attempt', 1), '{}'
     FROM t`,
    [tasks],
  );
  await pool.query(`SELECT pg_notify('taskbox_outbox', '')`);
}

async function drainWith(replicas, tasks, serviceEnv) {
  const db = await createBenchDatabase();
  const prefix = benchPrefix();
  const services = [];
  for (let i = 0; i < replicas; i++) {
    services.push(await startService('worker', { databaseUrl: db.url, prefix, env: serviceEnv.worker, instance: i }));
    services.push(await startService('relay', { databaseUrl: db.url, prefix, env: serviceEnv.relay, instance: i }));
  }
  const started = performance.now();
  await insertBacklog(db.pool, tasks);
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
  return { replicas, tasks, seconds, perSecond: tasks / seconds, ...rows[0] };
}

export async function measureScale({ tasks, serviceEnv }) {
  const one = await drainWith(1, tasks, serviceEnv);
  const three = await drainWith(3, tasks, serviceEnv);
  return { one, three, ratio: three.perSecond / one.perSecond };
}
