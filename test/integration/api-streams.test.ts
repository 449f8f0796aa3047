import { sql } from 'kysely';
import { amqpUrl, deleteTopology, testPrefix } from '../helpers/amqp';
import { startTestApi, type TestApi } from '../helpers/api';
import { startFaultProxy, type FaultProxy } from '../helpers/proxy';
import { startService, type RunningService } from '../helpers/services';
import { openSse, type SseClient, type SseEvent } from '../helpers/sse';
import { waitFor } from '../helpers/wait';

interface View {
  id: string;
  status: string;
  currentStep: string | null;
  progress: number | null;
  version: number;
  timeline?: { event: string }[];
}

const view = (e: SseEvent): View => e.data as View;
const versions = (events: SseEvent[]): number[] => events.map((e) => view(e).version);
const terminal = (events: SseEvent[]): boolean =>
  ['succeeded', 'failed', 'cancelled'].includes(view(events.at(-1) ?? { id: '', event: '', data: {} }).status ?? '');

function strictlyIncreasing(values: number[]): boolean {
  return values.every((v, i) => i === 0 || v > (values[i - 1] as number));
}

describe('api: GET /tasks/{id}/events streams a task live (Server-Sent Events)', () => {
  let api: TestApi;
  let base: string;
  let prefix: string;
  let listenProxy: FaultProxy;
  let httpProxy: FaultProxy;
  let services: RunningService[] = [];
  const open: SseClient[] = [];

  beforeAll(async () => {
    const admin = new URL(process.env.TASKBOX_TEST_ADMIN_URL as string);
    listenProxy = await startFaultProxy(admin.hostname, Number(admin.port || 5432));
    api = await startTestApi({}, { listenVia: (url) => listenProxy.url(url) });
    base = await api.listen();
    httpProxy = await startFaultProxy('127.0.0.1', Number(new URL(base).port));
    prefix = testPrefix();
    const env = { DATABASE_URL: api.database.url, AMQP_URL: amqpUrl(), AMQP_PREFIX: prefix };
    services = [startService('relay', env), startService('worker', env)];
    await services[1]!.waitForLog('consuming', (l) => l.message === 'consuming');
  });

  afterEach(() => open.splice(0).forEach((s) => s.close()));

  afterAll(async () => {
    const codes = await Promise.all(services.map((s) => s.stop()));
    await api.close();
    await Promise.all([listenProxy.close(), httpProxy.close()]);
    await deleteTopology(prefix);
    expect(codes).toEqual([0, 0]);
  });

  async function submitSleep(ms: number): Promise<string> {
    const res = await fetch(`${base}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'sleep', payload: { ms } }),
    });
    expect(res.status).toBe(202);
    return ((await res.json()) as View).id;
  }

  async function stream(url: string, headers: Record<string, string> = {}): Promise<SseClient> {
    const s = await openSse(url, headers);
    open.push(s);
    return s;
  }

  /** The task as the database has it now. */
  function stored(id: string) {
    return api.database.db
      .selectFrom('tasks')
      .select(['status', 'version'])
      .where('id', '=', id)
      .executeTakeFirstOrThrow();
  }

  const dbVersion = async (id: string): Promise<number> => Number((await stored(id)).version);

  it('sends the current state first, then each later state in order with its version as id, and ends after the terminal event', async () => {
    const id = await submitSleep(1000);
    const s = await stream(`${base}/tasks/${id}/events`);
    expect(s.status).toBe(200);
    expect(s.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(s.headers.get('cache-control')).toBe('no-cache');
    expect(s.headers.get('x-accel-buffering')).toBe('no');
    await s.ended;

    const states = s.events.map(view);
    expect(s.events.every((e) => e.event === 'task' && e.id === String(view(e).version))).toBe(true);
    expect(['pending', 'processing']).toContain(states[0]?.status);
    expect(strictlyIncreasing(versions(s.events))).toBe(true);
    // The handler's two halves are half a second apart: each stands long enough to be read on its own.
    const shown = states.map((v) => `${v.status}:${v.progress}`);
    expect(shown).toEqual(expect.arrayContaining(['processing:0.5', 'succeeded:1']));
    expect(shown.indexOf('processing:0.5')).toBeLessThan(shown.indexOf('succeeded:1'));
    expect(states.at(-1)).toMatchObject({ status: 'succeeded', progress: 1, version: await dbVersion(id) });
    expect(states.at(-1)?.timeline?.map((t) => t.event)).toEqual(['created', 'published', 'started', 'finished']);
    expect(s.retries).toEqual([2000]);
  });

  it('resumes from Last-Event-ID after the connection is cut mid-task: no state lost, none repeated', async () => {
    const id = await submitSleep(2000);
    const first = await stream(`${httpProxy.url(base)}tasks/${id}/events`);
    await first.waitFor('a processing state', (events) => events.some((e) => view(e).status === 'processing'));
    await httpProxy.cut();
    await first.ended;
    const lastId = first.events.at(-1)?.id as string;
    // Changes are made while the client is away.
    await waitFor('a change while disconnected', async () => (await dbVersion(id)) > Number(lastId));
    await httpProxy.restore();

    const resumed = await stream(`${httpProxy.url(base)}tasks/${id}/events`, { 'last-event-id': lastId });
    await resumed.ended;
    expect(versions(resumed.events)[0]).toBeGreaterThan(Number(lastId));
    expect(strictlyIncreasing([Number(lastId), ...versions(resumed.events)])).toBe(true);
    expect(view(resumed.events.at(-1) as SseEvent)).toMatchObject({
      status: 'succeeded',
      version: await dbVersion(id),
    });

    // A client that has the terminal state is told there is nothing more: 204 stops an EventSource.
    const done = await fetch(`${base}/tasks/${id}/events`, {
      headers: { 'last-event-id': String(await dbVersion(id)) },
    });
    expect(done.status).toBe(204);
  });

  it('keeps streaming through a reconnect of the api’s LISTEN connection: changes made while it was cut arrive', async () => {
    const id = await submitSleep(3000);
    const s = await stream(`${base}/tasks/${id}/events`);
    await s.waitFor('the run to start', (events) => events.some((e) => view(e).status === 'processing'));
    await listenProxy.cut();
    const cutAt = await dbVersion(id);
    await waitFor(
      'the worker to change the task while the api cannot hear it',
      async () => (await dbVersion(id)) > cutAt,
    );
    // A change announced before the cut may still arrive; none made after it can, until the restore.
    expect(Math.max(...versions(s.events))).toBeLessThanOrEqual(cutAt);
    await listenProxy.restore();
    await s.ended;
    expect(Math.max(...versions(s.events))).toBeGreaterThan(cutAt);
    expect(strictlyIncreasing(versions(s.events))).toBe(true);
    expect(view(s.events.at(-1) as SseEvent)).toMatchObject({ status: 'succeeded', version: await dbVersion(id) });
  });

  it('holds nothing for a client that left while its stream was still opening', async () => {
    const id = await submitSleep(30_000);
    const openStreams = async () => {
      const text = await (await fetch(`${base}/metrics`)).text();
      return Number(/^http_streams_open\{[^}]*\} (\d+)$/m.exec(text)?.[1]);
    };
    await api.database.db.transaction().execute(async (tx) => {
      // The stream's first read waits on this lock, and its client leaves meanwhile.
      await sql`LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE`.execute(tx);
      const leaving = new AbortController();
      const request = fetch(`${base}/tasks/${id}/events`, { signal: leaving.signal }).catch(() => undefined);
      await waitFor('the first read to wait on the lock', async () => {
        const { rows } = await sql<{ n: number }>`
          SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'
            AND query LIKE 'select %from "tasks" where "owner" = $1 and "id" = $2'`.execute(api.database.db);
        return rows[0]?.n === 1;
      });
      expect(api.events.waiting()).toBe(1);
      const before = await api.connections();
      leaving.abort();
      await request;
      await waitFor('the api to see the client go', async () => (await api.connections()) < before);
    });
    await waitFor('the abandoned stream to be released', async () => (await openStreams()) === 0);
    // The stream's gauge drops before its watch is closed (the same request's finally, a tick later).
    await waitFor('its watch to be closed', () => api.events.waiting() === 0);
    await fetch(`${base}/tasks/${id}/cancel`, { method: 'POST' });
  });

  it('ends a cancelled task’s stream with the cancelled state', async () => {
    const id = await submitSleep(30_000);
    const s = await stream(`${base}/tasks/${id}/events`);
    await s.waitFor('the run to start', (events) => events.some((e) => view(e).status === 'processing'));
    expect((await fetch(`${base}/tasks/${id}/cancel`, { method: 'POST' })).status).toBe(202);
    await s.ended;
    expect(terminal(s.events)).toBe(true);
    expect(view(s.events.at(-1) as SseEvent)).toMatchObject({ status: 'cancelled', cancelRequested: true });
  });

  it('streams the owner’s changes on GET /tasks/events, filtered by type, and resumes from a watermark with no task missing', async () => {
    const s = await stream(`${base}/tasks/events?type=sleep&current=false`);
    await s.waitFor('ready', (events) => events[0]?.event === 'ready');
    const echo = await fetch(`${base}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'echo', payload: {} }),
    });
    expect(echo.status).toBe(202);
    const a = await submitSleep(200);
    await s.waitFor('the task to succeed', (events) =>
      events.some((e) => (e.data as View).id === a && view(e).status === 'succeeded'),
    );
    const tasks = s.events.filter((e) => e.event === 'task').map(view);
    expect(tasks.every((v) => v.id === a)).toBe(true);
    expect(strictlyIncreasing(tasks.map((v) => v.version))).toBe(true);

    const mark = s.events[0]?.id as string;
    s.close();
    const b = await submitSleep(200);
    await waitFor('b to finish', async () => (await stored(b)).status === 'succeeded');
    const resumed = await stream(`${base}/tasks/events?type=sleep`, { 'last-event-id': mark });
    await resumed.waitFor('a and b in their final states', (events) =>
      [a, b].every((id) =>
        events.some((e) => e.event === 'task' && view(e).id === id && view(e).status === 'succeeded'),
      ),
    );
  });

  it('catches a list stream up from an old watermark page by page, moving its event id so that a cut client resumes mid-way', async () => {
    const first = await stream(`${base}/tasks/events?type=echo&current=false`);
    await first.waitFor('ready', (events) => events[0]?.event === 'ready');
    const mark = first.events[0]?.id as string;
    first.close();
    // Three transactions of 400 tasks: more than one page (500) of the catch-up, over several watermarks.
    const batches: string[][] = [];
    for (let i = 0; i < 3; i++) {
      const { rows } = await sql<{ id: string }>`
        INSERT INTO tasks (id, type, payload, status, attempts, max_attempts, owner, correlation_id)
        SELECT gen_random_uuid(), 'echo', '{}', 'cancelled', 0, 3, 'anonymous', 'catch-up'
        FROM generate_series(1, 400) RETURNING id`.execute(api.database.db);
      batches.push(rows.map((r) => r.id));
    }
    const all = batches.flat();

    const resumed = await stream(`${base}/tasks/events?type=echo`, { 'last-event-id': mark });
    const seen = (events: SseEvent[]) => new Set(events.filter((e) => e.event === 'task').map((e) => view(e).id));
    await resumed.waitFor('every task changed since the watermark', (events) =>
      all.every((id) => seen(events).has(id)),
    );
    const ids = resumed.events.filter((e) => e.event === 'task').map((e) => BigInt(e.id as string));
    expect(ids.every((id, i) => i === 0 || id >= (ids[i - 1] as bigint))).toBe(true);
    const later = ids.find((id) => id > BigInt(mark));
    expect(later).toBeDefined();

    // A client cut off after the first page resumes from the id it had then, and still misses nothing.
    const again = await stream(`${base}/tasks/events?type=echo`, { 'last-event-id': String(later) });
    await again.waitFor('the tasks of the last transaction', (events) =>
      (batches[2] as string[]).every((id) => seen(events).has(id)),
    );
    expect(seen(again.events).size).toBeLessThan(all.length);
  });
});
