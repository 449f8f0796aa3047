import { createDb, createPool, shippedMigrations } from '@taskbox/shared';
import { createRelayMetrics } from '../../services/relay/src/metrics';
import { createWorkerMetrics } from '../../services/worker/src/metrics';
import { sql } from 'kysely';
import { adminUrl, createTestDatabase, quietLogger } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { parseMetrics, sample, scrape, type Sample } from '../helpers/metrics';
import { startStack, type Stack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';

describe('health and metrics of api, relay and worker', () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack({ RETRY_BASE_MS: '20', RETRY_MAX_MS: '100' });
  });

  afterAll(async () => {
    await stack.stop();
  });

  it('each service answers /healthz, and /readyz once its Postgres (and RabbitMQ) connections work', async () => {
    for (const [name, url] of Object.entries(stack.urls)) {
      expect(await (await fetch(`${url}/healthz`)).json()).toEqual({ status: 'ok' });
      const ready = await waitFor(`${name} to be ready`, async () => {
        const res = await fetch(`${url}/readyz`);
        return res.status === 200 ? ((await res.json()) as { checks: Record<string, boolean> }) : undefined;
      });
      const expected = name === 'api' ? { postgres: true } : { postgres: true, rabbitmq: true };
      expect(ready.checks).toEqual(expected);
    }
  });

  it('each service answers HEAD as GET, another method 405 with Allow, and an unknown path 404, as problems', async () => {
    for (const [name, url] of Object.entries(stack.urls)) {
      const head = await fetch(`${url}/healthz`, { method: 'HEAD' });
      const post = await fetch(`${url}/readyz`, { method: 'POST' });
      const unknown = await fetch(`${url}/nope`);
      expect([name, head.status, post.status, unknown.status]).toEqual([name, 200, 405, 404]);
      expect(post.headers.get('allow')).toMatch(/^GET, HEAD\b/);
      for (const res of [post, unknown]) {
        expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
        expect(await res.json()).toMatchObject({ status: res.status });
      }
    }
  });

  it('answers /readyz 503 in each service while a migration of its build is not applied, naming it in a log line', async () => {
    const { pool } = stack.database;
    const readiness = async (url: string) => {
      const res = await fetch(`${url}/readyz`);
      return [res.status, ((await res.json()) as { checks: { postgres: boolean } }).checks.postgres] as const;
    };
    const latest = (await shippedMigrations()).at(-1);
    await pool.query('DELETE FROM kysely_migration WHERE name = $1', [latest]);
    try {
      for (const [name, url] of Object.entries(stack.urls)) {
        expect([name, await readiness(url)]).toEqual([name, [503, false]]);
        const line = await stack[name as keyof typeof stack.urls].waitForLog('the missing migration', (l) =>
          String(l.message).includes('migrations not applied'),
        );
        expect(line).toMatchObject({ level: 'warn', missing: [latest] });
      }
    } finally {
      await pool.query('INSERT INTO kysely_migration (name, timestamp) VALUES ($1, now())', [latest]);
    }
    // One the build does not know, as a newer build's rolling upgrade applies: still ready.
    await pool.query("INSERT INTO kysely_migration (name, timestamp) VALUES ('9999_from_a_newer_build', now())");
    try {
      for (const [name, url] of Object.entries(stack.urls))
        expect([name, await readiness(url)]).toEqual([name, [200, true]]);
    } finally {
      await pool.query("DELETE FROM kysely_migration WHERE name = '9999_from_a_newer_build'");
    }
  });

  it('exports retries and dead letters at zero before anything happened', async () => {
    const worker = await scrape(stack.urls.worker);
    expect(sample(worker, 'worker_attempt_failures_total', { final: 'false' })).toBe(0);
    expect(sample(worker, 'worker_dead_letters_total', { reason: 'unparseable', queue: 'tasks' })).toBe(0);
    expect(sample(worker, 'tasks_by_status', { status: 'failed' })).toBe(0);
    const relay = await scrape(stack.urls.relay);
    expect(sample(relay, 'relay_publish_failures_total')).toBe(0);
    const republished = relay.filter((s) => s.name === 'tasks_republished_total');
    expect(republished.map((s) => [s.labels.queue, s.labels.state, s.value])).toEqual(
      expect.arrayContaining([
        ['tasks', 'caught-up', 0],
        ['tasks', 'backlog', 0],
      ]),
    );
    expect(republished.every((s) => s.labels.state !== undefined)).toBe(true);
  });

  it('counts requests, publishes, deliveries, handler runs, a retry and tasks by status after a few tasks', async () => {
    const submit = async (type: string, payload: unknown) => {
      const res = await fetch(`${stack.urls.api}/tasks`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ type, payload }),
      });
      expect(res.status).toBe(202);
    };
    await Promise.all([submit('echo', { n: 1 }), submit('echo', { n: 2 }), submit('echo', { n: 3 })]);
    await submit('flaky', { failTimes: 1 });
    let worker: Sample[] = [];
    await waitFor('4 succeeded tasks in the worker metrics', async () => {
      worker = await scrape(stack.urls.worker);
      return sample(worker, 'tasks_by_status', { status: 'succeeded' }) === 4;
    });

    // Errors too are labelled with the route as clients call it.
    const invalid = await fetch(`${stack.urls.api}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'nope' }),
    });
    expect(invalid.status).toBe(422);
    expect((await fetch(`${stack.urls.api}/tasks/00000000-0000-4000-8000-000000000000`)).status).toBe(404);

    const api = await scrape(stack.urls.api);
    const post202 = { method: 'POST', route: '/tasks', status: '202' };
    expect(sample(api, 'http_requests_total', post202)).toBe(4);
    expect(sample(api, 'http_requests_total', { method: 'POST', route: '/tasks', status: '422' })).toBe(1);
    expect(sample(api, 'http_requests_total', { method: 'GET', route: '/tasks/:id', status: '404' })).toBe(1);
    expect(sample(api, 'http_request_duration_seconds_count', post202)).toBe(4);

    const relay = await scrape(stack.urls.relay);
    expect(sample(relay, 'relay_published_total')).toBe(5); // 4 first attempts + 1 retry
    expect(sample(relay, 'relay_publish_failures_total')).toBe(0);
    expect(sample(relay, 'outbox_backlog')).toBe(0);
    expect(sample(relay, 'outbox_oldest_unpublished_age_seconds')).toBe(0);
    expect(sample(relay, 'relay_batch_size_count')).toBeGreaterThan(0);
    expect(sample(relay, 'relay_batch_size_sum')).toBe(5);
    expect(sample(relay, 'relay_confirm_seconds_count')).toBe(sample(relay, 'relay_batch_size_count'));

    expect(sample(worker, 'worker_deliveries_total', { outcome: 'run', queue: 'tasks' })).toBe(5);
    expect(sample(worker, 'worker_handler_duration_seconds_count', { type: 'echo', outcome: 'succeeded' })).toBe(3);
    expect(sample(worker, 'worker_handler_duration_seconds_count', { type: 'flaky', outcome: 'failed' })).toBe(1);
    expect(sample(worker, 'worker_handler_duration_seconds_count', { type: 'flaky', outcome: 'succeeded' })).toBe(1);
    expect(sample(worker, 'worker_attempt_failures_total', { final: 'false' })).toBe(1);
    expect(sample(worker, 'worker_attempt_failures_total', { final: 'true' })).toBe(0);
    expect(sample(worker, 'tasks_by_status', { status: 'pending' })).toBe(0);
  });

  it('stops api, relay and worker with exit code 0', async () => {
    expect(await stack.stop()).toEqual([0, 0, 0]);
  });
});

describe('metrics while Postgres is unreachable', () => {
  it('still answer every counter of the relay and the worker, rather than failing the scrape', async () => {
    const url = new URL(adminUrl());
    url.pathname = '/taskbox_no_such_database';
    const pool = createPool(url.toString(), quietLogger, { max: 1, statementTimeoutMs: 2000 });
    const db = createDb(pool);
    try {
      const relay = await createRelayMetrics(db, ['tasks'], { processMetrics: false }).registry.metrics();
      const worker = await createWorkerMetrics(db, ['tasks'], { processMetrics: false }).registry.metrics();
      expect(relay).toMatch(/^relay_published_total\b/m);
      expect(worker).toMatch(/^worker_dead_letters_total\b/m);
    } finally {
      await pool.end();
    }
  });
});

describe("the relay's outbox gauges", () => {
  it('give the backlog and the age of its oldest row from the same read, in the first scrape', async () => {
    const database = await createTestDatabase();
    try {
      const id = await insertTaskFixture(database.db, { withOutbox: true });
      await sql`UPDATE outbox SET available_at = now() - interval '40 seconds' WHERE task_id = ${id}`.execute(
        database.db,
      );
      const registry = createRelayMetrics(database.db, ['tasks'], { processMetrics: false }).registry;
      const first = parseMetrics(await registry.metrics());
      expect(sample(first, 'outbox_backlog')).toBe(1);
      expect(sample(first, 'outbox_oldest_unpublished_age_seconds')).toBeGreaterThanOrEqual(40);

      await sql`UPDATE outbox SET published_at = now()`.execute(database.db);
      const drained = parseMetrics(await registry.metrics());
      expect(sample(drained, 'outbox_backlog')).toBe(0);
      expect(sample(drained, 'outbox_oldest_unpublished_age_seconds')).toBe(0);
    } finally {
      await database.drop();
    }
  });
});
