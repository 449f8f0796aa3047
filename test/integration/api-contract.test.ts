import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { z } from 'zod';
import { loadConfig } from '@taskbox/shared';
import { startTestApi, type TestApi } from '../helpers/api';

type Doc = {
  components: { schemas: Record<string, unknown> };
  paths: Record<
    string,
    Record<string, { responses: Record<string, { content?: Record<string, { schema: unknown }> }> }>
  >;
};

/**
 * A validator for one documented response, built from the served document alone. zod's fromJSONSchema
 * resolves only "#/$defs/..." refs, so the components become $defs; no other JSON Schema validator is
 * a declared dependency (ajv here is eslint's draft-07 copy, which cannot read 2020-12).
 */
function fromDocument(doc: Doc, schema: unknown): z.ZodType {
  const rebase = (value: unknown) => JSON.parse(JSON.stringify(value).replaceAll('#/components/schemas/', '#/$defs/'));
  return z.fromJSONSchema({ ...rebase(schema), $defs: rebase(doc.components.schemas) });
}

function validator(doc: Doc, path: string, method: string, status: string): z.ZodType {
  const content = doc.paths[path]?.[method]?.responses[status]?.content;
  const schema = content && Object.values(content)[0]?.schema;
  if (!schema) throw new Error(`${method} ${path} ${status} is not documented`);
  return fromDocument(doc, schema);
}

describe('api contract: GET /openapi.json describes the real responses', () => {
  let api: TestApi;
  let doc: Doc;

  beforeAll(async () => {
    api = await startTestApi();
    doc = (await request(api.app).get('/openapi.json')).body as Doc;
  });
  afterAll(async () => {
    await api.close();
  });

  it('documents each endpoint and each task type’s payload schema', () => {
    expect(Object.keys(doc.paths).sort()).toEqual(
      [
        '/admin/dead-letters/redrive',
        '/admin/status',
        '/admin/tasks/cancel',
        '/admin/tasks/retry',
        '/healthz',
        '/me',
        '/metrics',
        '/openapi.json',
        '/readyz',
        '/tasks',
        '/tasks/counts',
        '/tasks/{id}',
        '/tasks/{id}/cancel',
        '/tasks/{id}/retry',
        '/tasks/{id}/events',
        '/tasks/{id}/stream-token',
        '/tasks/events',
        '/tasks/stream-token',
      ].sort(),
    );
    expect(doc.components.schemas.CreateTask_sleep).toMatchObject({
      properties: { payload: { required: ['ms'], properties: { ms: { type: 'integer' } } } },
    });
    expect(doc.components.schemas.CreateTask).toMatchObject({ discriminator: { propertyName: 'type' } });
  });

  it('documents runAt and delayMs on every type’s request, and runAt on the task view', () => {
    for (const type of ['echo', 'sleep', 'flaky']) {
      expect(doc.components.schemas[`CreateTask_${type}`]).toMatchObject({
        properties: {
          runAt: { type: 'string', format: 'date-time' },
          delayMs: { type: 'integer', minimum: 0 },
        },
      });
    }
    expect(doc.components.schemas.TaskView).toMatchObject({
      properties: { runAt: { anyOf: [{ type: 'string', format: 'date-time' }, { type: 'null' }] } },
    });
    const body = fromDocument(doc, { $ref: '#/components/schemas/CreateTask' });
    expect(body.safeParse({ type: 'echo', runAt: '2030-01-01T09:00:00+01:00' }).success).toBe(true);
    expect(body.safeParse({ type: 'echo', delayMs: 5000 }).success).toBe(true);
    expect(body.safeParse({ type: 'echo', runAt: 'tomorrow' }).success).toBe(false);
    expect(body.safeParse({ type: 'echo', delayMs: -1 }).success).toBe(false);
  });

  it('matches 202 create, 200 get, list, 404, 422 and 400 responses', async () => {
    const created = await request(api.app)
      .post('/tasks')
      .send({ type: 'sleep', payload: { ms: 1 } });
    const soon = new Date(Date.now() + 60_000).toISOString();
    const scheduled = await request(api.app).post('/tasks').send({ type: 'echo', runAt: soon });
    const cases: [request.Response, string, string, string][] = [
      [created, '/tasks', 'post', '202'],
      [scheduled, '/tasks', 'post', '202'],
      [await request(api.app).get(`/tasks/${scheduled.body.id}`), '/tasks/{id}', 'get', '200'],
      [await request(api.app).post('/tasks').send({ type: 'echo', delayMs: 1, runAt: soon }), '/tasks', 'post', '422'],
      [await request(api.app).get(`/tasks/${created.body.id}`), '/tasks/{id}', 'get', '200'],
      [await request(api.app).get('/tasks?limit=1'), '/tasks', 'get', '200'],
      [await request(api.app).get(`/tasks/${randomUUID()}`), '/tasks/{id}', 'get', '404'],
      [await request(api.app).post('/tasks').send({ type: 'nope' }), '/tasks', 'post', '422'],
      [await request(api.app).post('/tasks').send({ type: 'sleep', payload: {} }), '/tasks', 'post', '422'],
      [await request(api.app).get('/tasks/x'), '/tasks/{id}', 'get', '400'],
      [await request(api.app).post('/tasks').set('content-type', 'application/json'), '/tasks', 'post', '400'],
      [await request(api.app).post('/tasks/x/stream-token'), '/tasks/{id}/stream-token', 'post', '400'],
      [
        await request(api.app).post(`/tasks/${created.body.id}/stream-token`),
        '/tasks/{id}/stream-token',
        'post',
        '200',
      ],
      [await request(api.app).post('/tasks/stream-token'), '/tasks/stream-token', 'post', '200'],
      [await request(api.app).get(`/tasks/${randomUUID()}/events`), '/tasks/{id}/events', 'get', '404'],
      [await request(api.app).post(`/tasks/${created.body.id}/retry`), '/tasks/{id}/retry', 'post', '409'],
      [await request(api.app).post(`/tasks/${created.body.id}/cancel`), '/tasks/{id}/cancel', 'post', '200'],
      [await request(api.app).post(`/tasks/${created.body.id}/retry`), '/tasks/{id}/retry', 'post', '202'],
      [await request(api.app).get('/me'), '/me', 'get', '200'],
      [await request(api.app).get('/tasks/counts'), '/tasks/counts', 'get', '200'],
      [await request(api.app).post('/admin/tasks/retry').send({}), '/admin/tasks/retry', 'post', '403'],
      [await request(api.app).get('/healthz'), '/healthz', 'get', '200'],
      [await request(api.app).get('/readyz'), '/readyz', 'get', '200'],
    ];
    for (const [res, path, method, status] of cases) {
      expect(`${method} ${path} ${res.status}`).toBe(`${method} ${path} ${status}`);
      const parsed = validator(doc, path, method, status).safeParse(res.body);
      expect(parsed.error?.issues ?? []).toEqual([]);
    }
  });

  it('would catch a response that drifts from the document', () => {
    const taskView = validator(doc, '/tasks/{id}', 'get', '200');
    expect(taskView.safeParse({ id: randomUUID(), status: 'pending' }).success).toBe(false);
  });

  it('documents request bodies that accept what the api accepts', () => {
    const body = fromDocument(doc, { $ref: '#/components/schemas/CreateTask' });
    expect(body.safeParse({ type: 'flaky', payload: { failTimes: 1 } }).success).toBe(true);
    expect(body.safeParse({ type: 'sleep', payload: { ms: 'x' } }).success).toBe(false);
  });
});

describe('api: CORS_ORIGINS and security headers', () => {
  let api: TestApi;
  const allowed = 'https://app.example.com';

  beforeAll(async () => {
    api = await startTestApi({
      corsOrigins: loadConfig({ CORS_ORIGINS: `${allowed}, http://localhost:5173` }).CORS_ORIGINS,
    });
  });
  afterAll(async () => {
    await api.close();
  });

  it('lets an allowed origin read the response and the headers a frontend needs', async () => {
    const res = await request(api.app).post('/tasks').set('origin', allowed).send({ type: 'echo' });
    expect(res.status).toBe(202);
    expect(res.headers['access-control-allow-origin']).toBe(allowed);
    expect(res.headers['access-control-expose-headers']).toBe('Location,X-Request-Id,Idempotent-Replayed,Retry-After');
  });

  it('answers a preflight from an allowed origin', async () => {
    const res = await request(api.app)
      .options('/tasks')
      .set('origin', allowed)
      .set('access-control-request-method', 'POST')
      .set('access-control-request-headers', 'content-type,idempotency-key,authorization');
    expect(res.status).toBe(204);
    expect(res.headers['access-control-allow-origin']).toBe(allowed);
    expect(res.headers['access-control-allow-methods']).toMatch(/POST/);
  });

  it('gives a disallowed origin no CORS headers, so the browser blocks it', async () => {
    const res = await request(api.app).get('/tasks').set('origin', 'https://evil.example');
    const preflight = await request(api.app)
      .options('/tasks')
      .set('origin', 'https://evil.example')
      .set('access-control-request-method', 'POST');
    expect(res.headers['access-control-allow-origin']).toBeUndefined();
    expect(preflight.headers['access-control-allow-origin']).toBeUndefined();
  });

  it('sends security headers and no x-powered-by', async () => {
    const res = await request(api.app).get('/healthz');
    expect(res.headers).toMatchObject({ 'x-content-type-options': 'nosniff', 'x-frame-options': 'DENY' });
    expect(res.headers['content-security-policy']).toMatch(/default-src 'none'/);
    expect(res.headers['x-powered-by']).toBeUndefined();
  });

  it('sends no CORS headers at all when CORS_ORIGINS is empty', async () => {
    const plain = await startTestApi();
    try {
      const res = await request(plain.app).get('/healthz').set('origin', allowed);
      expect(res.headers['access-control-allow-origin']).toBeUndefined();
    } finally {
      await plain.close();
    }
  });

  it('refuses a CORS_ORIGINS entry that is not an origin', () => {
    expect(() => loadConfig({ CORS_ORIGINS: 'https://app.example.com/path' })).toThrow(/CORS_ORIGINS/);
  });
});

describe('api contract: a method that a documented path does not take', () => {
  it('is 405 with the documented methods in Allow, OPTIONS 204 with the same, an unknown path 404', async () => {
    const api = await startTestApi({ auth: loadConfig({ AUTH_TOKENS: 'tok-root:root:admin' }) });
    const root = { authorization: 'Bearer tok-root' };
    const methods = ['get', 'post', 'put', 'patch', 'delete'];
    const allowed = (res: request.Response) => new Set(String(res.headers.allow).split(', '));
    try {
      const doc = (await request(api.app).get('/openapi.json')).body as Doc;
      for (const [path, operations] of Object.entries(doc.paths)) {
        const url = path.replace('{id}', randomUUID());
        const documented = Object.keys(operations).filter((m) => methods.includes(m));
        const allow = new Set([...documented.map((m) => m.toUpperCase()), 'OPTIONS']);
        if (documented.includes('get')) allow.add('HEAD');
        // No path takes DELETE.
        const refused = await request(api.app).delete(url).set(root);
        expect([path, refused.status, allowed(refused)]).toEqual([path, 405, allow]);
        expect(refused.headers['content-type']).toMatch(/^application\/problem\+json/);
        const options = await request(api.app).options(url).set(root);
        expect([path, options.status, allowed(options)]).toEqual([path, 204, allow]);
      }
      expect((await request(api.app).delete('/tasks/x/nothing').set(root)).status).toBe(404);
    } finally {
      await api.close();
    }
  });
});
