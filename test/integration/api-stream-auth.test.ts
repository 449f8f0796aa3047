import { SignJWT } from 'jose';
import { loadConfig, type Db } from '@taskbox/shared';
import { createStreamTokens } from '../../services/api/src/stream-tokens';
import { startTestApi, streamBounds, type TestApi } from '../helpers/api';
import { insertTaskFixture, progressTask as progress } from '../helpers/factories';
import { openSse, type SseClient } from '../helpers/sse';
import { waitFor } from '../helpers/wait';

const SECRET = 'stream-token-secret-for-this-test-only';
const ALICE = { authorization: 'Bearer alice-token' };
const BOB = { authorization: 'Bearer bob-token' };

describe('api: streams and stream tokens are scoped to their owner', () => {
  let api: TestApi;
  let base: string;
  let db: Db;
  let alices: string;
  let alicesOther: string;
  let bobs: string;
  const open: SseClient[] = [];

  beforeAll(async () => {
    api = await startTestApi({
      auth: loadConfig({ AUTH_TOKENS: 'alice-token:alice,bob-token:bob' }),
      // Small caps, shared with long polls: two per owner, three in all.
      longPoll: { max: 3, maxPerOwner: 2 },
      streams: {
        timing: { heartbeatMs: 200, retryMs: 2000 },
        bounds: streamBounds,
        tokenSecret: SECRET,
        tokenTtlMs: 60_000,
      },
    });
    base = await api.listen();
    db = api.database.db;
    [alices, alicesOther, bobs] = await Promise.all([
      insertTaskFixture(db, { owner: 'alice' }),
      insertTaskFixture(db, { owner: 'alice' }),
      insertTaskFixture(db, { owner: 'bob' }),
    ]);
  });

  afterEach(async () => {
    open.splice(0).forEach((s) => s.close());
    await waitFor('the api to release every stream', async () => (await held()) === 0);
  });

  /** Streams and long polls the api holds now. */
  async function held(): Promise<number> {
    const text = await (await fetch(`${base}/metrics`)).text();
    const gauge = (name: string) => Number(new RegExp(`^${name}\\{[^}]*\\} (\\d+)$`, 'm').exec(text)?.[1]);
    return gauge('http_streams_open') + gauge('http_long_polls_waiting');
  }

  afterAll(async () => {
    await api.close();
  });

  async function stream(path: string, headers: Record<string, string> = {}): Promise<SseClient> {
    const s = await openSse(`${base}${path}`, headers);
    open.push(s);
    return s;
  }

  async function streamToken(path: string, headers: Record<string, string>) {
    const res = await fetch(`${base}${path}`, { method: 'POST', headers });
    return { status: res.status, body: (await res.json()) as { token: string; url: string; expiresAt: string } };
  }

  it('answers 401 without a token and 404 for another owner’s task, before any stream opens', async () => {
    const anonymous = await fetch(`${base}/tasks/${alices}/events`);
    expect(anonymous.status).toBe(401);
    const foreign = await fetch(`${base}/tasks/${alices}/events`, { headers: BOB });
    expect(foreign.status).toBe(404);
    expect(foreign.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  });

  it('streams with a bearer header, with heartbeat comments while the task is idle', async () => {
    const s = await stream(`/tasks/${alices}/events`, ALICE);
    expect(s.status).toBe(200);
    await s.waitFor('the current state', (events) => events.length === 1);
    await s.waitFor('two heartbeats', () => s.comments.filter((c) => c.trim() === 'heartbeat').length >= 2);
  });

  it('opens a task’s stream with its stream token and no header; the token opens no other task', async () => {
    const issued = await streamToken(`/tasks/${alices}/stream-token`, ALICE);
    expect(issued.status).toBe(200);
    expect(issued.body.url).toBe(`/tasks/${alices}/events?token=${issued.body.token}`);
    const s = await stream(issued.body.url);
    expect(s.status).toBe(200);
    await progress(db, alices, 0.25);
    await s.waitFor('the change', (events) => events.some((e) => (e.data as { progress: number }).progress === 0.25));

    const other = await fetch(`${base}/tasks/${alicesOther}/events?token=${issued.body.token}`);
    expect(other.status).toBe(404);
    const list = await fetch(`${base}/tasks/events?token=${issued.body.token}`);
    expect(list.status).toBe(401);
    // The problem names the request without the token, a credential that an error tracker would keep.
    expect(await other.json()).toMatchObject({ instance: `/tasks/${alicesOther}/events?token=redacted` });
    expect(await list.json()).toMatchObject({ instance: '/tasks/events?token=redacted' });
  });

  it('issues no token for another owner’s task', async () => {
    expect((await streamToken(`/tasks/${alices}/stream-token`, BOB)).status).toBe(404);
    expect((await streamToken(`/tasks/${alices}/stream-token`, {})).status).toBe(401);
  });

  it('refuses expired, forged, foreign-key and never-expiring tokens with 401', async () => {
    const expired = await createStreamTokens(SECRET, -60_000).issue({ owner: 'alice', admin: false, task: alices });
    const otherKey = await createStreamTokens(undefined, 60_000).issue({ owner: 'alice', admin: false, task: alices });
    // Signed with the right key and audience, but without exp.
    const forever = await new SignJWT({ task: alices })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('alice')
      .setAudience('taskbox-stream')
      .sign(new TextEncoder().encode(SECRET));
    for (const token of [expired.token, otherKey.token, forever, 'not-a-token']) {
      const res = await fetch(`${base}/tasks/${alices}/events?token=${encodeURIComponent(token)}`);
      expect(res.status).toBe(401);
    }
  });

  it('an owner’s token opens that owner’s list stream and task streams, never another owner’s', async () => {
    const issued = await streamToken('/tasks/stream-token', ALICE);
    expect(issued.body.url).toBe(`/tasks/events?token=${issued.body.token}`);
    const list = await stream(issued.body.url);
    await list.waitFor('ready', (events) => events.some((e) => e.event === 'ready'));
    const opened = list.events.length;
    await progress(db, bobs, 0.5);
    await progress(db, alicesOther, 0.5);
    await list.waitFor('alice’s change', (events) =>
      events.slice(opened).some((e) => (e.data as { id: string }).id === alicesOther),
    );
    expect(list.events.some((e) => (e.data as { id?: string }).id === bobs)).toBe(false);

    expect((await stream(`/tasks/${alicesOther}/events?token=${issued.body.token}`)).status).toBe(200);
    expect((await fetch(`${base}/tasks/${bobs}/events?token=${issued.body.token}`)).status).toBe(404);
  });

  it('caps streams and long polls together: 429 beyond the owner’s share, 503 beyond the process’s, with Retry-After', async () => {
    await stream(`/tasks/${alices}/events`, ALICE);
    await stream('/tasks/events', ALICE);
    const third = await fetch(`${base}/tasks/${alicesOther}?wait=30`, { headers: ALICE });
    expect(third.status).toBe(429);
    const another = await fetch(`${base}/tasks/${alicesOther}/events`, { headers: ALICE });
    expect(another.status).toBe(429);
    expect(another.headers.get('retry-after')).toBe('5');
    expect(await another.json()).toMatchObject({ status: 429, title: 'Too Many Streams' });

    expect((await stream(`/tasks/${bobs}/events`, BOB)).status).toBe(200);
    const full = await fetch(`${base}/tasks/events`, { headers: BOB });
    expect(full.status).toBe(503);
    expect(full.headers.get('retry-after')).toBe('5');
  });

  it('shows bob’s list stream none of alice’s changes', async () => {
    // Bob's current state first, then his changes: none of alice's tasks in either.
    const list = await stream('/tasks/events', BOB);
    await list.waitFor('ready', (events) => events.some((e) => e.event === 'ready'));
    expect(list.events.some((e) => e.event === 'task' && (e.data as { id: string }).id === bobs)).toBe(true);
    await progress(db, alices, 0.75);
    await progress(db, bobs, 0.75);
    await list.waitFor('bob’s change', (events) => events.some((e) => (e.data as { id: string }).id === bobs));
    expect(list.events.filter((e) => e.event === 'task').every((e) => (e.data as { id: string }).id === bobs)).toBe(
      true,
    );
  });
});

describe('api: a stream token is never a bearer token', () => {
  it('refuses a stream token as a bearer token even when one key signs both', async () => {
    const shared = 'one-key-for-both-which-config-refuses-anyway';
    const api = await startTestApi({
      auth: { AUTH_JWT_SECRET: shared },
      streams: {
        timing: { heartbeatMs: 200, retryMs: 2000 },
        bounds: streamBounds,
        tokenSecret: shared,
        tokenTtlMs: 60_000,
      },
    });
    try {
      const base = await api.listen();
      const jwt = await new SignJWT({})
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject('alice')
        .setExpirationTime('1h')
        .sign(new TextEncoder().encode(shared));
      const issued = await fetch(`${base}/tasks/stream-token`, {
        method: 'POST',
        headers: { authorization: `Bearer ${jwt}` },
      });
      expect(issued.status).toBe(200);
      const { token } = (await issued.json()) as { token: string };
      expect((await fetch(`${base}/tasks`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(401);
      expect((await fetch(`${base}/tasks`, { headers: { authorization: `Bearer ${jwt}` } })).status).toBe(200);
      expect(() => loadConfig({ AUTH_JWT_SECRET: shared, STREAM_TOKEN_SECRET: shared })).toThrow(
        /STREAM_TOKEN_SECRET: must differ from AUTH_JWT_SECRET/,
      );
    } finally {
      await api.close();
    }
  });
});
