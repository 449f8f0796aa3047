// The api's HTTP limits, measured against a real api process with its default settings:
// 1. how long a client that stalls in its headers holds a connection before the api cuts it;
// 2. POST /tasks latency (paced, open-loop) with no long poll waiting and with LONG_POLLS waiting on a
//    few pending tasks, alternating for ROUNDS rounds in one run; and the api's heap at each start.
// Usage: npm run build && node bench/http-limits.mjs   (env: LONG_POLLS, POST_RATE, PHASE_SECONDS, ROUNDS)
import http from 'node:http';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { cleanupAll, createBenchDatabase, startService } from './lib/env.mjs';
import { getText, pacedLoad, waitUntil } from './lib/load.mjs';

const LONG_POLLS = Number(process.env.LONG_POLLS ?? 1000);
const POST_RATE = Number(process.env.POST_RATE ?? 300);
const PHASE_SECONDS = Number(process.env.PHASE_SECONDS ?? 10);
const ROUNDS = Number(process.env.ROUNDS ?? 3);

function slowHeaderCut(port) {
  return new Promise((resolve) => {
    const started = performance.now();
    let received = '';
    const socket = net.connect(port, '127.0.0.1', () =>
      socket.write('GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: '),
    );
    socket.on('data', (chunk) => (received += chunk));
    socket.on('error', () => undefined);
    socket.on('close', () =>
      resolve({ seconds: (performance.now() - started) / 1000, status: received.split('\r\n')[0] }),
    );
  });
}

async function metric(url, name) {
  const text = await getText(`${url}/metrics`);
  return Number(new RegExp(`^${name}(?:\\{[^}]*\\})? ([\\d.e+-]+)$`, 'm').exec(text)?.[1] ?? NaN);
}

/** Keeps `count` long polls waiting on `ids` (each re-polls when answered) until `stop` is called. */
function holdLongPolls(url, ids, count) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  let stopped = false;
  const poll = (id) => {
    if (stopped) return;
    const req = http.get(`${url}/tasks/${id}?wait=30`, { agent }, (res) => {
      res.resume();
      res.on('end', () => poll(id));
    });
    req.on('error', () => setTimeout(() => poll(id), 100));
  };
  for (let n = 0; n < count; n++) poll(ids[n % ids.length]);
  return () => {
    stopped = true;
    agent.destroy();
  };
}

async function postPhase(api) {
  const heapMb = (await metric(api.url, 'nodejs_heap_size_used_bytes')) / 2 ** 20;
  const result = await pacedLoad({
    url: `${api.url}/tasks`,
    body: { type: 'echo' },
    rate: POST_RATE,
    seconds: PHASE_SECONDS,
  });
  return {
    ...result.latencyMs,
    ok: result.ok,
    requests: result.requests,
    errors: result.errors + result.non2xx,
    heapMb,
  };
}

/** Statements running in the bench database, other than this one. */
async function activeQueries(db) {
  const { rows } = await db.pool.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity
     WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()`,
  );
  return rows[0].n;
}

const gauge = (api) => metric(api.url, 'http_long_polls_waiting');

/** Alternates phases without and with long polls waiting, so both see the same noise on a shared machine. */
async function postLatency(api, db, ids) {
  const phases = [];
  for (let round = 1; round <= ROUNDS; round++) {
    phases.push({ round, polls: 0, ...(await postPhase(api)) });
    const stop = holdLongPolls(api.url, ids, LONG_POLLS);
    await waitUntil(
      `${LONG_POLLS} long polls to wait`,
      async () => ((await gauge(api)) >= LONG_POLLS ? true : undefined),
      60_000,
    );
    // The gauge counts a poll before its first read: wait for those reads too, so the phase measures
    // polls waiting, not polls arriving.
    await waitUntil(
      'the first reads to end',
      async () => ((await activeQueries(db)) === 0 ? true : undefined),
      60_000,
      50,
    );
    phases.push({ round, polls: LONG_POLLS, ...(await postPhase(api)) });
    stop();
    await waitUntil('the long polls to end', async () => ((await gauge(api)) === 0 ? true : undefined), 60_000);
  }
  const fmt = (ms) => ms.toFixed(1).padStart(6);
  for (const p of phases) {
    console.log(
      `round ${p.round}, ${String(p.polls).padStart(4)} long polls waiting: POST p50 ${fmt(p.p50)} ms, p99 ${fmt(p.p99)} ms, max ${fmt(p.max)} ms; ${p.ok}/${p.requests} 2xx, ${p.errors} not; api heap at start ${p.heapMb.toFixed(0)} MB`,
    );
  }
  const median = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
  for (const polls of [0, LONG_POLLS]) {
    const mine = phases.filter((p) => p.polls === polls);
    console.log(
      `median of ${ROUNDS}, ${String(polls).padStart(4)} long polls waiting: POST p50 ${fmt(median(mine.map((p) => p.p50)))} ms, p99 ${fmt(median(mine.map((p) => p.p99)))} ms`,
    );
  }
}

async function main() {
  const db = await createBenchDatabase();
  // Auth is off, so every caller is one owner: lift the per-owner cap to the number held here.
  const env = { LOG_LEVEL: 'warn', LONG_POLL_MAX_PER_OWNER: String(LONG_POLLS) };
  const api = await startService('api', { databaseUrl: db.url, prefix: 'bench-http.', env });

  const cut = await slowHeaderCut(api.port);
  console.log(`slow headers (defaults): cut after ${cut.seconds.toFixed(1)} s with "${cut.status}"`);

  // Pending tasks that nothing runs (no relay, no worker): their polls wait their full 30 s.
  const { rows } = await db.pool.query(
    `INSERT INTO tasks (id, type, payload, owner) SELECT gen_random_uuid(), 'echo', '{}', 'anonymous'
     FROM generate_series(1, 10) RETURNING id`,
  );
  await postLatency(
    api,
    db,
    rows.map((r) => r.id),
  );
}

try {
  await main();
} catch (err) {
  console.error(`failed: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}
