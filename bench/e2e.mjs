// Our api alone, then the whole chain api → relay → worker under a firehose and at paced loads.
import { readFile } from 'node:fs/promises';
import amqp from 'amqplib';
import { cpuMeter } from './lib/cpu.mjs';
import { amqpUrl, startService } from './lib/env.mjs';
import { pacedLoad, postLoad, waitForOk, waitUntil } from './lib/load.mjs';

const echo = (phase) => ({ type: 'echo', payload: { phase } });

/** POST /tasks closed-loop at `connections`, after a short warm-up (JIT, pool connections). */
export async function measureApi({ api, pool, connections, seconds }) {
  await postLoad({ url: `${api.url}/tasks`, body: echo('warmup'), connections, seconds: 2 });
  const load = await postLoad({ url: `${api.url}/tasks`, body: echo('api'), connections, seconds });
  await pool.query('TRUNCATE tasks CASCADE');
  return load;
}

// Latencies come from Postgres clocks only: created_at is the insert's transaction time (the api's
// insert is one statement, so that is its commit to within the statement), task_attempts.started_at
// is the worker's begin transaction, finished_at its result transaction. outbox.published_at is set
// after the broker's confirm, so the worker often starts before it: it splits relay from worker time.
const PHASE_SQL = `
  SELECT count(*)::int AS tasks,
         count(*) FILTER (WHERE t.status = 'succeeded')::int AS succeeded,
         count(*) FILTER (WHERE t.status IN ('pending', 'processing'))::int AS unfinished,
         percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
           (ORDER BY extract(epoch FROM a.started_at - t.created_at) * 1000) AS start_ms,
         percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
           (ORDER BY extract(epoch FROM t.finished_at - t.created_at) * 1000) AS done_ms,
         percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
           (ORDER BY extract(epoch FROM o.published_at - t.created_at) * 1000) AS marked_ms,
         extract(epoch FROM max(t.finished_at) - min(t.created_at))::float8 AS span_s
  FROM tasks t
  LEFT JOIN task_attempts a ON a.task_id = t.id AND a.attempt = 1
  LEFT JOIN outbox o ON o.task_id = t.id
  WHERE t.payload->>'phase' = $1`;

async function phaseStats(pool, phase, expected) {
  return waitUntil(
    `every ${phase} task to finish`,
    async () => {
      const { rows } = await pool.query(PHASE_SQL, [phase]);
      const r = rows[0];
      return r.tasks >= expected && r.unfinished === 0 ? r : undefined;
    },
    300_000,
    500,
  );
}

const triple = ([p50, p95, p99]) => ({ p50, p95, p99 });

async function runPhase({ api, pool, processes, phase, connections, seconds, rate }) {
  // Each phase starts from tables without the previous phases' dead rows, as pgbench vacuums before a
  // run: otherwise autovacuum cleaning up after a heavy phase competes with the next one for the CPU.
  await pool.query('VACUUM (ANALYZE) tasks, task_attempts, outbox');
  const request = { url: `${api.url}/tasks`, body: echo(phase), seconds };
  const meter = cpuMeter(processes);
  const load = rate ? await pacedLoad({ ...request, rate }) : await postLoad({ ...request, connections });
  const s = await phaseStats(pool, phase, load.ok);
  return {
    load,
    cpu: meter.stop(s.tasks),
    tasks: s.tasks,
    succeeded: s.succeeded,
    tasksPerSecond: s.tasks / s.span_s,
    commitToStartMs: triple(s.start_ms),
    commitToSucceededMs: triple(s.done_ms),
    commitToMarkedPublishedMs: triple(s.marked_ms),
  };
}

/** Counts deliveries the worker could not match to a task: dead-lettered as unknown-task. */
async function workerNotFound(worker, prefix) {
  const log = await readFile(worker.logFile, 'utf8');
  const logged = log.split('\n').filter((l) => l.includes('"unknown-task"')).length;
  const connection = await amqp.connect(amqpUrl);
  try {
    const ch = await connection.createChannel();
    const { messageCount } = await ch.checkQueue(`${prefix}tasks.dead`);
    await ch.close();
    return { unknownTaskLogged: logged, deadLettered: messageCount };
  } finally {
    await connection.close();
  }
}

// A paced load is sustained when the chain keeps up with it: tasks/s from the first commit to the last
// success is at least 95 % of the offered rate (a chain that falls behind builds a backlog, and the
// span runs past the end of the load), and commit → worker start p99 stays under 500 ms (a backlog
// that grows for a while and drains by the end still shows there).
const keptUp = (rate, result) => result.tasksPerSecond >= 0.95 * rate && result.commitToStartMs.p99 <= 500;

/**
 * The maximum sustained rate. The firehose (closed-loop, as fast as the api accepts) gives a first
 * guess but is not it: it overfeeds the chain, and the api then takes CPU from the relay and the
 * worker on a shared machine. So paced loads go up by 20 % from the guess while sustained, or down
 * by 20 % until sustained; the highest sustained one is the maximum.
 */
async function findSustainedMax(common, guess, seconds) {
  const tried = [];
  let best = null;
  let rate = guess;
  for (let step = 0; step < 8; step++) {
    const result = await runPhase({ ...common, phase: `e2e-search-${step}`, seconds, rate });
    const sustained = keptUp(rate, result);
    tried.push({ rate, sustained, ...result });
    if (sustained) best = { rate, ...result };
    else if (best) break;
    rate *= sustained ? 1.2 : 0.8;
  }
  if (!best) throw new Error(`no paced load was sustained, down to ${rate.toFixed(0)}/s`);
  return { best, tried };
}

const TRICKLE_RATE = 10;

/** The firehose, the sustained maximum, then 25, 50 and 90 % of it and a trickle, evenly paced. */
export async function measureEndToEnd({ api, db, prefix, connections, seconds, serviceEnv }) {
  const relay = await startService('relay', { databaseUrl: db.url, prefix, env: serviceEnv.relay });
  const worker = await startService('worker', { databaseUrl: db.url, prefix, env: serviceEnv.worker });
  await waitForOk(`${relay.url}/readyz`);
  await waitForOk(`${worker.url}/readyz`);
  const processes = { api: api.child, relay: relay.child, worker: worker.child };
  const common = { api, pool: db.pool, processes, connections };
  await runPhase({ ...common, phase: 'e2e-warmup', seconds: 2 });
  const firehose = await runPhase({ ...common, phase: 'e2e-firehose', seconds });
  const search = await findSustainedMax(common, firehose.tasksPerSecond, seconds);
  const max = search.best;
  const levels = [];
  for (const fraction of [0.25, 0.5, 0.9]) {
    const rate = fraction * max.rate;
    const result = await runPhase({ ...common, phase: `e2e-${fraction * 100}`, seconds, rate });
    levels.push({ fraction, targetRate: rate, ...result });
  }
  // A trickle: each task alone on an idle chain, which shows the latency before any load adds to it.
  const trickle = await runPhase({ ...common, phase: 'e2e-trickle', seconds, rate: TRICKLE_RATE });
  const notFound = await workerNotFound(worker, prefix);
  await worker.stop();
  await relay.stop();
  return { firehose, search: search.tried, max, levels, trickle, notFound };
}
