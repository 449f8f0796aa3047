import net from 'node:net';
import { sql } from 'kysely';
import pg from 'pg';
import { TASK_CHANNEL, taskChanged } from '@taskbox/shared';
import * as taskSql from '../../services/api/src/task-sql';
import { startTestApi, type TestApi } from '../helpers/api';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { capturingLogger } from '../helpers/log';
import type { LogLine } from '../helpers/services';
import { openSse, type SseClient, type SseEvent } from '../helpers/sse';
import { waitFor } from '../helpers/wait';

interface View {
  id: string;
  status: string;
  version: number;
}

const view = (e: SseEvent): View => e.data as View;
const taskIds = (events: SseEvent[]) => new Set(events.filter((e) => e.event === 'task').map((e) => view(e).id));

// Far below what the tasks below make: 20 KB each, a thousand of them.
const MAX_QUEUED_BYTES = 256 * 1024;
// Far longer than a reading client leaves a write blocked.
const STALL_MS = 2000;

/** The api's stream settings: the bounds above, and a heartbeat every `heartbeatMs`. */
const streams = (heartbeatMs: number) => ({
  timing: { heartbeatMs, retryMs: 2000 },
  bounds: { maxQueuedBytes: MAX_QUEUED_BYTES, stallMs: STALL_MS },
  tokenSecret: undefined,
  tokenTtlMs: 60_000,
});

/** The complete blocks of a stream's text: the last id among them (id-only blocks too) and the task ids sent. */
function readBlocks(text: string): { lastId: string | undefined; tasks: Set<string> } {
  const blocks = text.slice(0, text.lastIndexOf('\n\n')).split('\n\n');
  const tasks = new Set<string>();
  let lastId: string | undefined;
  for (const block of blocks) {
    lastId = /^id: (\d+)$/m.exec(block)?.[1] ?? lastId;
    const data = /^data: (.*)$/m.exec(block)?.[1];
    if (/^event: task$/m.test(block) && data) tasks.add((JSON.parse(data) as View).id);
  }
  return { lastId, tasks };
}

describe('api: list streams (GET /tasks/events) for clients that read slowly or not at all', () => {
  let api: TestApi;
  let base: string;
  let lines: LogLine[];
  const open: SseClient[] = [];

  beforeAll(async () => {
    const captured = capturingLogger();
    lines = captured.lines;
    api = await startTestApi({ logger: captured.logger, streams: streams(15_000) });
    base = await api.listen();
  });

  afterEach(() => open.splice(0).forEach((s) => s.close()));

  afterAll(() => api.close());

  async function stream(url: string, headers: Record<string, string> = {}): Promise<SseClient> {
    const s = await openSse(url, headers);
    open.push(s);
    return s;
  }

  /** Inserts `n` echo tasks with 20 KB payloads in transactions of `perTransaction`, and wakes the streams. */
  async function insertLargeTasks(n: number, perTransaction: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < n; i += perTransaction) {
      const { rows } = await sql<{ id: string }>`
        INSERT INTO tasks (id, type, payload, status, attempts, max_attempts, owner, correlation_id)
        SELECT gen_random_uuid(), 'echo', jsonb_build_object('blob', repeat('x', 20000)), 'pending', 0, 3,
          'anonymous', 'large' FROM generate_series(1, ${perTransaction}) RETURNING id`.execute(api.database.db);
      ids.push(...rows.map((r) => r.id));
      await sql`SELECT pg_notify(${TASK_CHANNEL}, ${rows[0]?.id})`.execute(api.database.db);
    }
    return ids;
  }

  /** Waits until the stream has sent every task of `ids`, and checks that it was not ended on the way. */
  async function receivesAll(s: SseClient, ids: string[], what: string): Promise<void> {
    await s.waitFor(what, (events) => {
      const seen = taskIds(events);
      return ids.every((id) => seen.has(id)) || s.isEnded();
    });
    expect(s.isEnded()).toBe(false);
  }

  const streamEnded = () => lines.filter((l) => l.level === 'warn' && l.message?.startsWith('stream ended'));

  it('ends the stream of a client that stopped reading after STREAM_STALL_MS; the client resumes from its last event id with no task missing', async () => {
    // HTTP/1.0, so the body comes as it is, with no chunked framing to take apart here.
    let text = '';
    let closed = false;
    const socket = net.connect(Number(new URL(base).port), '127.0.0.1');
    socket.write('GET /tasks/events?current=false HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n');
    socket.setEncoding('utf8');
    // Reads the headers and `ready`, then nothing (a stalled connection, a suspended tab).
    let stalled = true;
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (stalled && text.includes('event: ready')) socket.pause();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => (closed = true));
    await waitFor('the stream to open', () => text.includes('event: ready'));

    const ids = await insertLargeTasks(1000, 100);
    await waitFor('the api to end the stalled stream', () => streamEnded().length === 1);
    expect(streamEnded()[0]).toMatchObject({ path: '/tasks/events', owner: 'anonymous' });
    stalled = false;
    socket.resume();
    await waitFor('the client to read what reached it before the end', () => closed);

    const first = readBlocks(text.slice(text.indexOf('\r\n\r\n') + 4));
    expect(first.lastId).toBeDefined();
    expect(first.tasks.size).toBeLessThan(ids.length);
    const resumed = await stream(`${base}/tasks/events`, { 'last-event-id': first.lastId as string });
    await resumed.waitFor('every task, over both connections', (events) => {
      const seen = taskIds(events);
      return ids.every((id) => first.tasks.has(id) || seen.has(id));
    });
    expect(streamEnded()).toHaveLength(1);
  });

  it('sends a reading client a current state far larger than the bound, whole and before `ready`, without ending its stream', async () => {
    const before = streamEnded().length;
    // One transaction of 20 MB: two pages of the current state, each far above the stream's bound.
    const ids = await insertLargeTasks(1000, 1000);
    const s = await stream(`${base}/tasks/events?type=echo`);
    await s.waitFor('ready', (events) => events.some((e) => e.event === 'ready') || s.isEnded());
    expect(s.isEnded()).toBe(false);
    const first = taskIds(
      s.events.slice(
        0,
        s.events.findIndex((e) => e.event === 'ready'),
      ),
    );
    expect(ids.filter((id) => !first.has(id))).toEqual([]);
    expect(streamEnded()).toHaveLength(before);
  });

  it('catches a reading client up through pages far larger than the bound without ending its stream', async () => {
    const first = await stream(`${base}/tasks/events?type=echo&current=false`);
    await first.waitFor('ready', (events) => events[0]?.event === 'ready');
    const mark = first.events[0]?.id as string;
    first.close();
    const before = streamEnded().length;
    // One transaction: the catch-up's first page (500 tasks) is 10 MB.
    const ids = await insertLargeTasks(1000, 1000);

    const resumed = await stream(`${base}/tasks/events?type=echo`, { 'last-event-id': mark });
    await receivesAll(resumed, ids, 'every task changed since the watermark');
    expect(streamEnded()).toHaveLength(before);
  });

  it('keeps the stream of a reading client through one change far larger than the bound: every task arrives', async () => {
    const s = await stream(`${base}/tasks/events?type=echo&current=false`);
    await s.waitFor('ready', (events) => events[0]?.event === 'ready');
    const before = streamEnded().length;
    // One transaction: the shared read hands the stream 20 MB at once.
    const ids = await insertLargeTasks(1000, 1000);
    await receivesAll(s, ids, 'every task');
    expect(streamEnded()).toHaveLength(before);
  });

  it('moves a reading client on through a burst while an open transaction holds the watermark back', async () => {
    const s = await stream(`${base}/tasks/events?type=echo&current=false`);
    await s.waitFor('ready', (events) => events[0]?.event === 'ready');
    // A session with a transaction open (a long report, a pg_dump): the watermark stays behind it.
    const holder = await api.database.pool.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT pg_current_xact_id()');
      const ids = await insertLargeTasks(200, 200);
      await receivesAll(s, ids, 'every task, the transaction still open');
    } finally {
      await holder.query('ROLLBACK');
      holder.release();
    }
  });
});

describe('api: list streams while a transaction is left open', () => {
  let api: TestApi;
  let base: string;
  let other: TestDatabase;
  const rowsRead: number[] = [];

  beforeAll(async () => {
    const real = taskSql.tasksChangedSince;
    jest.spyOn(taskSql, 'tasksChangedSince').mockImplementation(async (...args) => {
      const read = await real(...args);
      rowsRead.push(read.changed.length);
      return read;
    });
    api = await startTestApi();
    other = await createTestDatabase();
    base = await api.listen();
  });

  afterAll(async () => {
    jest.restoreAllMocks();
    await api.close();
    await other.drop();
  });

  it('reads only the new changes at each wake-up, not every change since the transaction began', async () => {
    const s = await openSse(`${base}/tasks/events?current=false`);
    await s.waitFor('ready', (events) => events[0]?.event === 'ready');
    // An idle session in a transaction, even in another database, holds every watermark back.
    const holder = new pg.Client({ connectionString: other.url });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT pg_current_xact_id()');
      const { rows } = await sql<{ id: string }>`INSERT INTO tasks (id, type, payload, owner)
        SELECT gen_random_uuid(), 'echo', '{}', 'anonymous' FROM generate_series(1, 500) RETURNING id`.execute(
        api.database.db,
      );
      await sql`SELECT pg_notify(${TASK_CHANNEL}, '')`.execute(api.database.db);
      await s.waitFor('the burst', (events) => taskIds(events).size === 500);
      for (const [i, row] of rows.slice(0, 3).entries()) {
        const reads = rowsRead.length;
        await api.database.db
          .updateTable('tasks')
          .set({ progress: (i + 1) / 10, ...taskChanged })
          .where('id', '=', row.id)
          .execute();
        await sql`SELECT pg_notify(${TASK_CHANNEL}, ${row.id})`.execute(api.database.db);
        await waitFor('a shared read', () => rowsRead.length > reads);
        await s.waitFor('the change', (events) =>
          events.some((e) => e.event === 'task' && view(e).id === row.id && view(e).version > 1),
        );
      }
      expect(Math.max(...rowsRead.slice(-3))).toBeLessThan(10);
    } finally {
      s.close();
      await holder.query('ROLLBACK');
      await holder.end();
    }
  });
});

describe('api: a list stream whose filter matches nothing for a while', () => {
  let api: TestApi;
  let base: string;

  beforeAll(async () => {
    api = await startTestApi({ streams: streams(200) });
    base = await api.listen();
  });

  afterAll(() => api.close());

  it("moves its client's last event id on with its heartbeats, so a reconnect does not read every change since it opened", async () => {
    const res = await fetch(`${base}/tasks/events?type=rare`, { headers: { accept: 'text/event-stream' } });
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    const readUntil = async (what: string, done: () => boolean) =>
      waitFor(what, async () => {
        text += decoder.decode((await reader.read()).value, { stream: true });
        return done();
      });
    try {
      await readUntil('ready', () => text.includes('event: ready'));
      const ready = readBlocks(text).lastId as string;
      await sql`INSERT INTO tasks (id, type, payload, owner) SELECT gen_random_uuid(), 'echo', '{}', 'anonymous'
        FROM generate_series(1, 50)`.execute(api.database.db);
      await sql`SELECT pg_notify(${TASK_CHANNEL}, '')`.execute(api.database.db);
      await readUntil('an id past the tasks it was not sent', () => {
        const { lastId } = readBlocks(text);
        return lastId !== undefined && BigInt(lastId) > BigInt(ready);
      });
      expect(readBlocks(text).tasks.size).toBe(0);
    } finally {
      await reader.cancel();
    }
  });
});
