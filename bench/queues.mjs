// Queues per task type: echo latency while long tasks run, with a queue per type against one shared queue.
// Each run: a fresh database and AMQP prefix, one api, relay and worker; LONG long tasks are submitted and
// allowed to take their slots, then ECHOES echoes at ECHO_RATE/s. An echo's latency is from its commit
// (tasks.created_at) to its worker start (task_attempts.started_at), read from the database.
//   per-queue   LONG `report` tasks on `reports`, WORKER_QUEUES=reports:2,default:20
//   shared-22   LONG `sleep` tasks of the same length on `tasks` with the echoes, one prefetch of 22
//               (the same slots in all)
//   shared-10   the same with a prefetch of 10: the long tasks take every slot
// A `report` cannot move to the default queue (its queue is in its definition), so the shared runs send
// the same wait as a `sleep`. Usage: npm run build && node bench/queues.mjs
// (env: LONG 10, LONG_MS 20000, ECHOES 200, ECHO_RATE 50)
import { performance } from 'node:perf_hooks';
import { benchPrefix, cleanupAll, createBenchDatabase, sleep, startService } from './lib/env.mjs';
import { percentile, waitUntil } from './lib/load.mjs';

const LONG = Number(process.env.LONG ?? 10);
const LONG_MS = Number(process.env.LONG_MS ?? 20_000);
const ECHOES = Number(process.env.ECHOES ?? 200);
const ECHO_RATE = Number(process.env.ECHO_RATE ?? 50);

const SECTIONS = ['gather', 'write', 'render'];
const runs = [
  {
    name: 'per-queue',
    workerQueues: 'reports:2,default:20',
    long: { type: 'report', payload: { title: 'bench', sections: SECTIONS, msPerSection: LONG_MS / 4 } },
  },
  { name: 'shared-22', workerQueues: 'default:22', long: { type: 'sleep', payload: { ms: LONG_MS } } },
  { name: 'shared-10', workerQueues: 'default:10', long: { type: 'sleep', payload: { ms: LONG_MS } } },
];

async function post(api, body) {
  const res = await globalThis.fetch(`${api}/tasks`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (res.status !== 202) throw new Error(`POST /tasks answered ${res.status}: ${await res.text()}`);
  return (await res.json()).id;
}

/** Echoes at `rate`/s, evenly spaced, each POST sent when its time comes. */
async function pacedEchoes(api, count, rate) {
  const started = performance.now();
  const posts = [];
  for (let i = 0; i < count; i++) {
    await sleep(started + (i * 1000) / rate - performance.now());
    posts.push(post(api, { type: 'echo', payload: { i } }));
  }
  return Promise.all(posts);
}

const countWhere = async (pool, ids, status) =>
  (await pool.query(`SELECT count(*)::int AS n FROM tasks WHERE id = ANY($1) AND status = $2`, [ids, status])).rows[0]
    .n;

async function measure(run) {
  const db = await createBenchDatabase();
  const prefix = benchPrefix();
  const env = { LOG_LEVEL: 'warn' };
  const api = await startService('api', { databaseUrl: db.url, prefix, env });
  const services = [
    api,
    await startService('relay', { databaseUrl: db.url, prefix, env }),
    await startService('worker', { databaseUrl: db.url, prefix, env: { ...env, WORKER_QUEUES: run.workerQueues } }),
  ];
  const long = [];
  for (let i = 0; i < LONG; i++) long.push(await post(api.url, run.long));
  // The long tasks' queue is the first WORKER_QUEUES names: its prefetch is how many run at once.
  const slots = Math.min(LONG, Number(run.workerQueues.split(',')[0].split(':')[1]));
  await waitUntil(
    'the long tasks to take their slots',
    async () => ((await countWhere(db.pool, long, 'processing')) === slots ? true : undefined),
    LONG_MS,
  );
  const echoes = await pacedEchoes(api.url, ECHOES, ECHO_RATE);
  await waitUntil(
    'the echoes to finish',
    async () => ((await countWhere(db.pool, echoes, 'succeeded')) === ECHOES ? true : undefined),
    LONG_MS * 4,
    100,
  );
  const longDoneBeforeEchoes =
    LONG - (await countWhere(db.pool, long, 'processing')) - (await countWhere(db.pool, long, 'pending'));
  const { rows } = await db.pool.query(
    `SELECT extract(epoch FROM a.started_at - t.created_at) * 1000 AS ms
     FROM tasks t JOIN task_attempts a ON a.task_id = t.id AND a.attempt = 1
     WHERE t.id = ANY($1) ORDER BY 1`,
    [echoes],
  );
  const ms = rows.map((r) => Number(r.ms));
  await Promise.all(services.map((s) => s.stop()));
  return {
    run: run.name,
    workerQueues: run.workerQueues,
    echoP50ms: percentile(ms, 0.5),
    echoP99ms: percentile(ms, 0.99),
    echoMaxMs: ms.at(-1),
    longFinishedBeforeLastEcho: longDoneBeforeEchoes,
  };
}

try {
  const results = [];
  for (const run of runs) results.push(await measure(run));
  console.log(`${LONG} long tasks of ${LONG_MS} ms, then ${ECHOES} echoes at ${ECHO_RATE}/s`);
  console.table(
    results.map((r) => ({
      ...r,
      echoP50ms: Math.round(r.echoP50ms),
      echoP99ms: Math.round(r.echoP99ms),
      echoMaxMs: Math.round(r.echoMaxMs),
    })),
  );
} finally {
  await cleanupAll();
}
