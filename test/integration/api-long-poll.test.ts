import { amqpUrl, deleteTopology, testPrefix } from '../helpers/amqp';
import { startTestApi, type TestApi } from '../helpers/api';
import { insertTaskFixture, progressTask } from '../helpers/factories';
import { startService, type RunningService } from '../helpers/services';
import { waitFor } from '../helpers/wait';

interface View {
  id: string;
  status: string;
  currentStep: string | null;
  progress: number | null;
  version: number;
}

describe('api: GET /tasks/{id}?wait= long-polls, woken by Postgres NOTIFY', () => {
  let api: TestApi;
  let base: string;
  let prefix: string;
  let services: RunningService[] = [];

  beforeAll(async () => {
    api = await startTestApi();
    base = await api.listen();
    prefix = testPrefix();
    const env = { DATABASE_URL: api.database.url, AMQP_URL: amqpUrl(), AMQP_PREFIX: prefix };
    services = [startService('relay', env), startService('worker', env)];
    await services[1]!.waitForLog('consuming', (l) => l.message === 'consuming');
  });

  afterAll(async () => {
    await Promise.all(services.map((s) => s.stop()));
    await api.close();
    await deleteTopology(prefix);
  });

  async function poll(id: string, wait: number): Promise<{ view: View; ms: number }> {
    const started = Date.now();
    const res = await fetch(`${base}/tasks/${id}?wait=${wait}`);
    expect(res.status).toBe(200);
    return { view: (await res.json()) as View, ms: Date.now() - started };
  }

  it('follows a task run by the worker through each change, each wait ending at the change, not the deadline', async () => {
    const created = await fetch(`${base}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'sleep', payload: { ms: 600 } }),
    });
    let view = (await created.json()) as View;
    const seen: string[] = [];
    for (let polls = 0; view.status !== 'succeeded'; polls++) {
      // A 30 s wait per poll; each returned well before it, so the NOTIFY woke it.
      const next = await poll(view.id, 30);
      expect(next.ms).toBeLessThan(10_000);
      expect(JSON.stringify(next.view)).not.toBe(JSON.stringify(view));
      view = next.view;
      seen.push(`${view.status}:${view.currentStep}:${view.progress}`);
      expect(polls).toBeLessThan(10);
    }
    // Changes can coalesce into one answer, but the run ends as the last answer says.
    expect(seen.at(-1)).toBe('succeeded:sleeping:1');
  });

  it('answers with the same status after the wait when the task does not change', async () => {
    // No outbox row: nothing will run this task.
    const id = await insertTaskFixture(api.database.db);
    const { view, ms } = await poll(id, 1);
    expect(view.status).toBe('pending');
    expect(ms).toBeGreaterThanOrEqual(950);
  });

  it('answers at once for a finished task, which cannot change again', async () => {
    const id = await insertTaskFixture(api.database.db, { status: 'succeeded' });
    const { view, ms } = await poll(id, 30);
    expect(view.status).toBe('succeeded');
    expect(ms).toBeLessThan(10_000);
  });

  it('wakes a waiting client when another client cancels the task through the api', async () => {
    const id = await insertTaskFixture(api.database.db);
    const waiting = poll(id, 30);
    await waitFor('the long poll to be registered', () => api.events.waiting() === 1);
    expect((await fetch(`${base}/tasks/${id}/cancel`, { method: 'POST' })).status).toBe(200);
    const { view, ms } = await waiting;
    expect(view.status).toBe('cancelled');
    expect(ms).toBeLessThan(10_000);
  });

  it('takes a task id in upper case as the same task: a wait on it wakes, and a cancel through it wakes others', async () => {
    const id = await insertTaskFixture(api.database.db);
    const waits = [poll(id, 30), poll(id.toUpperCase(), 30)];
    await waitFor('both long polls to be registered', () => api.events.waiting() === 2);
    expect((await fetch(`${base}/tasks/${id.toUpperCase()}/cancel`, { method: 'POST' })).status).toBe(200);
    for (const { view, ms } of await Promise.all(waits)) {
      expect(view).toMatchObject({ id, status: 'cancelled' });
      expect(ms).toBeLessThan(10_000);
    }
  });

  it('stops waiting when the client goes away', async () => {
    const id = await insertTaskFixture(api.database.db);
    const client = new AbortController();
    const request = fetch(`${base}/tasks/${id}?wait=30`, { signal: client.signal }).catch(() => 'aborted');
    await waitFor('the long poll to be registered', () => api.events.waiting() === 1);
    client.abort();
    expect(await request).toBe('aborted');
    await waitFor('the abandoned long poll to be released', () => api.events.waiting() === 0);
  });

  const read = async (id: string): Promise<View> => (await (await fetch(`${base}/tasks/${id}`)).json()) as View;

  const progress = (id: string, fraction: number) => progressTask(api.database.db, id, fraction);

  /** A long poll from `after`, answered only after the test saw its first read end (and could change the task). */
  async function pollAfter(id: string, after: number, thenChange: () => Promise<void>): Promise<View> {
    const reads = api.taskReads();
    const answer = fetch(`${base}/tasks/${id}?wait=30&after=${after}`);
    await waitFor('the long poll to have read the task', () => api.taskReads() > reads);
    await thenChange();
    const res = await answer;
    expect(res.status).toBe(200);
    return (await res.json()) as View;
  }

  it('with after, answers the change the client has not seen although it committed before the poll came', async () => {
    const id = await insertTaskFixture(api.database.db);
    const had = await read(id);
    await progress(id, 0.25);
    // The change between two polls: without `after` the poll would wait past it, for the 0.5.
    const view = await pollAfter(id, had.version, () => progress(id, 0.5));
    expect(view).toMatchObject({ progress: 0.25, version: had.version + 1 });
  });

  it('with after at the version the task has, waits for its next change', async () => {
    const id = await insertTaskFixture(api.database.db);
    await progress(id, 0.25);
    const had = await read(id);
    const view = await pollAfter(id, had.version, () => progress(id, 0.5));
    expect(view).toMatchObject({ progress: 0.5, version: had.version + 1 });
  });

  it.each(['-1', '01', '1.5', '1e3', 'x', '', '12345678901234567890'])('answers 400 for after=%s', async (after) => {
    const id = await insertTaskFixture(api.database.db);
    const res = await fetch(`${base}/tasks/${id}?wait=1&after=${after}`);
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(((await res.json()) as { detail: string }).detail).toMatch(/^after: /);
  });

  it.each(['0', '-1', '31', 'soon', ''])('answers 400 for wait=%s', async (wait) => {
    const id = await insertTaskFixture(api.database.db);
    const res = await fetch(`${base}/tasks/${id}?wait=${wait}`);
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  });

  it('stops the relay and the worker with exit code 0', async () => {
    expect(await Promise.all(services.map((s) => s.stop()))).toEqual([0, 0]);
  });
});
