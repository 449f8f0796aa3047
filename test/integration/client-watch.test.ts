import { createClient, type TaskView, type TaskboxClient } from '@taskbox/client';
import { startTestApi, type TestApi } from '../helpers/api';
import { bufferingFetch, stallingFetch } from '../helpers/client-fetch';
import { changeTask, insertTaskFixture, progressTask } from '../helpers/factories';
import { startFaultProxy, type FaultProxy } from '../helpers/proxy';
import { sample, scrape } from '../helpers/metrics';
import { waitFor } from '../helpers/wait';

const TOKEN = 'alice-token';

describe('@taskbox/client watchTask: what it leaves open and what it tells the caller', () => {
  let api: TestApi;
  let base: string;
  let client: TaskboxClient;
  let proxy: FaultProxy;

  beforeAll(async () => {
    api = await startTestApi({ auth: { AUTH_TOKENS: new Map([[TOKEN, { owner: 'alice', admin: false }]]) } });
    base = await api.listen();
    client = createClient({ baseUrl: base, token: TOKEN });
    proxy = await startFaultProxy('127.0.0.1', Number(new URL(base).port));
  });

  afterAll(async () => {
    await api.close();
    await proxy.close();
  });

  const progresses = (seen: TaskView[]) => seen.map((v) => `${v.status}:${v.progress}`);
  const finish = (id: string) => changeTask(api.database.db, id, { status: 'succeeded', progress: 1 });

  const streamsOpen = async (): Promise<number | undefined> => sample(await scrape(base), 'http_streams_open');

  it('stops at an onChange that throws with a callback error carrying what it threw, and leaves no stream open', async () => {
    // Nothing runs this task: only the watch can end the stream before the test cancels it.
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    const bug = new Error('render bug');
    let calls = 0;
    const watching = client.watchTask(id, () => {
      calls++;
      throw bug;
    });
    try {
      await waitFor('onChange to be called', () => calls > 0);
      await waitFor('no stream open on the api', async () => (await streamsOpen()) === 0);
    } finally {
      await client.cancelTask(id);
    }
    const done = await watching;
    expect(done.error).toMatchObject({ kind: 'callback', status: 0, detail: 'render bug' });
    expect(done.error?.cause).toBe(bug);
    expect(calls).toBe(1);
  });

  it('stops at an onChange that throws while long-polling the same way: a callback error, never a rejection', async () => {
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    const urls: string[] = [];
    const behindProxy = createClient({ baseUrl: base, token: TOKEN, fetch: bufferingFetch(urls) });
    const bug = new Error('render bug');
    const done = await behindProxy.watchTask(
      id,
      () => {
        throw bug;
      },
      { idleMs: 100 },
    );
    expect(done.error).toMatchObject({ kind: 'callback', cause: bug });
    expect(urls.at(-1)).toBe(`${base}/tasks/${id}`);
  });

  it('long-polls from the version it has: a change committed between two polls is shown, not skipped', async () => {
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    const urls: string[] = [];
    const behindProxy = bufferingFetch(urls);
    let polled: (reads: number) => void = () => undefined;
    const pollSent = new Promise<number>((resolve) => (polled = resolve));
    // The first long poll leaves after a change the client has not seen: the worker's, between two polls.
    const fetchImpl: typeof fetch = async (input, init) => {
      if (String(input).includes('wait=') && urls.every((u) => !u.includes('wait='))) {
        await progressTask(api.database.db, id, 0.25);
        polled(api.taskReads());
      }
      return behindProxy(input, init);
    };
    const watcher = createClient({ baseUrl: base, token: TOKEN, fetch: fetchImpl });
    const seen: TaskView[] = [];
    const watching = watcher.watchTask(id, (view) => seen.push(view), { idleMs: 100 });
    const reads = await pollSent;
    await waitFor('the long poll to have read the task', () => api.taskReads() > reads);
    await finish(id);
    expect((await watching).data?.status).toBe('succeeded');
    expect(progresses(seen)).toEqual(['pending:null', 'processing:0.25', 'succeeded:1']);
  });

  it('keeps streaming across an api restart: refused connections are not a buffering proxy', async () => {
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    const urls: string[] = [];
    const recording: typeof fetch = (input, init) => (urls.push(String(input)), fetch(input, init));
    const watcher = createClient({ baseUrl: proxy.url(base), token: TOKEN, fetch: recording });
    const seen: TaskView[] = [];
    const watching = watcher.watchTask(id, (view) => seen.push(view));
    const streams = () => urls.filter((u) => u.endsWith('/events')).length;
    await waitFor('the first state', () => seen.length > 0);
    await proxy.cut();
    // Two refused reconnects: as many as once made it long-poll for the rest of the watch.
    await waitFor('two refused reconnects', () => streams() >= 3);
    await progressTask(api.database.db, id, 0.5);
    await proxy.restore();
    await waitFor('the state committed while the api was away', () => seen.some((v) => v.progress === 0.5));
    await finish(id);
    expect((await watching).data?.status).toBe('succeeded');
    expect(progresses(seen)).toEqual(['pending:null', 'processing:0.5', 'succeeded:1']);
    expect(urls.filter((u) => u.includes('wait='))).toEqual([]);
  });

  it('tries a stream again after falling back to long polls, and streams once the proxy lets streams through', async () => {
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    const urls: string[] = [];
    const watcher = createClient({ baseUrl: base, token: TOKEN, fetch: bufferingFetch(urls, 2) });
    const seen: TaskView[] = [];
    const watching = watcher.watchTask(id, (view) => seen.push(view), { idleMs: 200, streamRetryMs: 2000 });
    const streams = () => urls.filter((u) => u.endsWith('/events')).length;
    await waitFor('the fall back to long polls', () => urls.some((u) => u.includes('wait=')));
    // Past streamRetryMs, so the round after this long poll's answer is a stream.
    await new Promise((resolve) => setTimeout(resolve, 2100));
    await progressTask(api.database.db, id, 0.5);
    await waitFor('a third stream', () => streams() === 3);
    await waitFor('the stream to be open on the api', async () => ((await streamsOpen()) ?? 0) > 0);
    const polls = urls.filter((u) => u.includes('wait=')).length;
    await progressTask(api.database.db, id, 0.75);
    await waitFor('the change the stream sent', () => seen.some((v) => v.progress === 0.75));
    await finish(id);
    expect((await watching).data?.status).toBe('succeeded');
    expect(progresses(seen)).toEqual(['pending:null', 'processing:0.5', 'processing:0.75', 'succeeded:1']);
    expect(urls.filter((u) => u.includes('wait='))).toHaveLength(polls);
    expect(streams()).toBe(3);
  });

  it('makes again a stream request that gets no answer, as a connection that went nowhere, and sees every state', async () => {
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    let streams = 0;
    const watcher = createClient({
      baseUrl: base,
      token: TOKEN,
      fetch: stallingFetch((url) => url.endsWith('/events') && ++streams === 1),
    });
    const seen: TaskView[] = [];
    const watching = watcher.watchTask(id, (view) => seen.push(view), { idleMs: 500 });
    await waitFor('the state from the second stream', () => seen.length > 0);
    await progressTask(api.database.db, id, 0.5);
    await waitFor('the change', () => seen.some((v) => v.progress === 0.5));
    await finish(id);
    expect((await watching).data?.status).toBe('succeeded');
    expect(progresses(seen)).toEqual(['pending:null', 'processing:0.5', 'succeeded:1']);
    expect(streams).toBe(2);
  });

  it('takes a token provider that fails once as a failed round, never a rejection, and follows the task', async () => {
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    let asked = 0;
    const token = () => {
      if (asked++ === 0) throw new Error('token store unavailable');
      return TOKEN;
    };
    const watcher = createClient({ baseUrl: base, token });
    const seen: TaskView[] = [];
    const watching = watcher.watchTask(id, (view) => seen.push(view));
    await waitFor('the first state', () => seen.length > 0);
    await finish(id);
    expect((await watching).data?.status).toBe('succeeded');
  });

  it('makes again a long poll that gets no answer past its wait, and follows the task to its end', async () => {
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    let polls = 0;
    // Streams held back by a buffering proxy, so it long-polls; the first poll goes nowhere.
    const stalling = stallingFetch((url) => !url.endsWith('/events') && ++polls === 1, bufferingFetch());
    const watcher = createClient({ baseUrl: base, token: TOKEN, fetch: stalling });
    const seen: TaskView[] = [];
    const watching = watcher.watchTask(id, (view) => seen.push(view), { idleMs: 200 });
    await waitFor('the state from the second poll', () => seen.length > 0);
    await finish(id);
    expect((await watching).data?.status).toBe('succeeded');
    expect(progresses(seen)).toEqual(['pending:null', 'succeeded:1']);
  });

  it('keeps streaming when the api ends its streams before an event (a restart): only a quiet stream is held back', async () => {
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    const urls: string[] = [];
    // The first two streams end at once, cleanly, as an api stopping ends them.
    const ending: typeof fetch = (input, init) => {
      urls.push(String(input));
      const early = String(input).endsWith('/events') && urls.filter((u) => u.endsWith('/events')).length <= 2;
      return early
        ? Promise.resolve(new Response('', { headers: { 'content-type': 'text/event-stream' } }))
        : fetch(input, init);
    };
    const watcher = createClient({ baseUrl: base, token: TOKEN, fetch: ending });
    const seen: TaskView[] = [];
    const watching = watcher.watchTask(id, (view) => seen.push(view));
    await waitFor('the first state', () => seen.length > 0);
    await client.cancelTask(id);
    expect((await watching).data?.status).toBe('cancelled');
    expect(urls.filter((u) => u.endsWith('/events'))).toHaveLength(3);
    expect(urls.filter((u) => u.includes('wait='))).toEqual([]);
  });
});
