import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { createDb, createPool } from '@taskbox/shared';
import { startTestApi, type TestApi } from '../helpers/api';
import { quietLogger } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';

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
    expect([malformed.status, big.status, text.status]).toEqual([400, 413, 415]);
    for (const res of [malformed, big, text]) {
      expect(res.headers['content-type']).toMatch(PROBLEM);
      expect(res.text).not.toMatch(/\bat .+\.(ts|js):\d+/);
      expect(res.body).not.toHaveProperty('stack');
    }
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
    expect(again.status).toBe(200);
    expect(again.headers['idempotent-replayed']).toBe('true');
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
    expect(responses.filter((r) => r.status === 202)).toHaveLength(1);
    expect(responses.filter((r) => r.status === 200)).toHaveLength(19);
    expect(new Set(responses.map((r) => r.body.id)).size).toBe(1);
    expect(await counts()).toEqual({ tasks: before.tasks + 1, outbox: before.outbox + 1 });
  });
});

describe('api: readiness', () => {
  it('answers /readyz 503 when Postgres cannot be reached, and /healthz 200', async () => {
    // Port 1 on loopback: nothing listens there, so connecting is refused at once.
    const pool = createPool('postgres://postgres@127.0.0.1:1/none', quietLogger, {
      max: 2,
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
    } finally {
      await api.close();
      await pool.end();
    }
  });
});
