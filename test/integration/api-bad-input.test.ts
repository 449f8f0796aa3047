import { randomUUID } from 'node:crypto';
import express from 'express';
import { sql } from 'kysely';
import request from 'supertest';
import { loadConfig } from '@taskbox/shared';
import { demoFaultsOn } from '../../services/api/src/parts';
import { problemHandler } from '../../services/api/src/problem';
import { startTestApi, type TestApi } from '../helpers/api';
import { quietLogger } from '../helpers/db';

const PROBLEM = /^application\/problem\+json/;
const cursorOf = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
const nested = (depth: number) => '['.repeat(depth) + ']'.repeat(depth);

describe('api: input Postgres would reject is the client’s fault (4xx), never a 500', () => {
  let api: TestApi;

  beforeAll(async () => {
    api = await startTestApi();
  });
  afterAll(async () => {
    await api.close();
  });

  async function taskCount(): Promise<number> {
    const db = api.database.db;
    const row = await db.selectFrom('tasks').select(db.fn.countAll<string>().as('n')).executeTakeFirstOrThrow();
    return Number(row.n);
  }

  it.each([
    ['a NUL in a payload string', '{"type":"echo","payload":"a\\u0000b"}'],
    ['a NUL in a payload key', '{"type":"echo","payload":{"k\\u0000":1}}'],
    ['an unpaired surrogate in a payload string', '{"type":"echo","payload":["\\ud800"]}'],
    [
      'a payload key named __proto__, which validation would drop',
      '{"type":"echo","payload":{"a":{"__proto__":{"x":1}}}}',
    ],
    ['a payload nested 2,000 deep', `{"type":"echo","payload":${nested(2000)}}`],
    ['a payload nested 8,000 deep (just under the body limit)', `{"type":"echo","payload":${nested(8000)}}`],
  ])('refuses %s with 422 problem+json and creates nothing', async (_what, raw) => {
    const before = await taskCount();
    const res = await request(api.app).post('/tasks').set('content-type', 'application/json').send(raw);
    expect(res.status).toBe(422);
    expect(res.headers['content-type']).toMatch(PROBLEM);
    expect(res.body).toMatchObject({ title: 'Invalid Task', status: 422 });
    expect(await taskCount()).toBe(before);
  });

  it('accepts a payload nested 50 deep and a text that merely spells \\u0000', async () => {
    const deep = await request(api.app)
      .post('/tasks')
      .set('content-type', 'application/json')
      .send(`{"type":"echo","payload":${nested(50)}}`);
    const spelled = await request(api.app)
      .post('/tasks')
      .send({ type: 'echo', payload: { text: '\\u0000' } });
    expect([deep.status, spelled.status]).toEqual([202, 202]);
    expect(spelled.body.payload).toEqual({ text: '\\u0000' });
  });

  it.each([
    ['a NUL in the type filter', { type: '\u0000' }],
    ['a cursor whose timestamp JS parses but Postgres does not', { cursor: cursorOf(['1', randomUUID()]) }],
    ['a cursor with an impossible date', { cursor: cursorOf(['2024-02-31 10:00:00.123456+00', randomUUID()]) }],
    ['a cursor in ISO format, which the api never emits', { cursor: cursorOf(['2024-02-01T10:00:00Z', randomUUID()]) }],
  ])('answers 400 problem+json for %s', async (_what, query) => {
    const res = await request(api.app).get('/tasks').query(query);
    expect(res.status).toBe(400);
    expect(res.headers['content-type']).toMatch(PROBLEM);
  });

  it('accepts a cursor with a non-UTC offset, as Postgres prints one in another session TimeZone', async () => {
    const res = await request(api.app)
      .get('/tasks')
      .query({ cursor: cursorOf(['2999-01-01 00:00:00.5+05:30', randomUUID()]) });
    expect(res.status).toBe(200);
  });

  it('still accepts the cursor the api itself returned', async () => {
    for (let i = 0; i < 3; i++) await request(api.app).post('/tasks').send({ type: 'echo', payload: { i } });
    const first = await request(api.app).get('/tasks').query({ limit: 1 });
    const second = await request(api.app)
      .get('/tasks')
      .query({ limit: 1, cursor: first.body.next as string });
    expect(second.status).toBe(200);
    expect(second.body.items).toHaveLength(1);
    expect(second.body.items[0].id).not.toBe(first.body.items[0].id);
  });

  it('replays a request whose payload has the same keys in another order (same answer, same task)', async () => {
    const key = randomUUID();
    const first = await request(api.app)
      .post('/tasks')
      .set('idempotency-key', key)
      .send({ type: 'echo', payload: { a: 1, b: { x: [1, { p: 1, q: 2 }], y: 2 } } });
    const again = await request(api.app)
      .post('/tasks')
      .set('idempotency-key', key)
      .send({ payload: { b: { y: 2, x: [1, { q: 2, p: 1 }] }, a: 1 }, type: 'echo' });
    const other = await request(api.app)
      .post('/tasks')
      .set('idempotency-key', key)
      .send({ type: 'echo', payload: { a: 1, b: { x: [{ p: 1, q: 2 }, 1], y: 2 } } });
    expect([first.status, again.status, other.status]).toEqual([202, 202, 409]);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body.id).toBe(first.body.id);
  });

  it('renders a Postgres data exception (SQLSTATE class 22) as 400 without its internals', async () => {
    // The last line of defence for input that slips past validation: the database refuses the value.
    const app = express();
    app.get('/', async () => {
      await sql`SELECT ${'not a time'}::timestamptz`.execute(api.database.db);
    });
    app.use(problemHandler(quietLogger));
    const res = await request(app).get('/');
    expect(res.status).toBe(400);
    expect(res.headers['content-type']).toMatch(PROBLEM);
    expect(res.body).toMatchObject({ title: 'Bad Request', status: 400 });
    expect(res.text).not.toMatch(/timestamptz|timestamp with time zone|not a time|SQLSTATE|22007/i);
  });
});

describe('api: a demonstration fault (DEMO_FAULTS)', () => {
  let api: TestApi;

  beforeAll(async () => {
    api = await startTestApi({ demoFaults: false });
  });
  afterAll(async () => {
    await api.close();
  });

  it('refuses a sleep that ignores its signal with 422 and writes nothing, and takes an ordinary sleep', async () => {
    const refused = await request(api.app)
      .post('/tasks')
      .send({ type: 'sleep', payload: { ms: 3_600_000, ignoreSignal: true }, timeoutMs: 100 });
    expect(refused.status).toBe(422);
    expect(refused.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(refused.body.detail).toMatch(/DEMO_FAULTS/);
    expect(await api.database.db.selectFrom('tasks').select('id').execute()).toEqual([]);
    const taken = await request(api.app)
      .post('/tasks')
      .send({ type: 'sleep', payload: { ms: 10, ignoreSignal: false } });
    expect(taken.status).toBe(202);
  });

  it('is on unless NODE_ENV=production, where only DEMO_FAULTS=true turns it on', () => {
    expect(demoFaultsOn(loadConfig({}))).toBe(true);
    expect(demoFaultsOn(loadConfig({ NODE_ENV: 'production' }))).toBe(false);
    expect(demoFaultsOn(loadConfig({ NODE_ENV: 'production', DEMO_FAULTS: 'true' }))).toBe(true);
    expect(demoFaultsOn(loadConfig({ DEMO_FAULTS: 'false' }))).toBe(false);
  });
});
