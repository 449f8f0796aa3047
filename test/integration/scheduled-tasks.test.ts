import { sql } from 'kysely';
import { checkPendingPublished, checkPendingUnpublished, sleep } from '@taskbox/shared';
import { taskTypeNames } from '@taskbox/tasks';
import { republishStranded, strandedTasks } from '../../services/relay/src/task-sql';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { startStack, type Stack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';

interface PlanNode {
  'Relation Name'?: string;
  'Actual Loops'?: number;
  Plans?: PlanNode[];
}

/** How many times a plan read the outbox. */
const outboxLookups = (node: PlanNode): number =>
  (node['Relation Name'] === 'outbox' ? (node['Actual Loops'] ?? 0) : 0) +
  (node.Plans ?? []).reduce((sum, child) => sum + outboxLookups(child), 0);

interface View {
  id: string;
  status: string;
  runAt: string | null;
  createdAt: string;
  startedAt: string | null;
  timeline?: { event: string; at: string; runAt?: string }[];
}

// The live reconciler looks for stranded tasks every 250 ms with this (REPUBLISH_AFTER_MS / 4), so it
// runs many passes while the scheduled tasks below wait.
const REPUBLISH_AFTER_MS = 1000;
const PAST_SKEW_MS = 5000;
const MAX_AHEAD_MS = 3_600_000;

/**
 * Scheduled tasks (runAt, delayMs) against the running api, relay and worker: a task runs at its due
 * time and not before, a cancel before it wins, the api refuses schedules it should not take, and the
 * relay's reconciler leaves a task that is not due yet alone.
 */
describe('scheduled tasks', () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack(
      {},
      {
        api: { SCHEDULE_PAST_SKEW_MS: String(PAST_SKEW_MS), SCHEDULE_MAX_AHEAD_MS: String(MAX_AHEAD_MS) },
        relay: { REPUBLISH_AFTER_MS: String(REPUBLISH_AFTER_MS) },
      },
    );
  });
  afterAll(async () => {
    await stack.stop();
  });

  const post = (body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${stack.urls.api}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });
  const create = async (body: unknown): Promise<View> => {
    const res = await post(body);
    expect(res.status).toBe(202);
    return (await res.json()) as View;
  };
  const view = async (id: string) => (await (await fetch(`${stack.urls.api}/tasks/${id}`)).json()) as View;
  const row = (id: string) =>
    stack.database.db
      .selectFrom('tasks')
      .select(['status', 'run_at', 'started_at', 'attempts'])
      .where('id', '=', id)
      .executeTakeFirstOrThrow();
  const attempts = (id: string) =>
    stack.database.db.selectFrom('task_attempts').selectAll().where('task_id', '=', id).execute();
  const outboxRows = (id: string) =>
    stack.database.db.selectFrom('outbox').selectAll().where('task_id', '=', id).execute();
  const succeeded = (id: string) =>
    waitFor(`task ${id} to succeed`, async () => ((await row(id)).status === 'succeeded' ? row(id) : undefined));

  /** Waits (on the clock, no task state to wait on) until `ms` before `at`, then asserts nothing ran. */
  async function expectPendingShortlyBefore(id: string, at: Date, ms: number): Promise<void> {
    await waitFor(`${ms} ms before ${at.toISOString()}`, () => Date.now() >= at.getTime() - ms);
    expect(await row(id)).toMatchObject({ status: 'pending', started_at: null, attempts: 0 });
    expect(await attempts(id)).toEqual([]);
    expect((await outboxRows(id)).map((o) => o.published_at)).toEqual([null]);
  }

  it('runs a task with runAt after that time and not before, and shows runAt and a "scheduled" event', async () => {
    const runAt = new Date(Date.now() + 3000);
    const task = await create({ type: 'echo', payload: { at: 'runAt' }, runAt: runAt.toISOString() });
    expect(task).toMatchObject({ status: 'pending', runAt: runAt.toISOString() });
    expect((await view(task.id)).timeline).toEqual([
      { event: 'created', at: task.createdAt },
      { event: 'scheduled', at: task.createdAt, runAt: runAt.toISOString() },
    ]);
    const [message] = await outboxRows(task.id);
    expect(message?.available_at).toEqual(runAt);

    await expectPendingShortlyBefore(task.id, runAt, 500);
    const done = await succeeded(task.id);
    expect(done.started_at?.getTime()).toBeGreaterThanOrEqual(runAt.getTime());
    const [attempt] = await attempts(task.id);
    expect(attempt?.started_at.getTime()).toBeGreaterThanOrEqual(runAt.getTime());
    expect((await view(task.id)).timeline?.map((e) => e.event)).toEqual(
      expect.arrayContaining(['created', 'scheduled', 'published', 'started', 'finished']),
    );
  });

  it('runs a task with delayMs that long after the api took it, counted by the database', async () => {
    const task = await create({ type: 'echo', payload: { at: 'delayMs' }, delayMs: 2500 });
    const due = new Date(Date.parse(task.createdAt) + 2500);
    expect(task.runAt).toBe(due.toISOString());
    await expectPendingShortlyBefore(task.id, due, 500);
    const done = await succeeded(task.id);
    expect(done.run_at).toEqual(due);
    expect(done.started_at?.getTime()).toBeGreaterThanOrEqual(due.getTime());
  });

  it('lets a cancel before the due time win: the task never starts and has no attempt', async () => {
    const task = await create({ type: 'echo', payload: { at: 'cancelled' }, delayMs: 2000 });
    const cancel = await fetch(`${stack.urls.api}/tasks/${task.id}/cancel`, { method: 'POST' });
    expect(cancel.status).toBe(200);
    expect(await cancel.json()).toMatchObject({ status: 'cancelled', runAt: task.runAt });
    // The cancel removed the message in its own transaction (cancel-sql.ts): nothing is left to publish.
    expect(await outboxRows(task.id)).toEqual([]);
    // A task due with it, created after it, has run: the relay and the worker went past its due time.
    const witness = await create({ type: 'echo', payload: { at: 'witness' }, delayMs: 2000 });
    expect(Date.parse(witness.runAt ?? '')).toBeGreaterThanOrEqual(Date.parse(task.runAt ?? ''));
    await succeeded(witness.id);
    expect(await row(task.id)).toMatchObject({ status: 'cancelled', started_at: null, attempts: 0 });
    expect(await attempts(task.id)).toEqual([]);
  });

  it('runs a retried scheduled task at once, its old due time dropped so the reconciler can watch it', async () => {
    const task = await create({ type: 'echo', payload: { at: 'retried' }, delayMs: 3_000_000 });
    await fetch(`${stack.urls.api}/tasks/${task.id}/cancel`, { method: 'POST' });
    const retried = await fetch(`${stack.urls.api}/tasks/${task.id}/retry`, { method: 'POST' });
    expect(retried.status).toBe(202);
    // Read after the commit: the worker may have run it already.
    expect(await retried.json()).toMatchObject({ runAt: null });
    await succeeded(task.id);
  });

  it('runs at once a runAt within the allowed skew in the past, with no "scheduled" event', async () => {
    const runAt = new Date(Date.now() - 1000).toISOString();
    const task = await create({ type: 'echo', payload: { at: 'skew' }, runAt });
    expect(task.runAt).toBe(runAt);
    await succeeded(task.id);
    expect((await view(task.id)).timeline?.map((e) => e.event)).not.toContain('scheduled');
  });

  it.each([
    [
      'both runAt and delayMs',
      { runAt: new Date(Date.now() + 60_000).toISOString(), delayMs: 10 },
      ['runAt', 'delayMs'],
    ],
    [
      'a runAt further back than the skew',
      { runAt: new Date(Date.now() - PAST_SKEW_MS - 60_000).toISOString() },
      ['runAt'],
    ],
    ['a runAt beyond the cap', { runAt: new Date(Date.now() + MAX_AHEAD_MS + 60_000).toISOString() }, ['runAt']],
    ['a delayMs beyond the cap', { delayMs: MAX_AHEAD_MS + 1 }, ['delayMs']],
    ['a runAt without an offset', { runAt: '2030-01-01T09:00:00' }, ['runAt']],
    ['a runAt whose offset Postgres refuses (past 15:59)', { runAt: '2030-01-01T09:00:00-16:00' }, ['runAt']],
    ['a runAt with a fraction Postgres refuses', { runAt: `2030-01-01T09:00:00.${'1'.repeat(130)}Z` }, ['runAt']],
    ['a runAt that is no time', { runAt: 'tomorrow at nine' }, ['runAt']],
    ['an impossible date', { runAt: '2030-02-30T09:00:00Z' }, ['runAt']],
    ['a negative delayMs', { delayMs: -1 }, ['delayMs']],
    ['a fractional delayMs', { delayMs: 1.5 }, ['delayMs']],
    ['a delayMs as text', { delayMs: '100' }, ['delayMs']],
  ])('refuses %s with 422 problem+json naming the field, and writes nothing', async (_what, schedule, fields) => {
    const before = await stack.database.db
      .selectFrom('tasks')
      .select(({ fn }) => fn.countAll().as('n'))
      .execute();
    const res = await post({ type: 'echo', payload: {}, ...schedule });
    expect(res.status).toBe(422);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    const problem = (await res.json()) as { issues: { path: string }[] };
    expect(problem.issues.map((i) => i.path)).toEqual(fields);
    const after = await stack.database.db
      .selectFrom('tasks')
      .select(({ fn }) => fn.countAll().as('n'))
      .execute();
    expect(after).toEqual(before);
  });

  it('replays a scheduled create with the same Idempotency-Key, and refuses the key with another schedule', async () => {
    const key = { 'idempotency-key': `schedule-${Date.now()}` };
    const body = { type: 'echo', payload: { at: 'replay' }, delayMs: 60_000 };
    const first = await post(body, key);
    expect(first.status).toBe(202);
    const replay = await post(body, key);
    expect([replay.status, replay.headers.get('idempotent-replayed')]).toEqual([202, 'true']);
    expect(((await replay.json()) as View).id).toBe(((await first.json()) as View).id);
    expect((await post({ ...body, delayMs: 30_000 }, key)).status).toBe(409);
    expect((await post({ type: 'echo', payload: { at: 'replay' } }, key)).status).toBe(409);
  });

  it('replays a create whose runAt has passed since, beyond SCHEDULE_PAST_SKEW_MS, and still refuses such a runAt anew', async () => {
    const key = { 'idempotency-key': `schedule-passed-${Date.now()}` };
    const body = { type: 'echo', payload: { at: 'passed' }, runAt: new Date(Date.now() + 300).toISOString() };
    const first = await post(body, key);
    expect(first.status).toBe(202);
    await sleep(300 + PAST_SKEW_MS + 200);
    const replay = await post(body, key);
    expect([replay.status, replay.headers.get('idempotent-replayed')]).toEqual([202, 'true']);
    expect(((await replay.json()) as View).id).toBe(((await first.json()) as View).id);
    expect((await post(body, { 'idempotency-key': `${key['idempotency-key']}-new` })).status).toBe(422);
    expect((await post(body)).status).toBe(422);
  });

  it('is never republished by the live reconciler while it waits for its due time', async () => {
    const task = await create({ type: 'echo', payload: { at: 'reconciler' }, delayMs: 4 * REPUBLISH_AFTER_MS });
    await succeeded(task.id);
    expect(await outboxRows(task.id)).toHaveLength(1);
    expect(await attempts(task.id)).toHaveLength(1);
    expect(stack.relay.logs.filter((l) => l.message === 'stranded task republished')).toEqual([]);
  });
});

describe('the relay wakes for a due row', () => {
  let stack: Stack;

  beforeAll(async () => {
    // A poll far longer than the test's wait: only the relay's timer to the next due row can publish.
    stack = await startStack({}, { relay: { RELAY_POLL_MS: '600000' } });
  });
  afterAll(async () => {
    await stack.stop();
  });

  const post = async (body: object): Promise<string> => {
    const res = await fetch(`${stack.urls.api}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    return ((await res.json()) as View).id;
  };

  it('publishes a scheduled task when it falls due, without waiting for the next poll', async () => {
    const id = await post({ type: 'echo', payload: { at: 'timer' }, delayMs: 1500 });
    const started = await waitFor('the task to succeed', async () => {
      const task = await stack.database.db
        .selectFrom('tasks')
        .select(['status', 'run_at', 'started_at'])
        .where('id', '=', id)
        .executeTakeFirstOrThrow();
      return task.status === 'succeeded' ? task : undefined;
    });
    expect(started.started_at?.getTime()).toBeGreaterThanOrEqual(started.run_at?.getTime() ?? Infinity);
  });

  it('publishes a scheduled task on time after a drain that published others', async () => {
    const later = await post({ type: 'echo', payload: { at: 'after the others' }, delayMs: 1500 });
    const now = await Promise.all([1, 2, 3].map((n) => post({ type: 'echo', payload: { n } })));
    await waitFor('every task to succeed', async () => {
      const rows = await stack.database.db
        .selectFrom('tasks')
        .select('status')
        .where('id', 'in', [...now, later])
        .execute();
      return rows.every((r) => r.status === 'succeeded');
    });
  });

  it('retries a row the broker returned at its backoff, though the same drain published another', async () => {
    // A type no queue is bound to: returned unroutable, each try after its own backoff (0.5 s first).
    const unroutable = await insertTaskFixture(stack.database.db, { type: 'pdf', withOutbox: true });
    // The POST's NOTIFY wakes the relay: one claim takes both rows, publishes one and releases the other.
    await post({ type: 'echo', payload: { with: 'an unroutable row' } });
    await waitFor(
      'a second try of the returned row',
      async () => {
        const row = await stack.database.db
          .selectFrom('outbox')
          .select('publish_attempts')
          .where('task_id', '=', unroutable)
          .executeTakeFirstOrThrow();
        return row.publish_attempts >= 2;
      },
      5000,
    );
    await stack.database.db.deleteFrom('outbox').where('task_id', '=', unroutable).execute();
  });
});

/**
 * The reconciler's and the doctor's measures on a database of their own (no live relay acting on the
 * fixtures): a task counts as late from its due time, never from its creation.
 */
describe('a scheduled task is measured from its due time', () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database.drop();
  });
  afterEach(async () => {
    await sql`DELETE FROM outbox`.execute(database.db);
    await sql`DELETE FROM tasks`.execute(database.db);
  });

  /** A pending task created three hours ago; `runAt` and `outbox` say when it is due and what the outbox holds. */
  async function pendingSince3h(runAt: string | null, outbox: 'none' | 'unpublished'): Promise<string> {
    const id = await insertTaskFixture(database.db, { withOutbox: outbox === 'unpublished' });
    const at = runAt === null ? null : sql`now() + ${runAt}::interval`;
    await sql`UPDATE tasks SET created_at = now() - interval '3 hours', updated_at = now() - interval '3 hours',
      run_at = ${at} WHERE id = ${id}`.execute(database.db);
    await sql`UPDATE outbox SET available_at = coalesce(${at}, now() - interval '3 hours')
      WHERE task_id = ${id}`.execute(database.db);
    return id;
  }

  it('a task not due yet is neither stuck for the doctor nor stranded for the reconciler', async () => {
    const notDue = await pendingSince3h('1 hour', 'unpublished');
    const late = await pendingSince3h(null, 'unpublished');
    const unpublished = await checkPendingUnpublished(database.db, 60_000);
    expect(unpublished.detail).toContain(`1 pending over`);
    expect(unpublished.detail).toContain(late);
    expect((await checkPendingPublished(database.db, 0, 60_000)).status).toBe('ok');
    const stranded = await republishStranded(
      database.db,
      { cutoff: new Date().toISOString(), extraMs: 0 },
      taskTypeNames,
      100,
    );
    expect(stranded.map((r) => r.message.task_id)).not.toContain(notDue);
  });

  it('a task published at its due time and then cleaned out of the outbox counts from that time, not from its creation', async () => {
    // OUTBOX_RETENTION_MS may be short: the published row is gone, the task row keeps run_at.
    await pendingSince3h('-20 minutes', 'none');
    const unscheduled = await pendingSince3h(null, 'none');
    const halfHour = 30 * 60_000;
    const published = await checkPendingPublished(database.db, halfHour, 60_000);
    expect(published.detail).toContain('1 pending over');
    expect(published.detail).toContain(unscheduled);
    const cutoff = new Date(Date.now() - halfHour).toISOString();
    const stranded = await republishStranded(database.db, { cutoff, extraMs: 0 }, taskTypeNames, 100);
    expect(stranded.map((r) => r.message.task_id)).toEqual([unscheduled]);
  });

  it('a pass of the reconciler reads none of the tasks scheduled for later, however many wait', async () => {
    const stranded = await pendingSince3h(null, 'none');
    await sql`
      WITH t AS (
        INSERT INTO tasks (id, type, payload, status, owner, correlation_id, created_at, updated_at, run_at)
        SELECT gen_random_uuid(), 'echo', '{}', 'pending', 'anonymous', 'later',
               now() - interval '3 hours', now() - interval '3 hours', now() + interval '1 day'
        FROM generate_series(1, 3000) RETURNING id, run_at)
      INSERT INTO outbox (message_id, task_id, routing_key, payload, headers, available_at)
      SELECT gen_random_uuid(), id, 'echo', '{}', '{}', run_at FROM t`.execute(database.db);
    await sql`ANALYZE tasks`.execute(database.db);
    const cutoff = new Date(Date.now() - 30 * 60_000).toISOString();
    const pass = strandedTasks({ cutoff, extraMs: 0 }, taskTypeNames, 100);
    const { rows } = await sql<{ 'QUERY PLAN': { Plan: PlanNode }[] }>`EXPLAIN (ANALYZE, FORMAT JSON) ${pass}`.execute(
      database.db,
    );
    // Each task the scan keeps costs a look at its outbox rows (lastPublishedAt): only the stranded one may.
    expect(outboxLookups(rows[0]!['QUERY PLAN'][0]!.Plan)).toBeLessThanOrEqual(1);
    const republished = await republishStranded(database.db, { cutoff, extraMs: 0 }, taskTypeNames, 100);
    expect(republished.map((r) => r.message.task_id)).toEqual([stranded]);
  });
});
