import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import request from 'supertest';
import { OUTBOX_CHANNEL, createDb, createPgListener, createPool } from '@taskbox/shared';
import { startTestApi, type TestApi } from '../helpers/api';
import { createTestDatabase, quietLogger } from '../helpers/db';
import { capturingLogger } from '../helpers/log';
import { insertTaskFixture } from '../helpers/factories';
import { waitFor } from '../helpers/wait';
import { createTaskInserter } from '../../services/api/src/task-sql';

const PROBLEM = /^application\/problem\+json/;

describe('api: creating, reading and cancelling tasks', () => {
  let api: TestApi;

  beforeAll(async () => {
    api = await startTestApi();
  });
  afterAll(async () => {
    await api.close();
  });

  async function counts(): Promise<{ tasks: number; outbox: number }> {
    const db = api.database.db;
    const [t, o] = await Promise.all([
      db.selectFrom('tasks').select(db.fn.countAll<string>().as('n')).executeTakeFirstOrThrow(),
      db.selectFrom('outbox').select(db.fn.countAll<string>().as('n')).executeTakeFirstOrThrow(),
    ]);
    return { tasks: Number(t.n), outbox: Number(o.n) };
  }

  it('accepts a task with 202, a Location and its view, and writes one outbox row for it', async () => {
    const res = await request(api.app)
      .post('/tasks')
      .send({ type: 'sleep', payload: { ms: 5 } });
    expect(res.status).toBe(202);
    expect(res.headers.location).toBe(`/tasks/${res.body.id}`);
    expect(res.body).toMatchObject({
      type: 'sleep',
      status: 'pending',
      payload: { ms: 5 },
      attempts: 0,
      maxAttempts: 3,
    });
    const outbox = await api.database.db.selectFrom('outbox').selectAll().where('task_id', '=', res.body.id).execute();
    expect(outbox).toHaveLength(1);
    const got = await request(api.app).get(`/tasks/${res.body.id}`);
    expect(got.status).toBe(200);
    expect(got.body).toMatchObject({ id: res.body.id, status: 'pending' });
  });

  it("stores a task's timeoutMs (its type's default when absent), shows it, documents it, and answers 422 beyond its bounds", async () => {
    const given = await request(api.app)
      .post('/tasks')
      .send({ type: 'sleep', payload: { ms: 5 }, timeoutMs: 1500 });
    const fallback = await request(api.app).post('/tasks').send({ type: 'echo' });
    expect(given.status).toBe(202);
    expect(given.body.timeoutMs).toBe(1500);
    expect(fallback.body.timeoutMs).toBe(3_600_000);
    const stored = await api.database.db
      .selectFrom('tasks')
      .select('timeout_ms')
      .where('id', '=', given.body.id)
      .executeTakeFirstOrThrow();
    expect(stored.timeout_ms).toBe(1500);
    expect((await request(api.app).get(`/tasks/${given.body.id}`)).body.timeoutMs).toBe(1500);

    for (const timeoutMs of [99, 86_400_001, 1.5, '1000']) {
      const res = await request(api.app).post('/tasks').send({ type: 'echo', timeoutMs });
      expect(res.status).toBe(422);
      expect(res.headers['content-type']).toMatch(PROBLEM);
      expect(res.body.issues).toEqual([expect.objectContaining({ path: 'timeoutMs' })]);
    }
    const doc = (await request(api.app).get('/openapi.json')).body;
    const sleepBody = doc.components.schemas.CreateTask_sleep;
    expect(sleepBody.properties.timeoutMs).toMatchObject({ type: 'integer', minimum: 100, maximum: 86_400_000 });
    expect(doc.components.schemas.TaskView.properties.timeoutMs).toBeDefined();
  });

  it('wakes the relay with a NOTIFY when a task is accepted', async () => {
    const wakes: string[] = [];
    const listener = createPgListener({
      url: api.database.url,
      channel: OUTBOX_CHANNEL,
      logger: quietLogger,
      onNotify: (payload) => wakes.push(payload),
      onConnect: () => undefined,
    });
    listener.start();
    try {
      await waitFor('listener connected', () => listener.listening());
      expect((await request(api.app).post('/tasks').send({ type: 'echo', payload: 1 })).status).toBe(202);
      await waitFor('the wake-up', () => wakes.length > 0, 5000);
      expect(wakes).toEqual(['']);
    } finally {
      await listener.stop();
    }
  });

  it.each([
    ['an unknown type', { type: 'nope' }, 422, 'Unknown Task Type'],
    ['an invalid payload', { type: 'sleep', payload: { ms: -1 } }, 422, 'Invalid Payload'],
    ['a missing required payload', { type: 'sleep' }, 422, 'Invalid Payload'],
    ['an unknown field', { type: 'echo', extra: 1 }, 422, 'Invalid Task'],
  ])('refuses %s with a problem and creates nothing', async (_what, body, status, title) => {
    const before = await counts();
    const res = await request(api.app).post('/tasks').send(body);
    expect(res.status).toBe(status);
    expect(res.headers['content-type']).toMatch(PROBLEM);
    expect(res.body).toMatchObject({ title, status });
    expect(await counts()).toEqual(before);
  });

  it('answers malformed JSON 400, an oversized body 413 and a non-JSON body 415, as problems without a stack', async () => {
    const malformed = await request(api.app).post('/tasks').set('content-type', 'application/json').send('{"type":');
    const big = await request(api.app)
      .post('/tasks')
      .send({ type: 'echo', payload: { text: 'x'.repeat(20_000) } });
    const text = await request(api.app).post('/tasks').set('content-type', 'text/plain').send('type=echo');
    // A JSON content type and no body at all: a missing body, not a wrong media type.
    const none = await request(api.app).post('/tasks').set('content-type', 'application/json');
    expect([malformed.status, big.status, text.status, none.status]).toEqual([400, 413, 415, 400]);
    expect(none.body).toMatchObject({ title: 'Missing Body', detail: 'send the task as an application/json body' });
    for (const res of [malformed, big, text, none]) {
      expect(res.headers['content-type']).toMatch(PROBLEM);
      expect(res.text).not.toMatch(/\bat .+\.(ts|js):\d+/);
      expect(res.body).not.toHaveProperty('stack');
    }
  });

  it('answers JSON that is not an object as a 422 naming what the body must be, as an array, and writes nothing', async () => {
    const before = await counts();
    for (const body of ['null', '123', '"echo"', '[1]', 'true']) {
      const res = await request(api.app).post('/tasks').set('content-type', 'application/json').send(body);
      expect(res.status).toBe(422);
      expect(res.body).toMatchObject({ title: 'Invalid Task' });
      expect(res.body.detail).toMatch(/^\(body\): .*expected object/);
    }
    expect(await counts()).toEqual(before);
  });

  it('answers 400 for an id that is not a UUID and 404 for a UUID-shaped id that does not exist', async () => {
    const bad = await request(api.app).get('/tasks/not-a-uuid');
    const unknown = await request(api.app).get(`/tasks/${randomUUID()}`);
    // Not an RFC 9562 UUID (version nibble 1, variant 1), but it is id-shaped: "no such task", not "bad id".
    const ones = await request(api.app).get('/tasks/11111111-1111-1111-1111-111111111111');
    expect([bad.status, unknown.status, ones.status]).toEqual([400, 404, 404]);
    expect(ones.headers['content-type']).toMatch(PROBLEM);
  });

  it('cancels a pending task at once (200) and refuses to cancel a finished one (409)', async () => {
    const pending = await insertTaskFixture(api.database.db);
    const done = await insertTaskFixture(api.database.db, { status: 'succeeded' });
    const cancelled = await request(api.app).post(`/tasks/${pending}/cancel`);
    expect(cancelled.status).toBe(200);
    expect(cancelled.body).toMatchObject({ status: 'cancelled', cancelRequested: true });
    const refused = await request(api.app).post(`/tasks/${done}/cancel`);
    expect(refused.status).toBe(409);
    expect(refused.headers['content-type']).toMatch(PROBLEM);
    expect((await request(api.app).post(`/tasks/${randomUUID()}/cancel`)).status).toBe(404);
  });

  it('replays a retried request with the same Idempotency-Key and refuses the key with another body', async () => {
    const key = `key-${randomUUID()}`;
    const first = await request(api.app)
      .post('/tasks')
      .set('idempotency-key', key)
      .send({ type: 'echo', payload: { a: 1 } });
    const again = await request(api.app)
      .post('/tasks')
      .set('idempotency-key', key)
      .send({ type: 'echo', payload: { a: 1 } });
    const other = await request(api.app)
      .post('/tasks')
      .set('idempotency-key', key)
      .send({ type: 'echo', payload: { a: 2 } });
    expect(first.status).toBe(202);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    expect(again.status).toBe(202);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.headers.location).toBe(first.headers.location);
    expect(again.body.id).toBe(first.body.id);
    expect(other.status).toBe(409);
    expect(other.headers['content-type']).toMatch(PROBLEM);
  });

  it('creates exactly one task and one outbox row for 20 concurrent requests with the same key', async () => {
    const before = await counts();
    const key = `key-${randomUUID()}`;
    const responses = await Promise.all(
      Array.from({ length: 20 }, () =>
        request(api.app)
          .post('/tasks')
          .set('idempotency-key', key)
          .send({ type: 'echo', payload: { same: true } }),
      ),
    );
    expect(responses.map((r) => r.status)).toEqual(responses.map(() => 202));
    expect(responses.filter((r) => r.headers['idempotent-replayed'] === 'true')).toHaveLength(19);
    expect(new Set(responses.map((r) => r.body.id)).size).toBe(1);
    expect(await counts()).toEqual({ tasks: before.tasks + 1, outbox: before.outbox + 1 });
  });

  it('stores a JSON null payload as given (echo takes any JSON)', async () => {
    const res = await request(api.app).post('/tasks').send({ type: 'echo', payload: null });
    expect(res.status).toBe(202);
    expect(res.body.payload).toBeNull();
    const { rows } = await sql<{
      kind: string;
    }>`SELECT jsonb_typeof(payload) AS kind FROM tasks WHERE id = ${res.body.id}`.execute(api.database.db);
    expect(rows).toEqual([{ kind: 'null' }]);
  });

  it('gives each of 60 concurrent requests its own task and outbox row, though they share inserts', async () => {
    const responses = await Promise.all(
      Array.from({ length: 60 }, (_, n) => request(api.app).post('/tasks').send({ type: 'echo', payload: { n } })),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(60).fill(202));
    expect(responses.map((r) => r.body.payload.n)).toEqual(Array.from({ length: 60 }, (_, n) => n));
    const rows = await api.database.db
      .selectFrom('tasks')
      .innerJoin('outbox', 'outbox.task_id', 'tasks.id')
      .select(['tasks.id', 'tasks.payload', 'tasks.created_at', 'outbox.payload as message'])
      .where(
        'tasks.id',
        'in',
        responses.map((r) => r.body.id as string),
      )
      .execute();
    expect(rows).toHaveLength(60);
    for (const res of responses) {
      const row = rows.find((r) => r.id === res.body.id);
      expect(row?.payload).toEqual(res.body.payload);
      expect(row?.message).toEqual({ taskId: res.body.id, type: 'echo', attempt: 1 });
    }
    // One statement is one transaction, so tasks inserted together share created_at (now()).
    expect(new Set(rows.map((r) => r.created_at.toISOString())).size).toBeLessThan(60);
  });

  it('fails only the request whose values Postgres refuses when it shares an insert with others', async () => {
    const insert = createTaskInserter(api.database.db);
    const newTask = (payload: unknown) => ({
      task: {
        id: randomUUID(),
        type: 'echo',
        payload,
        maxAttempts: 3,
        schedule: null,
        timeoutMs: 60_000,
        owner: 'anonymous',
        idempotencyKey: null,
        requestHash: null,
      },
      context: { correlationId: randomUUID() },
    });
    // jsonb refuses \u0000 (SQLSTATE 22P05); the api's own guard stops it earlier, this calls the inserter
    // directly. The first two fill the inserter's two slots, so the other eight go in one statement.
    const inserts = Array.from({ length: 10 }, (_, n) => newTask(n === 7 ? { bad: '\u0000' } : { n }));
    const results = await Promise.allSettled(inserts.map((i) => insert(i)));
    expect(results.map((r) => r.status)).toEqual(
      Array.from({ length: 10 }, (_, n) => (n === 7 ? 'rejected' : 'fulfilled')),
    );
    expect((results[7] as PromiseRejectedResult).reason).toMatchObject({ code: '22P05' });
    const ids = inserts.map((i) => i.task.id);
    const stored = await api.database.db.selectFrom('tasks').select('id').where('id', 'in', ids).execute();
    const queued = await api.database.db.selectFrom('outbox').select('task_id').where('task_id', 'in', ids).execute();
    const expected = ids.filter((_, n) => n !== 7).sort();
    expect(stored.map((r) => r.id).sort()).toEqual(expected);
    expect(queued.map((r) => r.task_id).sort()).toEqual(expected);
  });
});

describe('api: readiness', () => {
  it('answers /readyz 503 when Postgres cannot be reached, and /healthz 200', async () => {
    // Port 1 on loopback: nothing listens there, so connecting is refused at once.
    const pool = createPool('postgres://postgres@127.0.0.1:1/none', quietLogger, {
      max: 2,
      statementTimeoutMs: 10_000,
      connectionTimeoutMillis: 1000,
    });
    const api = await startTestApi({ pool, db: createDb(pool) });
    try {
      const ready = await request(api.app).get('/readyz');
      expect(ready.status).toBe(503);
      expect(ready.body).toMatchObject({ status: 'not ready', checks: { postgres: false } });
      expect((await request(api.app).get('/healthz')).status).toBe(200);
      const create = await request(api.app).post('/tasks').send({ type: 'echo' });
      expect(create.status).toBe(503);
      expect(create.headers['content-type']).toMatch(PROBLEM);
      // A create the database went silent on may commit later: the answer says how to be sure of one task.
      expect((create.body as { detail: string }).detail).toMatch(/retry with the same Idempotency-Key/);
    } finally {
      await api.close();
      await pool.end();
    }
  });

  it('logs an outage once, not once per refused request', async () => {
    const pool = createPool('postgres://postgres@127.0.0.1:1/none', quietLogger, {
      max: 2,
      statementTimeoutMs: 10_000,
      connectionTimeoutMillis: 1000,
    });
    const { logger, lines } = capturingLogger();
    const api = await startTestApi({ pool, db: createDb(pool), logger });
    try {
      for (let i = 0; i < 20; i++) {
        expect((await request(api.app).post('/tasks').send({ type: 'echo' })).status).toBe(503);
      }
      expect(lines.filter((l) => String(l.message).startsWith('database unavailable'))).toEqual([
        expect.objectContaining({ level: 'warn', refusedSinceLastLine: 1 }),
      ]);
    } finally {
      await api.close();
      await pool.end();
    }
  });

  it('answers 503 on a database not migrated for it, logging once to run npm run migrate, not a 500 per request', async () => {
    const bare = await createTestDatabase({ migrated: false });
    const { logger, lines } = capturingLogger();
    const api = await startTestApi({ pool: bare.pool, db: bare.db, logger });
    try {
      for (const res of [
        await request(api.app).post('/tasks').send({ type: 'echo' }),
        await request(api.app).get('/tasks'),
        await request(api.app).get(`/tasks/${randomUUID()}`),
      ]) {
        expect([res.status, res.headers['content-type'], res.headers['retry-after']]).toEqual([
          503,
          expect.stringMatching(PROBLEM),
          '2',
        ]);
      }
      expect(lines.filter((l) => l.level === 'warn' || l.level === 'error')).toEqual([
        expect.objectContaining({ message: 'database not migrated for this build: run npm run migrate' }),
      ]);
    } finally {
      await api.close();
      await bare.drop();
    }
  });
});
