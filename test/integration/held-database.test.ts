import { createDb, createPool, isDbUnavailable, isTransientDbError } from '@taskbox/shared';
import pg from 'pg';
import request from 'supertest';
import { startTestApi, type TestApi } from '../helpers/api';
import { adminUrl, createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { capturingLogger } from '../helpers/log';
import { insertTaskFixture } from '../helpers/factories';
import { startFaultProxy } from '../helpers/proxy';
import { openSse } from '../helpers/sse';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

/**
 * Postgres that holds its callers instead of refusing them: a table locked by another session, a
 * statement that runs too long, a read-only server. The api must answer 503 with Retry-After within
 * 12 s and write nothing, with its default settings.
 */
describe('a database that holds requests', () => {
  let system: System;
  let api: string;

  beforeAll(async () => {
    system = await startSystem();
    const service = await system.start('api');
    api = `http://127.0.0.1:${await service.port()}`;
  });
  afterAll(async () => {
    await system.stop();
  });

  async function withLockedTasks<T>(work: () => Promise<T>): Promise<T> {
    const locker = new pg.Client({ connectionString: system.database.url });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE tasks');
      return await work();
    } finally {
      await locker.query('ROLLBACK');
      await locker.end();
    }
  }

  it('answers every POST and GET 503 with Retry-After within 12 s while tasks is locked, and writes nothing', async () => {
    const post = (i: number) =>
      fetch(`${api}/tasks`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ type: 'echo', payload: { i } }),
      });
    const started = Date.now();
    const answers = await withLockedTasks(async () => {
      const responses = await Promise.all([
        ...Array.from({ length: 40 }, (_, i) => post(i)),
        fetch(`${api}/tasks/00000000-0000-4000-8000-000000000000`),
      ]);
      return Promise.all(
        responses.map(async (res) => ({
          status: res.status,
          type: res.headers.get('content-type'),
          retryAfter: res.headers.get('retry-after'),
          ms: Date.now() - started,
        })),
      );
    });
    console.log(`held lock: slowest 503 after ${Math.max(...answers.map((a) => a.ms))} ms`);
    for (const a of answers) {
      expect(a).toMatchObject({ status: 503, retryAfter: expect.stringMatching(/^\d+$/) });
      expect(a.type).toMatch(/^application\/problem\+json/);
      expect(a.ms).toBeLessThan(12_000);
    }
    const stored = await system.database.db.selectFrom('tasks').select('id').execute();
    expect(stored).toEqual([]);
    expect((await post(0)).status).toBe(202);
  }, 30_000);

  it('classes a statement timeout, a lock not available and a read-only server as "database unavailable"', async () => {
    const client = new pg.Client({ connectionString: system.database.url });
    await client.connect();
    const failure = (text: string) =>
      client.query(text).then(
        () => null,
        (err: unknown) => err,
      );
    try {
      await client.query("SET statement_timeout = '50ms'");
      const timeout = await failure('SELECT pg_sleep(1)');
      await client.query('RESET statement_timeout');
      await client.query('SET default_transaction_read_only = on');
      const readOnly = await failure(
        "INSERT INTO tasks (id, type, payload, owner) VALUES (gen_random_uuid(), 'echo', '{}', 'x')",
      );
      await client.query('RESET default_transaction_read_only');
      await client.query("SET lock_timeout = '50ms'");
      const lockNotAvailable = await withLockedTasks(() => failure('SELECT count(*) FROM tasks'));
      expect([timeout, readOnly, lockNotAvailable].map((e) => (e as { code?: string }).code)).toEqual([
        '57014',
        '25006',
        '55P03',
      ]);
      for (const err of [timeout, readOnly, lockNotAvailable]) {
        expect(isDbUnavailable(err)).toBe(true);
        expect(isTransientDbError(err)).toBe(true);
      }
    } finally {
      await client.end();
    }
  });

  it('classes a full NOTIFY queue as unavailable but not a value over a size limit, which shares its SQLSTATE', async () => {
    const tooLarge = await system.database.pool.query('SELECT array_fill(1, ARRAY[200000000])').then(
      () => null,
      (err: unknown) => err,
    );
    expect(tooLarge).toMatchObject({ code: '54000' });
    expect(isTransientDbError(tooLarge)).toBe(false);
    // Filling the real queue takes 8 GB; this is the error Postgres raises then (async.c).
    const fullQueue = Object.assign(new Error('too many notifications in the NOTIFY queue'), { code: '54000' });
    expect(isDbUnavailable(fullQueue)).toBe(true);
  });
});

describe('a list that runs past the statement timeout', () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database.drop();
  });

  it('answers 503 saying the query ran too long and how to narrow it, logged as a timeout, not an outage', async () => {
    const pool = createPool(database.url, quietLogger, { max: 2, statementTimeoutMs: 300 });
    const { logger, lines } = capturingLogger();
    const api = await startTestApi({ pool, db: createDb(pool), logger });
    const locker = new pg.Client({ connectionString: database.url });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE tasks');
      const res = await request(api.app).get('/tasks?errorContains=timeout');
      expect(res.status).toBe(503);
      expect(res.headers['retry-after']).toMatch(/^\d+$/);
      expect(res.body.detail).toMatch(/DB_STATEMENT_TIMEOUT_MS.*narrow them/);
      expect(lines.map((l) => l.message)).toEqual(['database statement timed out']);
    } finally {
      await locker.query('ROLLBACK');
      await locker.end();
      await api.close();
      await pool.end();
    }
  });
});

describe('a list stream reading a locked table', () => {
  it.each([
    // From the first transaction on: everything the owner ever changed is to catch up on.
    [
      'catching up',
      { 'last-event-id': '1' },
      ['ready'],
      'list stream catch-up failed; the client resumes from its last event id',
    ],
    // Opened afresh: a stream's ids start at `ready`, so its client opens it afresh again.
    [
      'sending its current state',
      {},
      ['current'],
      'list stream read of the current state failed; the client starts again',
    ],
  ])('ends the stream %s with a warning, for its client to open it again', async (_, headers, events, warning) => {
    const database = await createTestDatabase();
    const pool = createPool(database.url, quietLogger, { max: 4, statementTimeoutMs: 300 });
    const { logger, lines } = capturingLogger();
    const api = await startTestApi({ pool, db: createDb(pool), logger });
    const base = await api.listen();
    const locker = new pg.Client({ connectionString: database.url });
    await locker.connect();
    try {
      await insertTaskFixture(database.db, { status: 'succeeded' });
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE tasks');
      const stream = await openSse(`${base}/tasks/events`, headers);
      await stream.ended;
      expect(stream.events.map((e) => e.event)).toEqual(events);
      expect(lines.map((l) => l.message)).toContain(warning);
    } finally {
      await locker.query('ROLLBACK');
      await locker.end();
      await api.close();
      await pool.end();
      await database.drop();
    }
  });
});

describe('a database the api cannot log in to', () => {
  let api: TestApi;
  let missing: pg.Pool;

  beforeAll(async () => {
    // The test server, a database that does not exist: as after a typo in DATABASE_URL, or a drop.
    const url = new URL(adminUrl());
    url.pathname = '/taskbox_no_such_database';
    missing = createPool(url.toString(), quietLogger, { max: 2, statementTimeoutMs: 5000 });
    api = await startTestApi({ db: createDb(missing), pool: missing });
  });
  afterAll(async () => {
    await api.close();
    await missing.end();
  });

  it('answers 503 with Retry-After, as for any database that is unavailable, not 500', async () => {
    const created = await request(api.app).post('/tasks').send({ type: 'echo', payload: {} });
    const read = await request(api.app).get('/tasks/00000000-0000-4000-8000-000000000000');
    for (const res of [created, read]) {
      expect(res.status).toBe(503);
      expect(res.headers['retry-after']).toMatch(/^\d+$/);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    }
  });
});

describe('an insert whose answer was lost', () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database.drop();
  });

  it('answers 202, not 503, when the insert committed but its answer was lost on the way back', async () => {
    const proxy = await startFaultProxy('127.0.0.1', Number(new URL(database.url).port || 5432));
    const pool = createPool(proxy.url(database.url), quietLogger, { max: 4, statementTimeoutMs: 10_000 });
    const lost = await startTestApi({ pool, db: createDb(pool) });
    const locker = new pg.Client({ connectionString: database.url });
    await locker.connect();
    try {
      // The insert reaches Postgres and waits behind the lock; its answer is held back, then dropped.
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE outbox IN SHARE MODE');
      const answer = request(lost.app)
        .post('/tasks')
        .send({ type: 'echo', payload: { lost: 'answer' } });
      const sent = answer.then((res) => res);
      await waitFor('the insert waiting on the lock', async () => {
        const { rows } = await locker.query(
          "SELECT 1 FROM pg_locks WHERE relation = 'outbox'::regclass AND NOT granted",
        );
        return rows.length > 0;
      });
      proxy.blackhole();
      await locker.query('COMMIT');
      await waitFor('the insert committed', async () => {
        const { rows } = await locker.query('SELECT 1 FROM tasks WHERE payload = \'{"lost": "answer"}\'');
        return rows.length > 0;
      });
      proxy.reset();
      const res = await sent;
      expect(res.status).toBe(202);
      const { rows } = await locker.query<{ id: string }>(
        'SELECT id FROM tasks WHERE payload = \'{"lost": "answer"}\'',
      );
      expect(rows.map((r) => r.id)).toEqual([(res.body as { id: string }).id]);
    } finally {
      await locker.end();
      await lost.close();
      await pool.end().catch(() => undefined);
      await proxy.close();
    }
  }, 30_000);

  it('answers 503 when the connection broke before the insert reached Postgres, which has no such task', async () => {
    const proxy = await startFaultProxy('127.0.0.1', Number(new URL(database.url).port || 5432));
    const pool = createPool(proxy.url(database.url), quietLogger, { max: 1, statementTimeoutMs: 10_000 });
    const lost = await startTestApi({ pool, db: createDb(pool) });
    try {
      await pool.query('SELECT 1'); // the pool's one connection, open before the fault
      proxy.blackhole();
      const sent = request(lost.app)
        .post('/tasks')
        .send({ type: 'echo', payload: { lost: 'on the way' } })
        .then((res) => res);
      await new Promise((resolve) => setTimeout(resolve, 500));
      proxy.reset();
      const res = await sent;
      expect(res.status).toBe(503);
      const { rows } = await database.pool.query('SELECT 1 FROM tasks WHERE payload = \'{"lost": "on the way"}\'');
      expect(rows).toEqual([]);
    } finally {
      await lost.close();
      await pool.end().catch(() => undefined);
      await proxy.close();
    }
  }, 30_000);
});
