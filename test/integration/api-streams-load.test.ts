import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { sql } from 'kysely';
import { TASK_CHANNEL, taskChanged } from '@taskbox/shared';
import { insertTaskFixture } from '../helpers/factories';
import type { RunningService } from '../helpers/services';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

const STREAMS = 1000;
const TASKS = 10;
const POST_RATE = 100;
const POST_SECONDS = 5;

interface HeldStream {
  events: number;
  ended: boolean;
  request: http.ClientRequest;
}

/** Opens a raw stream and counts its task events; the payloads do not matter here, their arrival does. */
function holdStream(url: string, agent: http.Agent): HeldStream {
  const held: HeldStream = { events: 0, ended: false, request: http.get(url, { agent }) };
  held.request.on('response', (res) => {
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => (held.events += chunk.split('event: task\n').length - 1));
    res.on('end', () => (held.ended = true));
  });
  held.request.on('error', () => (held.ended = true));
  return held;
}

function post(url: string, agent: http.Agent): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}/tasks`, {
      method: 'POST',
      agent,
      headers: { 'content-type': 'application/json' },
    });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () =>
        res.statusCode === 202 ? resolve(performance.now() - started) : reject(new Error(`POST ${res.statusCode}`)),
      );
    });
    req.on('error', reject);
    req.end(JSON.stringify({ type: 'echo', payload: {} }));
  });
}

/** POSTs at a fixed rate whatever the answers do (open loop), so a slow api shows as latency, not as fewer requests. */
async function pacedPosts(url: string): Promise<{ p50: number; p99: number; max: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 50 });
  const started = performance.now();
  const answers: Promise<number>[] = [];
  for (let i = 0; i < POST_RATE * POST_SECONDS; i++) {
    const due = started + (i * 1000) / POST_RATE;
    await new Promise((r) => setTimeout(r, Math.max(0, due - performance.now())));
    answers.push(post(url, agent));
  }
  const sorted = (await Promise.all(answers)).sort((a, b) => a - b);
  agent.destroy();
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
  return { p50: at(0.5), p99: at(0.99), max: sorted.at(-1) as number };
}

async function gauge(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
}

describe(`api: ${STREAMS} open streams on one process`, () => {
  let system: System;
  let api: RunningService;
  let url: string;
  let ids: string[];
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

  beforeAll(async () => {
    // Auth is off, so every stream has one owner: lift the per-owner cap to the number held here.
    system = await startSystem({ LONG_POLL_MAX_PER_OWNER: String(STREAMS) });
    api = await system.start('api');
    url = `http://127.0.0.1:${await api.port()}`;
    ids = await Promise.all(Array.from({ length: TASKS }, () => insertTaskFixture(system.database.db)));
  });

  afterAll(async () => {
    agent.destroy();
    await system.stop();
  });

  it('holds them on one LISTEN connection, fans a change out to every stream of the task, and measures POST latency meanwhile', async () => {
    // The first phase of a fresh process pays for its warm-up (connections, plans, JIT): not measured.
    await pacedPosts(url);
    const before = await pacedPosts(url);
    const streams = Array.from({ length: STREAMS }, (_, i) =>
      holdStream(`${url}/tasks/${ids[i % TASKS]}/events`, agent),
    );
    await waitFor('every stream’s first event', () => streams.every((s) => s.events === 1), 60_000, 100);
    expect(await gauge(url, 'http_streams_open')).toBe(STREAMS);

    const { rows } = await sql<{ n: number }>`
      SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database()`.execute(system.database.db);
    // The api's pool (10), its listener and this test's own pool (10): nowhere near one per stream.
    expect(rows[0]?.n).toBeLessThanOrEqual(21);

    const during = await pacedPosts(url);
    const changed = ids[0] as string;
    await system.database.db
      .updateTable('tasks')
      .set({ progress: 0.5, ...taskChanged })
      .where('id', '=', changed)
      .execute();
    await sql`SELECT pg_notify(${TASK_CHANNEL}, ${changed})`.execute(system.database.db);
    const mine = streams.filter((_, i) => i % TASKS === 0);
    await waitFor('the change on each of its streams', () => mine.every((s) => s.events === 2), 30_000, 50);
    expect(streams.filter((_, i) => i % TASKS !== 0).every((s) => s.events === 1)).toBe(true);

    const fmt = (p: { p50: number; p99: number; max: number }) =>
      `p50 ${p.p50.toFixed(1)} ms, p99 ${p.p99.toFixed(1)} ms, max ${p.max.toFixed(1)} ms`;
    console.log(
      `POST /tasks at ${POST_RATE}/s for ${POST_SECONDS} s: no streams ${fmt(before)}; ${STREAMS} streams open ${fmt(during)}`,
    );

    streams.forEach((s) => s.request.destroy());
    await waitFor('the api to release every stream', async () => (await gauge(url, 'http_streams_open')) === 0);
  });

  it('ends its open streams cleanly at SIGTERM and exits 0 without waiting for them', async () => {
    const streams = Array.from({ length: 200 }, (_, i) => holdStream(`${url}/tasks/${ids[i % TASKS]}/events`, agent));
    await waitFor('every stream’s first event', () => streams.every((s) => s.events === 1), 30_000, 50);
    const started = performance.now();
    expect(await api.stop()).toBe(0);
    expect(performance.now() - started).toBeLessThan(10_000);
    await waitFor('every stream to end', () => streams.every((s) => s.ended));
  });
});
