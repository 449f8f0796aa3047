// `npm run bench`: measures taskbox on this machine in one run, so that the ratios hold when the
// machine is noisy. Writes bench/out/report.json, report.md and latency.svg. See bench/README.md.
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { measureBrokerFloor } from './broker-floor.mjs';
import { measureCeiling } from './ceiling.mjs';
import { measureApi, measureEndToEnd } from './e2e.mjs';
import { benchPrefix, cleanupAll, createBenchDatabase, outDir, startService, versions } from './lib/env.mjs';
import { measureNaive } from './naive.mjs';
import { measureAlternating, measurePeers } from './peers.mjs';
import { measureRelay } from './relay-drain.mjs';
import { renderMarkdown, renderSvg } from './report.mjs';
import { measureScale } from './scale.mjs';

const int = (name, fallback) => {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer`);
  return value;
};

const settings = {
  seconds: int('BENCH_SECONDS', 20),
  connections: int('BENCH_CONNECTIONS', 16),
  relayRows: int('BENCH_RELAY_ROWS', 100_000),
  scaleTasks: int('BENCH_SCALE_TASKS', 3000),
  peerTasks: int('BENCH_PEER_TASKS', 20_000),
  peerSeconds: int('BENCH_PEER_SECONDS', 15),
  abRounds: int('BENCH_AB_ROUNDS', 4),
  pgPoolSize: int('PG_POOL_SIZE', 10),
  relayBatchSize: int('RELAY_BATCH_SIZE', 200),
  workerPrefetch: int('WORKER_PREFETCH', 20),
  logLevel: process.env.BENCH_LOG_LEVEL ?? 'info',
  // The peers comparison's systems, in this order (peers.mjs): all of them when unset.
  systems: process.env.BENCH_SYSTEMS?.split(',') ?? null,
  // Other checkouts of taskbox to measure beside this one (peers.mjs): `label=dir,...`.
  variants: Object.fromEntries(
    (process.env.BENCH_VARIANTS?.split(',') ?? []).map((entry) => {
      const [label, dir] = entry.split('=');
      if (!label || !dir) throw new Error('BENCH_VARIANTS: label=dir, comma-separated');
      return [label, path.resolve(dir)];
    }),
  ),
};

const serviceEnv = {
  api: { PG_POOL_SIZE: String(settings.pgPoolSize), LOG_LEVEL: settings.logLevel },
  relay: { RELAY_BATCH_SIZE: String(settings.relayBatchSize), LOG_LEVEL: settings.logLevel },
  worker: { WORKER_PREFETCH: String(settings.workerPrefetch), LOG_LEVEL: settings.logLevel },
};

// The end-to-end throughput target (tasks/s); the broker's own CPU is measured at this rate.
const TARGET_TASKS_PER_SECOND = 1000;

const step = (what) => console.log(`${new Date().toISOString().slice(11, 19)} ${what}`);

// BENCH_PHASES: `core` (taskbox alone, its ceiling, the naive designs, the relay, scaling out) and
// `peers` (taskbox against graphile-worker, pg-boss and naive dispatch), comma-separated; or `ab`
// (taskbox against its variants in alternation, peers.mjs), which no default run includes.
const PHASES = ['core', 'peers', 'ab'];
const phases = (process.env.BENCH_PHASES ?? 'core,peers').split(',');
if (phases.some((p) => !PHASES.includes(p))) throw new Error(`BENCH_PHASES: each of ${PHASES.join(', ')}`);

async function measureCore(report) {
  const { seconds, connections } = settings;
  const db = await createBenchDatabase();
  const prefix = benchPrefix();

  step('broker floor');
  report.brokerFloor = await measureBrokerFloor({
    targetRate: TARGET_TASKS_PER_SECOND,
    prefetch: settings.workerPrefetch,
  });
  step(`ceiling: pgbench, ${connections} clients`);
  report.ceiling = await measureCeiling({ databaseUrl: db.url, pool: db.pool, clients: connections, seconds });
  step('api alone');
  const api = await startService('api', { databaseUrl: db.url, prefix, env: serviceEnv.api });
  report.api = await measureApi({ api, pool: db.pool, connections, seconds });
  report.ratios = {
    apiVsInsert: report.api.perSecond / report.ceiling.insert.perSecond,
    apiVsInsertWithNotify: report.api.perSecond / report.ceiling.insertWithNotify.perSecond,
  };
  step('naive designs');
  report.naive = await measureNaive({
    databaseUrl: db.url,
    pool: db.pool,
    prefix: benchPrefix(),
    connections,
    seconds,
    poolSize: settings.pgPoolSize,
  });
  step('end to end');
  report.e2e = await measureEndToEnd({ api, db, prefix, connections, seconds, serviceEnv });
  await api.stop();
  step(`relay alone: ${settings.relayRows} rows`);
  const relayDb = await createBenchDatabase();
  report.relay = await measureRelay({
    db: relayDb,
    rows: settings.relayRows,
    batchSize: settings.relayBatchSize,
    env: serviceEnv.relay,
  });

  step(`scaling out: ${settings.scaleTasks} tasks, 1 + 1 then 3 + 3`);
  report.scale = await measureScale({ tasks: settings.scaleTasks, serviceEnv });
}

async function main() {
  await mkdir(path.join(outDir, 'runs'), { recursive: true });
  const report = {
    startedAt: new Date().toISOString(),
    command: process.env.BENCH_COMMAND ?? 'npm run bench',
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model ?? '?', loadAverage: os.loadavg()[0].toFixed(2) },
    versions: await versions(),
    settings,
    phases,
  };
  if (phases.includes('core')) await measureCore(report);
  const options = {
    names: settings.systems,
    variants: settings.variants,
    tasks: settings.peerTasks,
    seconds: settings.peerSeconds,
    serviceEnv,
    step,
  };
  if (phases.includes('peers')) report.peers = await measurePeers(options);
  if (phases.includes('ab')) report.ab = await measureAlternating({ ...options, rounds: settings.abRounds });
  const json = JSON.stringify(report, null, 2) + '\n';
  await writeFile(path.join(outDir, 'report.json'), json);
  // Every run's report is kept, for ranges over runs (bench/ranges.mjs).
  await writeFile(path.join(outDir, 'runs', `${report.startedAt.replace(/[:.]/g, '-')}.json`), json);
  await writeFile(path.join(outDir, 'report.md'), renderMarkdown(report) + '\n');
  if (report.e2e) await writeFile(path.join(outDir, 'latency.svg'), renderSvg(report) + '\n');
  console.log(renderMarkdown(report));
}

let interrupted = false;
const abort = (why, code) => {
  if (interrupted) process.exit(code);
  interrupted = true;
  console.error(`${why}; cleaning up`);
  cleanupAll().finally(() => process.exit(code));
};
process.on('SIGINT', () => abort('interrupted', 130));
// An error thrown inside a library callback (amqplib emits them) still removes the database and queues.
process.on('uncaughtException', (err) => abort(`bench failed: ${err.stack ?? err}`, 1));

try {
  await main();
} catch (err) {
  console.error(`bench failed: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}
