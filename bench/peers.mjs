// taskbox against its peers, one system after another in the same run, each on its own fresh
// database, through the same HTTP load generator: graphile-worker and pg-boss (peers/*-server.mjs)
// and the naive commit-then-publish (naive-server.mjs). The same workload for each: a fixed number of
// no-op tasks from 8 producers (end to end, with autovacuum as deployed: no VACUUM before it), paced
// loads at 50 % of the system's own rate and at a fixed 200 tasks/s, and the end-to-end phase again
// after a VACUUM. Latency runs from the task row's commit to the worker's start, both read from the
// database (one clock).
//
// A/B of changes: BENCH_VARIANTS names other checkouts of taskbox, built (`npm ci && npm run build` in
// each), as `label=dir,...`; each runs as the system `label`, migrated and started from its own dist,
// in the same run.
import { cpuMeter } from './lib/cpu.mjs';
import {
  amqpUrl,
  benchPrefix,
  commitOf,
  createBenchDatabase,
  freePort,
  root,
  startProcess,
  startService,
} from './lib/env.mjs';
import { pacedLoad, postLoad, waitForOk, waitUntil } from './lib/load.mjs';

const PRODUCERS = 8;
const FIXED_RATE = 200;

/** Tasks not finished yet, for the systems that keep taskbox's statuses. */
const TASKS_UNFINISHED = `SELECT count(*)::int AS n FROM tasks WHERE status IN ('pending', 'processing')`;

const TASKBOX_STARTS = '(SELECT task_id, started_at FROM task_attempts WHERE attempt = 1)';

async function startTaskbox(db, serviceEnv, codeRoot) {
  const prefix = benchPrefix();
  const start = (name) => startService(name, { databaseUrl: db.url, prefix, env: serviceEnv[name], codeRoot });
  const api = await start('api');
  const relay = await start('relay');
  const worker = await start('worker');
  await waitForOk(`${relay.url}/readyz`);
  await waitForOk(`${worker.url}/readyz`);
  return {
    url: `${api.url}/tasks`,
    processes: { api: api.child, relay: relay.child, worker: worker.child },
    starts: TASKBOX_STARTS,
    usesBroker: true,
    pendingSql: TASKS_UNFINISHED,
    stop: async () => {
      await worker.stop();
      await relay.stop();
      await api.stop();
    },
  };
}

/** taskbox's api, relay and worker in one process (services/all-in-one), each with its settings above. */
async function startAllInOne(db, serviceEnv, codeRoot) {
  const prefix = benchPrefix();
  const [port, healthPort] = [await freePort(), await freePort()];
  const env = {
    ...{ DATABASE_URL: db.url, AMQP_URL: amqpUrl, AMQP_PREFIX: prefix, LOG_LEVEL: 'info' },
    ...serviceEnv.api,
    ...serviceEnv.relay,
    ...serviceEnv.worker,
    ...{ PORT: String(port), HEALTH_PORT: String(healthPort) },
  };
  const label = `all-in-one-${prefix.replace(/\W/g, '')}`;
  const server = await startProcess(label, 'services/all-in-one/dist/main.js', env, port, codeRoot);
  await waitForOk(`http://127.0.0.1:${healthPort}/readyz`);
  return {
    url: `http://127.0.0.1:${port}/tasks`,
    processes: { 'all-in-one': server.child },
    starts: TASKBOX_STARTS,
    usesBroker: true,
    pendingSql: TASKS_UNFINISHED,
    stop: server.stop,
  };
}

/** A comparison server (one process: HTTP in front, the worker inside) from `script`. */
function peer(label, script, route, pendingSql, usesBroker) {
  return async (db, serviceEnv) => {
    const port = await freePort();
    const env = { DATABASE_URL: db.url, PORT: String(port), PG_POOL_SIZE: serviceEnv.api.PG_POOL_SIZE };
    const extra = usesBroker ? { AMQP_URL: amqpUrl, AMQP_PREFIX: benchPrefix() } : {};
    const server = await startProcess(`${label}-${db.name}`, script, { ...env, ...extra }, port);
    return {
      url: `http://127.0.0.1:${port}/${route}`,
      processes: { [label]: server.child },
      starts: 'bench_starts',
      pendingSql,
      usesBroker,
      stop: server.stop,
    };
  };
}

/** taskbox from the checkout at `codeRoot`. */
const taskbox = (codeRoot) => ({ codeRoot, start: (db, serviceEnv) => startTaskbox(db, serviceEnv, codeRoot) });

/** Each system: the checkout whose migrations make its database, and how it starts. */
const peers = {
  naive: peer('naive', 'bench/naive-server.mjs', 'commit-then-publish', 'SELECT 0 AS n', true),
  'naive-guarded': peer('naive-guarded', 'bench/naive-server.mjs', 'guarded', TASKS_UNFINISHED, true),
  'outbox-minimal': peer('outbox-minimal', 'bench/naive-server.mjs', 'outbox', TASKS_UNFINISHED, true),
  'graphile-worker': peer(
    'graphile',
    'bench/peers/graphile-server.mjs',
    'tasks',
    'SELECT count(*)::int AS n FROM graphile_worker._private_jobs',
    false,
  ),
  'pg-boss': peer(
    'pgboss',
    'bench/peers/pgboss-server.mjs',
    'tasks',
    `SELECT count(*)::int AS n FROM pgboss.job WHERE state IN ('created', 'retry', 'active')`,
    false,
  ),
};

/** The systems by name: taskbox (as three services, and in one process), the variants (label → checkout), and the peers. */
export function systemsOf(variants) {
  const all = {
    taskbox: taskbox(root),
    'taskbox-all-in-one': { codeRoot: root, start: (db, serviceEnv) => startAllInOne(db, serviceEnv, root) },
  };
  for (const [label, dir] of Object.entries(variants)) all[label] = taskbox(dir);
  for (const [name, start] of Object.entries(peers)) all[name] = { codeRoot: root, start };
  return all;
}

const phaseSql = (starts) => `
  SELECT count(*)::int AS tasks, count(s.started_at)::int AS started,
         percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
           (ORDER BY extract(epoch FROM s.started_at - t.created_at) * 1000) AS start_ms,
         extract(epoch FROM max(s.started_at) - min(t.created_at))::float8 AS span_s
  FROM tasks t LEFT JOIN ${starts} s ON s.task_id = t.id
  WHERE t.payload->>'phase' = $1`;

/** Waits until every task of `phase` has started and the system has nothing left to finish. */
export async function phaseStats(db, system, phase, expected) {
  const s = await waitUntil(
    `every ${phase} task to start`,
    async () => {
      const { rows } = await db.pool.query(phaseSql(system.starts), [phase]);
      return rows[0].started >= expected ? rows[0] : undefined;
    },
    600_000,
    250,
  );
  await waitUntil(
    `${phase}: nothing left pending`,
    async () => {
      const { rows } = await db.pool.query(system.pendingSql);
      return rows[0].n === 0 ? true : undefined;
    },
    120_000,
  );
  const [p50, p99] = s.start_ms;
  return { tasks: s.tasks, tasksPerSecond: s.tasks / s.span_s, commitToStartMs: { p50, p99 } };
}

/** Postgres's processes that work for this database: its backends and the shared background ones. */
async function postgresPids(db) {
  const { rows } = await db.pool.query(
    'SELECT pid::text FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL',
  );
  return rows.map((r) => r.pid);
}

/**
 * Runs `phase` (a load that answers its HTTP figures) and measures its tasks and the CPU they cost: the
 * system's processes, the Postgres backends of its database and the shared ones, and RabbitMQ where used.
 */
async function measured(db, system, phase, runLoad) {
  const pids = await postgresPids(db);
  const meter = cpuMeter(system.processes, { postgres: () => pids });
  const load = await runLoad();
  const stats = await phaseStats(db, system, phase, load.ok);
  // Backends opened during the phase count whole (they did not exist at its start).
  pids.push(...(await postgresPids(db)).filter((pid) => !pids.includes(pid)));
  const cpu = meter.stop(stats.tasks);
  const own = Object.keys(system.processes).reduce((sum, name) => sum + cpu.msPerTask[name], 0);
  const rabbitmq = system.usesBroker ? cpu.msPerTask.rabbitmq : 0;
  return { ...stats, load, cpu: { ...cpu, own, total: own + cpu.msPerTask.postgres + rabbitmq } };
}

const fixedLoad = (db, system, phase, seconds) =>
  measured(db, system, phase, () => pacedLoad({ url: system.url, body: echo(phase), rate: FIXED_RATE, seconds }));

export const echo = (phase) => ({ type: 'echo', payload: { phase } });

const endToEnd = (db, system, phase, tasks) =>
  measured(db, system, phase, () =>
    postLoad({ url: system.url, body: echo(phase), connections: PRODUCERS, amount: tasks }),
  );

/** Every phase for one system, on its own database; stopped whatever happens. */
async function measureSystem(name, { codeRoot, start }, { tasks, seconds, serviceEnv, step }) {
  const db = await createBenchDatabase(codeRoot);
  const system = await start(db, serviceEnv);
  try {
    await endToEnd(db, system, 'warmup', 1000);
    step(`${name}: ${tasks} tasks from ${PRODUCERS} producers`);
    const e2e = await endToEnd(db, system, 'e2e', tasks);
    const half = e2e.tasksPerSecond / 2;
    step(`${name}: paced at ${half.toFixed(0)}/s (50 %), then ${FIXED_RATE}/s`);
    const load = await pacedLoad({ url: system.url, body: echo('half'), rate: half, seconds });
    const atHalf = { rate: half, ...(await phaseStats(db, system, 'half', load.ok)), load };
    const atFixed = await fixedLoad(db, system, 'fixed', seconds);
    step(`${name}: VACUUM, then ${tasks} tasks again`);
    await db.pool.query('VACUUM (ANALYZE)');
    const vacuumed = await endToEnd(db, system, 'e2e-vacuumed', tasks);
    return { e2e, atHalf, atFixed, vacuumed };
  } finally {
    await system.stop();
  }
}

/** The systems `names` names (BENCH_SYSTEMS), checked, and the variants' commits. */
async function chooseSystems(names, variants, fallback) {
  const systems = systemsOf(variants);
  const chosen = names ?? fallback(systems);
  const unknown = chosen.filter((name) => !systems[name]);
  if (unknown.length > 0) throw new Error(`BENCH_SYSTEMS: no system ${unknown.join(', ')} (${Object.keys(systems)})`);
  const variantCommits = {};
  for (const [label, dir] of Object.entries(variants)) variantCommits[label] = { dir, commit: await commitOf(dir) };
  return { systems, chosen, variantCommits };
}

/**
 * The `names` systems in turn (all of them when null); taskbox's ratios to each other one are computed
 * by the report.
 */
export async function measurePeers({ names, variants, ...options }) {
  const { systems, chosen, variantCommits } = await chooseSystems(names, variants, (all) => Object.keys(all));
  const results = {};
  for (const name of chosen) results[name] = await measureSystem(name, systems[name], options);
  const { tasks, seconds } = options;
  return { producers: PRODUCERS, fixedRate: FIXED_RATE, tasks, seconds, variants: variantCommits, results };
}

/**
 * A/B in alternation (BENCH_PHASES=ab): the `names` systems (taskbox and the variants when null) all
 * started at once, each on its own database, then `rounds` rounds in which each system in turn takes
 * `tasks` tasks from 8 producers and a paced load of `seconds` at 200/s, the order reversed every other
 * round. The machine's drift within a run then falls on every system alike; run one after another, as
 * in measurePeers, a system measured later takes all of it.
 */
export async function measureAlternating({ names, variants, rounds, tasks, seconds, serviceEnv, step }) {
  const { systems, chosen, variantCommits } = await chooseSystems(names, variants, () => [
    'taskbox',
    ...Object.keys(variants),
  ]);
  const running = {};
  try {
    for (const name of chosen) {
      const db = await createBenchDatabase(systems[name].codeRoot);
      running[name] = { db, system: await systems[name].start(db, serviceEnv) };
      await endToEnd(db, running[name].system, 'warmup', 1000);
    }
    const results = Object.fromEntries(chosen.map((name) => [name, []]));
    for (let round = 1; round <= rounds; round++) {
      for (const name of round % 2 === 1 ? chosen : [...chosen].reverse()) {
        step(`round ${round}/${rounds}: ${name}, ${tasks} tasks, then ${FIXED_RATE}/s`);
        const { db, system } = running[name];
        const e2e = await endToEnd(db, system, `e2e-${round}`, tasks);
        const atFixed = await fixedLoad(db, system, `fixed-${round}`, seconds);
        results[name].push({ e2e, atFixed });
      }
    }
    return { producers: PRODUCERS, fixedRate: FIXED_RATE, rounds, tasks, seconds, variants: variantCommits, results };
  } finally {
    for (const { system } of Object.values(running)) await system.stop();
  }
}
