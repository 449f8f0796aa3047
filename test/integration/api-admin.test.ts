import { SignJWT } from 'jose';
import request from 'supertest';
import { loadConfig } from '@taskbox/shared';
import { startTestApi, type TestApi } from '../helpers/api';
import { insertTaskFixture } from '../helpers/factories';
import { capturingLogger } from '../helpers/log';
import { openSse, type SseClient } from '../helpers/sse';

const ROOT = { authorization: 'Bearer tok-root' };
const ALICE = { authorization: 'Bearer tok-alice' };
const BOB = { authorization: 'Bearer tok-bob' };
const SECRET = 'a-test-secret-that-is-at-least-32-chars';

const ids = (body: { items: { id: string }[] }) => body.items.map((t) => t.id);

describe("api: an admin sees and acts on every owner's tasks, anyone else on their own only", () => {
  let api: TestApi;
  let base: string;
  const capture = capturingLogger();
  const open: SseClient[] = [];

  beforeAll(async () => {
    api = await startTestApi({
      auth: loadConfig({ AUTH_TOKENS: 'tok-root:root:admin,tok-alice:alice,tok-bob:bob' }),
      logger: capture.logger,
    });
    base = await api.listen();
  });
  afterEach(() => open.splice(0).forEach((s) => s.close()));
  afterAll(async () => {
    await api.close();
  });

  const alicesTask = () => insertTaskFixture(api.database.db, { owner: 'alice' });

  it('says who the caller is and whether an admin', async () => {
    expect((await request(api.app).get('/me').set(ROOT)).body).toEqual({ owner: 'root', admin: true });
    expect((await request(api.app).get('/me').set(ALICE)).body).toEqual({ owner: 'alice', admin: false });
    expect((await request(api.app).get('/me')).status).toBe(401);
  });

  it("lets an admin get, list and cancel another owner's task, and logs the cancel with the admin's name", async () => {
    const alices = await alicesTask();
    const bobs = await insertTaskFixture(api.database.db, { owner: 'bob' });
    expect((await request(api.app).get(`/tasks/${alices}`).set(ROOT)).body).toMatchObject({ id: alices });
    const all = await request(api.app).get('/tasks').set(ROOT);
    expect(ids(all.body)).toEqual(expect.arrayContaining([alices, bobs]));
    const onlyBob = await request(api.app).get('/tasks?owner=bob').set(ROOT);
    expect(ids(onlyBob.body)).toContain(bobs);
    expect(ids(onlyBob.body)).not.toContain(alices);

    expect((await request(api.app).post(`/tasks/${alices}/cancel`).set(ROOT)).status).toBe(200);
    const line = capture.lines.find((l) => l.message === 'task cancelled' && l.taskId === alices);
    expect(line).toMatchObject({ by: 'root', admin: true, owner: 'alice' });
  });

  it("answers a non-admin 404 for another owner's task wherever it is named, and 403 for another owner's list", async () => {
    const alices = await alicesTask();
    const asBob: [string, Promise<{ status: number }>][] = [
      ['get', request(api.app).get(`/tasks/${alices}`).set(BOB)],
      ['long poll', request(api.app).get(`/tasks/${alices}?wait=1`).set(BOB)],
      ['cancel', request(api.app).post(`/tasks/${alices}/cancel`).set(BOB)],
      ['stream token', request(api.app).post(`/tasks/${alices}/stream-token`).set(BOB)],
      ['stream', request(api.app).get(`/tasks/${alices}/events`).set(BOB)],
    ];
    for (const [what, res] of asBob) expect([what, (await res).status]).toEqual([what, 404]);
    expect((await request(api.app).get('/tasks?owner=alice').set(BOB)).status).toBe(403);
    expect((await request(api.app).get('/tasks/events?owner=alice').set(BOB)).status).toBe(403);
    // Naming oneself is allowed, and the list is one's own.
    const own = await request(api.app).get('/tasks?owner=bob').set(BOB);
    expect(own.status).toBe(200);
    expect(ids(own.body)).not.toContain(alices);
    expect((await request(api.app).get(`/tasks/${alices}`).set(ALICE)).status).toBe(200);
  });

  it("lets an admin watch another owner's task: its stream, a long poll, and a stream token the admin was given", async () => {
    const alices = await alicesTask();
    const stream = await openSse(`${base}/tasks/${alices}/events`, ROOT);
    open.push(stream);
    expect(stream.status).toBe(200);
    await stream.waitFor('the current state', (events) => events.some((e) => e.event === 'task'));
    expect((await request(api.app).get(`/tasks/${alices}?wait=0.1`).set(ROOT)).status).toBe(200);

    const issued = await request(api.app).post(`/tasks/${alices}/stream-token`).set(ROOT);
    expect(issued.status).toBe(200);
    const viaToken = await openSse(`${base}${issued.body.url as string}`);
    open.push(viaToken);
    expect(viaToken.status).toBe(200);
    const adminsToken = await request(api.app).post('/tasks/stream-token').set(ROOT);
    const withAdminsToken = await fetch(`${base}/tasks/${alices}/events?token=${adminsToken.body.token as string}`);
    expect(withAdminsToken.status).toBe(200);
    await withAdminsToken.body?.cancel();
  });

  it("follows another owner's changes on an admin's list stream that names the owner, and refuses one that names none", async () => {
    expect((await request(api.app).get('/tasks/events').set(ROOT)).status).toBe(400);
    const stream = await openSse(`${base}/tasks/events?owner=alice`, ROOT);
    open.push(stream);
    await stream.waitFor('ready', (events) => events.some((e) => e.event === 'ready'));
    const created = await request(api.app).post('/tasks').set(ALICE).send({ type: 'echo' });
    const bobs = await request(api.app).post('/tasks').set(BOB).send({ type: 'echo' });
    await stream.waitFor("alice's new task", (events) =>
      events.some((e) => (e.data as { id?: string }).id === created.body.id),
    );
    // Alice's earlier tasks come first, as the stream's current state. Never bob's.
    const sent = stream.events.filter((e) => e.event === 'task').map((e) => (e.data as { id: string }).id);
    const alicesTasks = await request(api.app).get('/tasks?owner=alice&limit=100').set(ROOT);
    const alices = new Set(ids(alicesTasks.body));
    expect(sent).toContain(created.body.id);
    expect(sent).toEqual(expect.arrayContaining([...alices]));
    expect(sent).not.toContain(bobs.body.id);
    expect(sent.every((id) => alices.has(id))).toBe(true);
  });
});

describe('api: admins by JWT claim (AUTH_JWT_ADMIN_CLAIM)', () => {
  let api: TestApi;
  beforeAll(async () => {
    api = await startTestApi({
      auth: loadConfig({ AUTH_JWT_SECRET: SECRET, AUTH_JWT_ADMIN_CLAIM: 'scope=taskbox:admin' }),
    });
  });
  afterAll(async () => {
    await api.close();
  });

  const token = (sub: string, claims: Record<string, unknown>) =>
    new SignJWT(claims)
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(sub)
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(SECRET));

  it('makes a token an admin’s when the claim holds the value, as one scope word or an array element, and no other', async () => {
    const cases: [Record<string, unknown>, boolean][] = [
      [{ scope: 'openid taskbox:admin' }, true],
      [{ scope: ['taskbox:admin'] }, true],
      [{ scope: 'openid taskbox:admins' }, false],
      [{ scope: 'taskbox' }, false],
      [{ role: 'taskbox:admin' }, false],
      [{}, false],
    ];
    for (const [claims, admin] of cases) {
      const res = await request(api.app)
        .get('/me')
        .set('authorization', `Bearer ${await token('carol', claims)}`);
      expect([claims, res.body]).toEqual([claims, { owner: 'jwt:carol', admin }]);
    }
  });
});

describe('admin configuration', () => {
  it('reads the :admin flag of AUTH_TOKENS and refuses any other third part', () => {
    const tokens = loadConfig({ AUTH_TOKENS: 'a:alice:admin, b:bob' }).AUTH_TOKENS;
    expect([...(tokens ?? [])]).toEqual([
      ['a', { owner: 'alice', admin: true }],
      ['b', { owner: 'bob', admin: false }],
    ]);
    expect(() => loadConfig({ AUTH_TOKENS: 'a:alice:root' })).toThrow(/AUTH_TOKENS/);
    expect(() => loadConfig({ AUTH_TOKENS: 'a:alice:admin:x' })).toThrow(/AUTH_TOKENS/);
  });

  it('refuses an admin claim without a JWT setting, or without a value', () => {
    expect(() => loadConfig({ AUTH_JWT_ADMIN_CLAIM: 'scope=taskbox:admin' })).toThrow(
      /AUTH_JWT_ADMIN_CLAIM: applies to JWTs/,
    );
    expect(() => loadConfig({ AUTH_JWT_SECRET: SECRET, AUTH_JWT_ADMIN_CLAIM: 'scope' })).toThrow(
      /AUTH_JWT_ADMIN_CLAIM/,
    );
  });
});
