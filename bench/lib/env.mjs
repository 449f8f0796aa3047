// The bench's own environment: a fresh database, a fresh AMQP prefix, services as child processes.
// Everything created here is registered for cleanup, which runs even when a phase fails.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import pg from 'pg';
import shared from '../../packages/shared/dist/index.js';
import tasks from '../../packages/tasks/dist/index.js';
import { spawnChild, waitUntilListening } from '../../tools/dist/harness.js';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const outDir = path.join(root, 'bench/out');
export const adminUrl = process.env.BENCH_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const amqpUrl = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
// The socket options the services use (packages/shared/src/amqp.ts), so that the comparisons measure
// the same transport.
export const { amqpSocketOptions } = shared;

const cleanups = [];

/** Runs the registered cleanups, newest first; a failing one does not stop the others. */
export async function cleanupAll() {
  while (cleanups.length > 0) {
    const fn = cleanups.pop();
    await fn().catch((err) => console.error(`cleanup failed: ${err.message}`));
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function randomName(kind) {
  return `${kind}${randomBytes(5).toString('hex')}`;
}

export async function adminQuery(text, params = []) {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    return await client.query(text, params);
  } finally {
    await client.end();
  }
}

function dbUrl(name) {
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/**
 * A new database migrated by migrate-main of the checkout at `codeRoot` (this one unless a baseline's,
 * see BENCH_BASELINE in peers.mjs); dropped at cleanup.
 */
export async function createBenchDatabase(codeRoot = root) {
  const name = randomName('taskbox_bench_');
  const url = dbUrl(name);
  cleanups.push(() => adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
  await runToEnd(process.execPath, [path.join(codeRoot, 'tools/dist/migrate-main.js')], {
    DATABASE_URL: url,
    LOG_LEVEL: 'warn',
  });
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  cleanups.push(() => pool.end());
  return { name, url, pool };
}

/** A fresh AMQP prefix whose queues and exchanges are deleted at cleanup. */
export function benchPrefix() {
  const prefix = randomName('bench-') + '.';
  cleanups.push(() => deleteTopology(prefix));
  return prefix;
}

/** Plain deletes: quorum queues refuse ifUnused/ifEmpty (and the refusal closes the channel). */
export async function deleteTopology(prefix) {
  const { queues, exchange } = shared.amqpTopology(prefix, tasks.taskTypeList);
  const connection = await amqp.connect(amqpUrl);
  try {
    const ch = await connection.createChannel();
    for (const q of queues) {
      for (const name of [q.queue, q.deadQueue]) await ch.deleteQueue(name);
      await ch.deleteExchange(q.deadExchange);
    }
    await ch.deleteExchange(exchange);
    await ch.close();
  } finally {
    await connection.close();
  }
}

export function runToEnd(command, args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${path.basename(command)} exited ${code}: ${err || out}`)),
    );
  });
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts `node <script>` (tools/src/harness.ts) with stdout and stderr written straight to
 * bench/out/logs/<label>.log. Resolves when its port accepts connections; stopped at cleanup.
 */
export async function startProcess(label, script, env, port, codeRoot = root) {
  const logFile = path.join(outDir, 'logs', `${label}.log`);
  mkdirSync(path.dirname(logFile), { recursive: true });
  const profile = process.env.BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${path.join(outDir, 'profiles')}`] : [];
  const child = spawnChild({ script: path.join(codeRoot, script), env, log: { file: logFile }, nodeArgs: profile });
  const stop = async () => {
    await child.stop();
  };
  cleanups.push(stop);
  await waitUntilListening(child, port);
  return { child: child.process, stop, logFile };
}

/**
 * Starts api, relay or worker from its built dist (in the checkout at `codeRoot`), against the given
 * database and prefix.
 */
export async function startService(name, { databaseUrl, prefix, env = {}, instance = '', codeRoot = root }) {
  const port = await freePort();
  const portEnv = name === 'api' ? { PORT: String(port) } : { HEALTH_PORT: String(port) };
  const service = await startProcess(
    `${name}${instance}-${prefix.replace(/\W/g, '')}`,
    `services/${name}/dist/main.js`,
    { DATABASE_URL: databaseUrl, AMQP_URL: amqpUrl, AMQP_PREFIX: prefix, LOG_LEVEL: 'info', ...portEnv, ...env },
    port,
    codeRoot,
  );
  return { ...service, port, url: `http://127.0.0.1:${port}` };
}

/** What a report's figures were measured with: the code's commit, and the servers' versions. */
export async function versions() {
  const commit = await commitOf(root);
  const { rows } = await adminQuery('SHOW server_version');
  const connection = await amqp.connect(amqpUrl);
  const rabbitmq = String(connection.connection.serverProperties.version);
  await connection.close();
  return {
    commit,
    postgres: rows[0].server_version,
    rabbitmq,
    node: process.version,
  };
}

/** The checkout's commit, marked when its tracked files have changes. */
export async function commitOf(dir) {
  const commit = (await runToEnd('git', ['-C', dir, 'rev-parse', '--short', 'HEAD'])).trim();
  const dirty = (await runToEnd('git', ['-C', dir, 'status', '--porcelain', '--untracked-files=no'])).trim() !== '';
  return dirty ? `${commit} (with uncommitted changes)` : commit;
}
