import { sql } from 'kysely';
import { TASK_CHANNEL, taskChanged, type TaskStatus } from '@taskbox/shared';
import { startTestApi, type TestApi } from '../helpers/api';
import { changeTask, insertTaskFixture } from '../helpers/factories';
import { openSse, type SseClient, type SseEvent } from '../helpers/sse';

interface View {
  id: string;
  status: string;
}

const view = (e: SseEvent) => e.data as View;
const readyAt = (events: SseEvent[]) => events.findIndex((e) => e.event === 'ready');

const states = (events: SseEvent[], id: string): string[] =>
  events.filter((e) => e.event === 'task' && (e.data as View).id === id).map((e) => (e.data as View).status);

// One api and database for both: a list stream's current state is what the earlier tests left.
describe('api: list streams (GET /tasks/events), their filters and current state', () => {
  let api: TestApi;
  let base: string;
  const open: SseClient[] = [];

  beforeAll(async () => {
    api = await startTestApi();
    base = await api.listen();
  });

  afterEach(() => open.splice(0).forEach((s) => s.close()));

  afterAll(() => api.close());

  describe('api: a list stream filtered by status sends a task that leaves the filter once, in its new state', () => {
    async function stream(headers: Record<string, string> = {}, status = 'processing'): Promise<SseClient> {
      const s = await openSse(`${base}/tasks/events?status=${status}&current=false`, headers);
      open.push(s);
      await s.waitFor('ready', (events) => events[0]?.event === 'ready');
      return s;
    }

    /** Moves a task to `status` as the worker or the api would (a new version), and wakes the streams. */
    async function move(id: string, status: TaskStatus, attempts = 1): Promise<void> {
      await api.database.db
        .updateTable('tasks')
        .set({ status, attempts, ...taskChanged })
        .where('id', '=', id)
        .execute();
      await sql`SELECT pg_notify(${TASK_CHANNEL}, ${id})`.execute(api.database.db);
    }

    it('sends the succeeded state of a task it sent as processing', async () => {
      const s = await stream();
      const id = await insertTaskFixture(api.database.db);
      await move(id, 'processing');
      await s.waitFor('the task as processing', (events) => states(events, id).includes('processing'));
      await move(id, 'succeeded');
      await s.waitFor('the task as succeeded', (events) => states(events, id).includes('succeeded'));
      expect(states(s.events, id)).toEqual(['processing', 'succeeded']);
    });

    it('sends the new state of a task the client listed before the stream sent it anything (GET /tasks after ready)', async () => {
      const id = await insertTaskFixture(api.database.db, { status: 'processing', attempts: 1 });
      const s = await stream();
      await move(id, 'failed');
      await s.waitFor('the task as failed', (events) => states(events, id).includes('failed'));
    });

    it('sends, after a reconnect with Last-Event-ID, a task that left the filter while the client was away', async () => {
      const id = await insertTaskFixture(api.database.db, { status: 'processing', attempts: 1 });
      const first = await stream();
      const mark = first.events[0]?.id as string;
      first.close();
      await move(id, 'cancelled');
      const resumed = await stream({ 'last-event-id': mark });
      await resumed.waitFor('the task as cancelled', (events) => states(events, id).includes('cancelled'));
    });

    it('sends a task that left only once, and never a task that was never processing', async () => {
      const s = await stream();
      const left = await insertTaskFixture(api.database.db);
      const never = await insertTaskFixture(api.database.db);
      await move(left, 'processing');
      await s.waitFor('the task as processing', (events) => states(events, left).includes('processing'));
      // Back to pending for a retry after a backoff, then cancelled: the client dropped it at the first.
      await move(left, 'pending');
      await s.waitFor('the task as pending', (events) => states(events, left).includes('pending'));
      await move(left, 'cancelled');
      await move(never, 'cancelled', 0);
      // Committed after the others: once the stream sent it, it has read every change above.
      const marker = await insertTaskFixture(api.database.db);
      await move(marker, 'processing');
      await s.waitFor('the marker', (events) => states(events, marker).includes('processing'));
      expect(states(s.events, left)).toEqual(['processing', 'pending']);
      expect(states(s.events, never)).toEqual([]);
    });

    it('sends a stream of failed tasks only failed tasks, new and finished ones passing by unsent', async () => {
      const s = await stream({}, 'failed');
      const ok = await insertTaskFixture(api.database.db);
      await move(ok, 'processing');
      await move(ok, 'succeeded');
      const failed = await insertTaskFixture(api.database.db);
      await move(failed, 'processing');
      await move(failed, 'failed');
      await s.waitFor('the failed task', (events) => states(events, failed).includes('failed'));
      expect(states(s.events, ok)).toEqual([]);
      expect(states(s.events, failed)).toEqual(['failed']);
    });
  });

  describe('api: a list stream (GET /tasks/events) sends the current state first, then every change', () => {
    async function stream(query: string, headers: Record<string, string> = {}): Promise<SseClient> {
      const s = await openSse(`${base}/tasks/events${query}`, headers);
      open.push(s);
      await s.waitFor('ready', (events) => readyAt(events) >= 0);
      return s;
    }

    async function listed(query: string): Promise<string[]> {
      const res = await fetch(`${base}/tasks?limit=100${query}`);
      return ((await res.json()) as { items: View[] }).items.map((v) => v.id);
    }

    it('sends `current`, every matching task as it is, newest first and without ids, then `ready` with the first id, then the changes', async () => {
      for (const status of ['pending', 'processing', 'succeeded'] as const) {
        await insertTaskFixture(api.database.db, { status, attempts: status === 'pending' ? 0 : 1 });
        await insertTaskFixture(api.database.db, { status, type: 'sleep', attempts: status === 'pending' ? 0 : 1 });
      }
      await insertTaskFixture(api.database.db, { owner: 'someone-else' });

      const s = await stream('?type=echo');
      // `current` first: a client cut off before `ready` drops what it was sent when it comes again.
      expect(s.events[0]).toEqual({ id: undefined, event: 'current', data: {} });
      const first = s.events.slice(1, readyAt(s.events));
      expect(first.map((e) => view(e).id)).toEqual(await listed('&type=echo'));
      expect(first.every((e) => e.event === 'task' && e.id === undefined)).toBe(true);
      expect(s.events[readyAt(s.events)]?.id).toMatch(/^\d+$/);

      const pending = await stream('?status=pending');
      expect(pending.events.slice(1, readyAt(pending.events)).map((e) => view(e).id)).toEqual(
        await listed('&status=pending'),
      );

      const added = await insertTaskFixture(api.database.db);
      await changeTask(api.database.db, added, { status: 'processing' });
      await s.waitFor('the new task after ready', (events) =>
        events.slice(readyAt(events)).some((e) => e.event === 'task' && view(e).id === added),
      );
    });

    it('sends a current state larger than one read (500 tasks) whole, each task once', async () => {
      const { rows } = await sql<{ id: string }>`
      INSERT INTO tasks (id, type, payload, status, attempts, max_attempts, owner, correlation_id)
      SELECT gen_random_uuid(), 'report', '{}', 'succeeded', 1, 3, 'anonymous', 'current'
      FROM generate_series(1, 1200) RETURNING id`.execute(api.database.db);
      const s = await stream('?type=report');
      const sent = s.events.slice(1, readyAt(s.events)).map((e) => view(e).id);
      expect(sent).toHaveLength(1200);
      expect(new Set(sent)).toEqual(new Set(rows.map((r) => r.id)));
    });

    it('starts with `ready` and only the changes with current=false, or when it resumes from Last-Event-ID', async () => {
      await insertTaskFixture(api.database.db);
      const changesOnly = await stream('?current=false');
      expect(changesOnly.events[0]?.event).toBe('ready');
      const resumed = await stream('', { 'last-event-id': changesOnly.events[0]?.id as string });
      expect(resumed.events[0]?.event).toBe('ready');
      expect((await fetch(`${base}/tasks/events?current=no`)).status).toBe(400);
    });
  });
});
