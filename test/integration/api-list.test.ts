import request from 'supertest';
import { startTestApi, type TestApi } from '../helpers/api';
import { insertTaskFixture } from '../helpers/factories';

interface Page {
  items: { id: string; status: string; type: string }[];
  next: string | null;
}

describe('api: GET /tasks lists with filters and a keyset cursor', () => {
  let api: TestApi;

  beforeAll(async () => {
    api = await startTestApi();
  });
  afterAll(async () => {
    await api.close();
  });

  it('pages through every task once, newest first, while new tasks arrive between pages', async () => {
    const original: string[] = [];
    for (let i = 0; i < 25; i++) {
      const res = await request(api.app).post('/tasks').send({ type: 'echo', payload: { i } });
      original.push(res.body.id as string);
    }
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const res = await request(api.app)
        .get('/tasks')
        .query({ limit: 10, ...(cursor ? { cursor } : {}) });
      expect(res.status).toBe(200);
      const page = res.body as Page;
      seen.push(...page.items.map((t) => t.id));
      cursor = page.next;
      pages++;
      // Inserted between pages: newer than every cursor, so they must neither shift nor repeat rows.
      await request(api.app)
        .post('/tasks')
        .send({ type: 'echo', payload: { late: pages } });
    } while (cursor);
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual([...original].reverse());
    expect(pages).toBe(3);
  });

  it('filters by status and type', async () => {
    const failed = await insertTaskFixture(api.database.db, { type: 'sleep', status: 'failed' });
    const res = await request(api.app).get('/tasks').query({ status: 'failed', type: 'sleep' });
    expect(res.status).toBe(200);
    expect((res.body as Page).items.map((t) => t.id)).toEqual([failed]);
  });

  it.each([
    ['an unknown status', { status: 'done' }],
    ['a limit of 0', { limit: '0' }],
    ['a limit above 100', { limit: '101' }],
    ['a non-numeric limit', { limit: 'ten' }],
    ['a forged cursor', { cursor: 'bm90LWEtY3Vyc29y' }],
    ['an unknown parameter', { order: 'asc' }],
    ['a createdAfter whose offset Postgres refuses (past 15:59)', { createdAfter: '2030-01-01T09:00:00+16:00' }],
    ['a createdBefore with a fraction Postgres refuses', { createdBefore: `2030-01-01T09:00:00.${'1'.repeat(130)}Z` }],
  ])('answers 400 problem+json for %s, naming the parameter', async (_what, query) => {
    const res = await request(api.app).get('/tasks').query(query);
    expect(res.status).toBe(400);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect((res.body as { detail: string }).detail).toContain(Object.keys(query)[0]);
  });
});
