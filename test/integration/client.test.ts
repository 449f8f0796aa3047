import { randomUUID } from 'node:crypto';
import { createClient, type ListFilter, type TaskView, type TaskboxClient } from '@taskbox/client';
import { amqpUrl, deleteTopology, testPrefix } from '../helpers/amqp';
import { startTestApi, type TestApi } from '../helpers/api';
import { bufferingFetch } from '../helpers/client-fetch';
import { startFaultProxy, type FaultProxy } from '../helpers/proxy';
import { startService, type RunningService } from '../helpers/services';

const increasing = (views: TaskView[]): boolean => views.every((v, i) => i === 0 || v.version > views[i - 1]!.version);

describe('@taskbox/client in Node against a running api', () => {
  let api: TestApi;
  let base: string;
  let prefix: string;
  let proxy: FaultProxy;
  let services: RunningService[] = [];
  let client: TaskboxClient;
  const calls: string[] = [];

  beforeAll(async () => {
    api = await startTestApi({ auth: { AUTH_TOKENS: new Map([['alice-token', { owner: 'alice', admin: false }]]) } });
    base = await api.listen();
    proxy = await startFaultProxy('127.0.0.1', Number(new URL(base).port));
    prefix = testPrefix();
    const env = { DATABASE_URL: api.database.url, AMQP_URL: amqpUrl(), AMQP_PREFIX: prefix };
    services = [startService('relay', env), startService('worker', env)];
    await services[1]!.waitForLog('consuming', (l) => l.message === 'consuming');
    client = createClient({ baseUrl: base, token: async () => 'alice-token' });
  });

  afterAll(async () => {
    const codes = await Promise.all(services.map((s) => s.stop()));
    await api.close();
    await proxy.close();
    await deleteTopology(prefix);
    expect(codes).toEqual([0, 0]);
  });

  /** A fetch that records each URL. */
  function recording(): typeof fetch {
    return async (input, init) => {
      calls.push(String(input));
      return fetch(input, init);
    };
  }

  it('creates a task and watches it to its result, each state newer than the last', async () => {
    const created = await client.createTask({ type: 'sleep', payload: { ms: 600 } });
    expect(created.error).toBeUndefined();
    const seen: TaskView[] = [];
    const done = await client.watchTask(created.data!.id, (view) => seen.push(view));
    expect(done.data).toMatchObject({ id: created.data!.id, status: 'succeeded', progress: 1 });
    expect(increasing(seen)).toBe(true);
    expect(seen.at(-1)).toEqual(done.data);
  });

  it('schedules a task with runAt as a Date or a string, or with delayMs, and the view says when it is due', async () => {
    const at = new Date(Date.now() + 60_000);
    const fromDate = await client.createTask({ type: 'echo', payload: { n: 'date' }, runAt: at });
    expect(fromDate.data).toMatchObject({ status: 'pending', runAt: at.toISOString() });
    const offset = at.toISOString().replace('Z', '+00:00');
    const fromText = await client.createTask({ type: 'echo', payload: { n: 'text' }, runAt: offset });
    expect(fromText.data?.runAt).toBe(at.toISOString());
    const delayed = await client.createTask({ type: 'echo', payload: { n: 'delay' }, delayMs: 60_000 });
    expect(Date.parse(delayed.data?.runAt ?? '') - Date.parse(delayed.data?.createdAt ?? '')).toBe(60_000);
    const both = await client.createTask({ type: 'echo', runAt: at, delayMs: 1 });
    expect(both.error).toMatchObject({ kind: 'problem', status: 422, title: 'Invalid Schedule' });
    for (const id of [fromDate, fromText, delayed].map((r) => r.data?.id ?? '')) {
      expect((await client.cancelTask(id)).data?.status).toBe('cancelled');
    }
  });

  /** A fetch whose first request reaches the api and whose answer is then lost. */
  /** The api gets the first request, but its answer is lost, or a gateway answers in its place. */
  function losingFirstAnswer(gatewayStatus?: number): typeof fetch {
    let first = true;
    return async (input, init) => {
      const res = await fetch(input, init);
      if (!first) return res;
      first = false;
      if (gatewayStatus === undefined) throw new TypeError('fetch failed');
      return new Response('<html>gateway</html>', { status: gatewayStatus, headers: { 'content-type': 'text/html' } });
    };
  }

  it.each([
    ['whose answer was lost', undefined],
    ['a gateway answered 502 for', 502],
    ['a gateway answered 504 for (the api was slow)', 504],
  ])('retries a create %s with the same idempotency key: one task, not two', async (_what, gatewayStatus) => {
    const key = randomUUID();
    const flaky = createClient({ baseUrl: base, token: 'alice-token', fetch: losingFirstAnswer(gatewayStatus) });
    const created = await flaky.createTask({ type: 'echo', payload: { n: 1 } }, { idempotencyKey: key });
    expect(created.data?.status).toBeDefined();
    const rows = await api.database.db.selectFrom('tasks').select('id').where('idempotency_key', '=', key).execute();
    expect(rows.map((r) => r.id)).toEqual([created.data!.id]);
  });

  it('retries a failed task once although the first answer was lost, and refuses to retry a succeeded one', async () => {
    const { data } = await client.createTask({ type: 'flaky', payload: { failTimes: 1 }, maxAttempts: 1 });
    expect((await client.waitForTask(data!.id, { timeoutMs: 20_000 })).data?.status).toBe('failed');
    const losing = createClient({ baseUrl: base, token: 'alice-token', fetch: losingFirstAnswer() });
    const retried = await losing.retryTask(data!.id);
    expect(retried.error).toBeUndefined();
    expect(retried.data?.id).toBe(data!.id);
    const done = await client.waitForTask(data!.id, { timeoutMs: 20_000 });
    expect(done.data).toMatchObject({ status: 'succeeded', attempts: 2 });
    const retries = await api.database.db
      .selectFrom('task_retries')
      .select('retry')
      .where('task_id', '=', data!.id)
      .execute();
    expect(retries).toEqual([{ retry: 1 }]);
    const again = await client.retryTask(data!.id);
    expect(again.error).toMatchObject({ kind: 'problem', status: 409, title: 'Task Not Retryable' });
  });

  it('answers failures as values with the problem’s fields', async () => {
    const unknown = await client.createTask({ type: 'nope' });
    expect(unknown.error).toMatchObject({ kind: 'problem', status: 422, title: 'Unknown Task Type' });
    expect(unknown.error?.knownTypes).toContain('sleep');
    const invalid = await client.createTask({ type: 'sleep', payload: { ms: -1 } });
    expect(invalid.error?.issues?.[0]?.path).toBe('payload.ms');
    expect((await client.getTask(randomUUID())).error).toMatchObject({ kind: 'problem', status: 404 });
    const stranger = createClient({ baseUrl: base });
    expect((await stranger.getTask(randomUUID())).error).toMatchObject({ status: 401 });
    await proxy.cut();
    const offline = createClient({ baseUrl: proxy.url(base), token: 'alice-token' });
    expect((await offline.getTask(randomUUID())).error).toMatchObject({ kind: 'network', status: 0 });
    await proxy.restore();
  });

  it('answers a request it cannot send as an invalid error at once, sending nothing and retrying nothing', async () => {
    calls.length = 0;
    const sender = createClient({ baseUrl: base, token: 'alice-token', fetch: recording() });
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    // The types refuse both; a JavaScript caller, or data typed loosely, can still pass them.
    for (const payload of [{ big: 10n }, cycle] as never[]) {
      const created = await sender.createTask({ type: 'echo', payload });
      expect(created.error).toMatchObject({ kind: 'invalid', status: 0, detail: /cannot be sent as JSON/ });
    }
    // An invalid Date answers as a value too, not as a throw from the call.
    const when = sender.createTask({ type: 'echo', runAt: new Date('not a date') });
    expect((await when).error).toMatchObject({ kind: 'invalid', detail: 'runAt is an invalid Date' });
    const pages = [];
    for await (const page of sender.listTasks({ createdAfter: new Date(Number.NaN) })) pages.push(page);
    expect(pages).toEqual([
      { error: expect.objectContaining({ kind: 'invalid', detail: 'createdAfter is an invalid Date' }) },
    ]);
    // Ids that are paths of other routes: `events` is the list stream, `.` makes /tasks/./cancel /tasks/cancel.
    const notAnId = { kind: 'invalid', detail: 'the task id must be a UUID' };
    for (const id of ['events', 'counts', '.', '..', `${randomUUID()}/..`]) {
      expect((await sender.getTask(id)).error).toMatchObject(notAnId);
      expect((await sender.cancelTask(id)).error).toMatchObject(notAnId);
      expect((await sender.retryTask(id)).error).toMatchObject(notAnId);
      expect((await sender.watchTask(id, () => undefined)).error).toMatchObject(notAnId);
      expect((await sender.createStreamToken(id)).error).toMatchObject(notAnId);
    }
    expect(calls).toEqual([]);
  });

  it('answers a stream token whose url opens the stream at the api, whatever origin the page has', async () => {
    const created = await client.createTask({ type: 'echo', payload: {} });
    const token = await client.createStreamToken(created.data!.id);
    expect(token.data!.url.startsWith(`${base}/tasks/${created.data!.id}/events?token=`)).toBe(true);
    const stream = new AbortController();
    const res = await fetch(token.data!.url, { signal: stream.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    stream.abort();
  });

  it('lists every task once, page after page', async () => {
    const type = 'echo';
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push((await client.createTask({ type, payload: { i } })).data!.id);
    const listed: string[] = [];
    let pages = 0;
    for await (const page of client.listTasks({ type, limit: 2 })) {
      expect(page.error).toBeUndefined();
      listed.push(...page.data!.items.map((t) => t.id));
      pages++;
    }
    expect(listed).toEqual(expect.arrayContaining(ids));
    expect(new Set(listed).size).toBe(listed.length);
    expect(pages).toBe(Math.ceil(listed.length / 2));
  });

  it('filters the list by creation time, given as a Date or a string, and by error text', async () => {
    const since = new Date();
    const { data } = await client.createTask({
      type: 'flaky',
      payload: { failTimes: 1, message: 'paper jam' },
      maxAttempts: 1,
    });
    await client.waitForTask(data!.id, { timeoutMs: 20_000 });
    const ids = async (filter: ListFilter): Promise<string[]> => {
      const found: string[] = [];
      for await (const page of client.listTasks(filter)) found.push(...page.data!.items.map((t) => t.id));
      return found;
    };
    expect(await ids({ createdAfter: since })).toEqual([data!.id]);
    expect(await ids({ createdAfter: since.toISOString(), errorContains: 'PAPER' })).toEqual([data!.id]);
    expect(await ids({ createdBefore: since })).not.toContain(data!.id);
    expect(await ids({ errorContains: 'no such error' })).toEqual([]);
  });

  it('cancels a running task, and waitForTask resolves with the cancelled state', async () => {
    const { data } = await client.createTask({ type: 'sleep', payload: { ms: 30_000 } });
    const running = new AbortController();
    await client.watchTask(data!.id, (view) => view.status === 'processing' && running.abort(), {
      signal: running.signal,
    });
    const cancelled = await client.cancelTask(data!.id);
    expect(cancelled.error).toBeUndefined();
    expect((await client.waitForTask(data!.id, { timeoutMs: 20_000 })).data?.status).toBe('cancelled');
  });

  it('gives up waiting with a timeout error, the task going on', async () => {
    const { data } = await client.createTask({ type: 'sleep', payload: { ms: 5000 } });
    const waited = await client.waitForTask(data!.id, { timeoutMs: 200 });
    expect(waited.error).toMatchObject({ kind: 'timeout' });
    expect((await client.cancelTask(data!.id)).error).toBeUndefined();
  });

  it('falls back to long polls, from the version it has, when a proxy buffers streams, and still sees the task finish', async () => {
    const urls: string[] = [];
    const noStreams = createClient({ baseUrl: base, token: 'alice-token', fetch: bufferingFetch(urls) });
    const { data } = await noStreams.createTask({ type: 'sleep', payload: { ms: 3000 } });
    const seen: TaskView[] = [];
    const done = await noStreams.watchTask(data!.id, (view) => seen.push(view), { idleMs: 200 });
    expect(done.data?.status).toBe('succeeded');
    expect(urls.filter((u) => u.endsWith('/events'))).toHaveLength(2);
    expect(urls.some((u) => /\?wait=25&after=\d+$/.test(u))).toBe(true);
    expect(increasing(seen)).toBe(true);
  });

  it('reconnects a stream cut mid-task and resumes from the last version it had', async () => {
    const viaProxy = createClient({ baseUrl: proxy.url(base), token: 'alice-token' });
    const { data } = await viaProxy.createTask({ type: 'sleep', payload: { ms: 1500 } });
    const seen: TaskView[] = [];
    let cut = false;
    const done = await viaProxy.watchTask(data!.id, (view) => {
      seen.push(view);
      if (!cut && view.status === 'processing') {
        cut = true;
        void proxy.cut().then(() => proxy.restore());
      }
    });
    expect(cut).toBe(true);
    expect(done.data?.status).toBe('succeeded');
    expect(increasing(seen)).toBe(true);
  });
});
