import fc from 'fast-check';
import request from 'supertest';
import { loadConfig } from '@taskbox/shared';
import { startTestApi, type TestApi } from '../helpers/api';

const VALID_TYPES = ['echo', 'sleep', 'flaky'];

// Valid JSON that Postgres refuses: NUL anywhere, and (in bodies) unpaired UTF-16 surrogates. A query
// string cannot carry a lone surrogate (the client cannot percent-encode one), so queries get NUL only.
const anyChar = fc.string({ minLength: 1, maxLength: 1 });
const bodyUnit = fc.oneof(fc.constantFrom('\u0000', '\ud800', '\udfff'), anyChar);
const queryUnit = fc.oneof(fc.constant('\u0000'), anyChar);
const nastyJson = fc.jsonValue({ stringUnit: bodyUnit, maxDepth: 4 });

/** Bodies that are sometimes near-valid (a known type, odd payloads) and often nonsense. */
const body = fc.oneof(
  fc.jsonValue(),
  fc.record(
    {
      type: fc.oneof(fc.constantFrom(...VALID_TYPES, '', 'nope', 'ECHO'), fc.string(), fc.jsonValue(), nastyJson),
      payload: fc.oneof(
        fc.jsonValue(),
        nastyJson,
        fc.record({ ms: fc.jsonValue() }),
        fc.record({ failTimes: fc.integer() }),
      ),
      maxAttempts: fc.oneof(fc.integer(), fc.double(), fc.string()),
      extra: fc.jsonValue(),
    },
    { requiredKeys: [] },
  ),
);
const headerValue = fc.oneof(fc.string({ maxLength: 300 }), fc.constantFrom('', ' ', 'Bearer ', 'Bearer tok-a'));
const contentType = fc.constantFrom(
  'application/json',
  'application/json; charset=utf-8',
  'application/json; charset=latin-9',
  'application/merge-patch+json',
  'text/plain',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  'application/json; charset=utf-16',
);
const pathId = fc.oneof(
  fc.uuid(),
  fc.string({ maxLength: 60 }).map(encodeURIComponent),
  fc.constantFrom('11111111-1111-1111-1111-111111111111', '%', '..', '%00', 'null'),
);
/** Arrays or objects nested up to the 16 kB body limit and past it: schemas and JSON code recurse per level. */
const deepBody = fc
  .tuple(
    fc.oneof(fc.integer({ min: 1, max: 100 }), fc.integer({ min: 1000, max: 9000 })),
    fc.constantFrom(['[', ']'], ['{"a":', '}']),
  )
  .map(
    ([depth, [open, close]]) =>
      `{"type":"echo","payload":${open.repeat(depth)}${close === ']' ? '' : '1'}${close.repeat(depth)}}`,
  );
const rawBody = fc.oneof(
  body.map((b) => JSON.stringify(b)),
  fc.string({ maxLength: 200 }),
  deepBody,
);
/** Cursors that decode, with timestamps JS may parse and Postgres may not. */
const cursor = fc
  .tuple(
    fc.oneof(
      fc.constantFrom('1', '2024-02-31 10:00:00+00', '2024-01-01 10:00:00.123456+00'),
      fc.string({ unit: queryUnit }),
    ),
    fc.oneof(fc.uuid(), fc.string()),
  )
  .map((c) => Buffer.from(JSON.stringify(c)).toString('base64url'));
const queryValue = fc.oneof(fc.string({ maxLength: 30 }), fc.string({ unit: queryUnit, maxLength: 30 }), cursor);
/** Mostly valid, so the odd value often reaches the database; `wait` and unknown keys only in the second form. */
const validMostly = (valid: fc.Arbitrary<string>) =>
  fc.oneof({ arbitrary: valid, weight: 3 }, { arbitrary: queryValue, weight: 1 });
const query: fc.Arbitrary<Record<string, string>> = fc.oneof(
  fc.record(
    {
      status: validMostly(fc.constantFrom('pending', 'failed')),
      limit: validMostly(fc.constantFrom('1', '20')),
      cursor,
      type: validMostly(fc.constantFrom(...VALID_TYPES)),
    },
    { requiredKeys: [] },
  ),
  fc.dictionary(fc.constantFrom('wait', 'status', 'limit', 'cursor', 'type', 'x'), queryValue),
);

describe('api fuzz: random requests never cause a 5xx, and invalid ones create nothing', () => {
  let api: TestApi;

  beforeAll(async () => {
    api = await startTestApi({ auth: loadConfig({ AUTH_TOKENS: 'tok-a:alice' }) });
  });
  afterAll(async () => {
    await api.close();
  });

  async function counts(): Promise<string> {
    const db = api.database.db;
    const [t, o] = await Promise.all([
      db.selectFrom('tasks').select(db.fn.countAll<string>().as('n')).executeTakeFirstOrThrow(),
      db.selectFrom('outbox').select(db.fn.countAll<string>().as('n')).executeTakeFirstOrThrow(),
    ]);
    return `${t.n}/${o.n}`;
  }

  it('POST /tasks with random bodies and headers', async () => {
    await fc.assert(
      fc.asyncProperty(
        rawBody,
        contentType,
        fc.record({
          key: fc.option(headerValue),
          requestId: fc.option(headerValue),
          auth: fc.oneof({ arbitrary: fc.constant('Bearer tok-a'), weight: 2 }, headerValue),
        }),
        async (raw, type, headers) => {
          const before = await counts();
          let req = request(api.app).post('/tasks').set('content-type', type).set('authorization', headers.auth);
          // Header values with control characters cannot be sent at all; the client refuses them.
          const safe = (v: string) => !/[^\t\x20-\x7e]/.test(v);
          if (headers.key !== null && safe(headers.key)) req = req.set('idempotency-key', headers.key);
          if (headers.requestId !== null && safe(headers.requestId)) req = req.set('x-request-id', headers.requestId);
          const res = await req.send(raw);
          expect(res.status).toBeLessThan(500);
          expect(res.text).not.toMatch(/\bat .+\.(ts|js):\d+/);
          if (res.status >= 400) {
            expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
            expect(await counts()).toBe(before);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('GET and cancel with random ids and query strings', async () => {
    await fc.assert(
      fc.asyncProperty(pathId, query, fc.constantFrom('get', 'cancel', 'list'), async (id, query, op) => {
        const before = await counts();
        const auth = 'Bearer tok-a';
        // wait is capped so a valid long poll ends quickly; the property is about status codes.
        if (query.wait !== undefined && Number(query.wait) > 0.05) query.wait = '0.05';
        const res =
          op === 'get'
            ? await request(api.app).get(`/tasks/${id}`).query(query).set('authorization', auth)
            : op === 'cancel'
              ? await request(api.app).post(`/tasks/${id}/cancel`).set('authorization', auth)
              : await request(api.app).get('/tasks').query(query).set('authorization', auth);
        expect(res.status).toBeLessThan(500);
        expect(await counts()).toBe(before);
      }),
      { numRuns: 200 },
    );
  });
});
