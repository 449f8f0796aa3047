import { sql } from 'kysely';
import {
  createBatcher,
  isDbUnavailable,
  OUTBOX_CHANNEL,
  outboxInsert,
  outboxMessage,
  prepared,
  type Db,
  type MessageContext,
} from '@taskbox/shared';
import type { Schedule } from './schedule';
import { allOf, filterConditions, type TaskFilter } from './task-filter';
import type { Viewer } from './viewer';

export interface NewTask {
  id: string;
  type: string;
  payload: unknown;
  maxAttempts: number;
  schedule: Schedule;
  owner: string;
  idempotencyKey: string | null;
  requestHash: string | null;
}

export type TaskRow = Awaited<ReturnType<typeof findTask>> & object;

export interface TaskInsert {
  task: NewTask;
  context: MessageContext;
}

export type Inserted = { task: TaskRow; messageId: string } | undefined;

/**
 * Inserts tasks and the outbox rows that dispatch their first attempts in ONE statement: a
 * data-modifying CTE is atomic on its own, so there is no window where a task exists without its
 * outbox row or the reverse, and it costs one round trip instead of BEGIN/INSERT/INSERT/COMMIT. It
 * returns the whole rows for the responses, which saves a SELECT after it. A scheduled task's outbox
 * row is due at its run_at (the relay's claim skips it until then); a delay counts from the statement's
 * now(), and a runAt already past (within the api's skew) is due at once. Requests that arrive
 * together share the statement (createTaskInserter). Answers one entry per request, in order:
 * undefined where this owner had already used the idempotency key, and nothing was inserted.
 *
 * The statement also wakes the relay: its pg_notify is delivered when it commits. A NOTIFY inside a
 * transaction holds a cluster-wide lock from pre-commit until the commit is flushed, which serializes
 * notifying commits (notify.ts), but here it is one NOTIFY per shared statement, and an api process
 * has at most two in flight: group commit already coalesces the wake-ups, and a NOTIFY after the
 * commit would cost a second round trip per statement (the api's throughput was 17 % lower that way;
 * bench/README.md). The price: a NOTIFY that fails fails the insert. That happens only when Postgres's
 * notification queue is full (a listening session stuck in one transaction for hours): the request
 * gets 503 and nothing is written, and Postgres logs a warning from half full on.
 *
 * Prepared (prepared()): each connection parses and plans it once; its plan does not depend on the
 * parameters, so Postgres keeps the generic one.
 */
export async function insertTasks(db: Db, inserts: TaskInsert[]): Promise<Inserted[]> {
  const input = inserts.map(({ task, context }) => {
    const message = outboxMessage(task, 1, context);
    return {
      id: task.id,
      type: task.type,
      // As JSON text, cast in SQL: jsonb_to_recordset would turn a JSON null payload into SQL NULL.
      payload: JSON.stringify(task.payload),
      max_attempts: task.maxAttempts,
      run_at: task.schedule && 'runAt' in task.schedule ? task.schedule.runAt : null,
      delay_ms: task.schedule && 'delayMs' in task.schedule ? task.schedule.delayMs : null,
      owner: task.owner,
      idempotency_key: task.idempotencyKey,
      request_hash: task.requestHash,
      correlation_id: context.correlationId,
      message_id: message.message_id,
      message_payload: message.payload,
      message_headers: message.headers,
    };
  });
  const { rows } = await insertTasksStatement(JSON.stringify(input)).execute(db);
  const byId = new Map(rows.map((row) => [row.id, row]));
  return input.map((i) => {
    const task = byId.get(i.id);
    return task && { task, messageId: i.message_id };
  });
}

/**
 * The insert statement itself, for `input`: a JSON array of rows as insertTasks builds them. Exported
 * for the benchmark, which runs this very statement under pgbench as the api's ceiling.
 */
export function insertTasksStatement(input: string) {
  return sql<TaskRow>`${prepared('api_insert_tasks')}
    WITH input AS (
      SELECT * FROM jsonb_to_recordset(${input}::jsonb) AS i(
        id uuid, type text, payload text, max_attempts int, run_at timestamptz, delay_ms float8, owner text, idempotency_key text,
        request_hash text, correlation_id text, message_id uuid, message_payload text, message_headers text)
    ), inserted AS (
      INSERT INTO tasks (id, type, payload, max_attempts, run_at, owner, idempotency_key, request_hash, correlation_id)
      SELECT id, type, payload::jsonb, max_attempts, coalesce(run_at, now() + delay_ms * interval '1 millisecond'),
             owner, idempotency_key, request_hash, correlation_id
      FROM input
      ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
      RETURNING ${sql.join(taskColumns.map((c) => sql.ref(c)))}
    ), queued AS (
      ${outboxInsert(sql`
        SELECT i.message_id, t.id, t.type, i.message_payload::jsonb, i.message_headers::jsonb,
               -- greatest skips NULL: a task without run_at is due now.
               greatest(0, extract(epoch FROM t.run_at - now()) * 1000)::float8
        FROM inserted t JOIN input i ON i.id = t.id`)}
    )
    SELECT inserted.* FROM inserted, (SELECT pg_notify(${OUTBOX_CHANNEL}, '')) AS wake`;
}

/**
 * The api's one way to insert a task: concurrent requests are grouped into one insertTasks statement
 * (createBatcher), which is what lets the api keep up with the database under load. A request whose
 * values Postgres refuses fails alone. Two statements in flight: the benchmark's api throughput was
 * best with one or two (larger batches, fewer round trips) and lower with four; two keep inserts going
 * while one statement waits on a lock.
 *
 * The wait for a slot is bounded so that a POST is answered within 12 s however Postgres holds it:
 * a short wait here, then the pool's wait for a connection (main.ts) and the statement timeout. The
 * queue holds about two seconds of the api's best throughput.
 */
export function createTaskInserter(db: Db): (insert: TaskInsert) => Promise<Inserted> {
  return createBatcher((inserts: TaskInsert[]) => insertTasks(db, inserts), {
    maxSize: 100,
    concurrency: 2,
    retryAlone: (err) => !isDbUnavailable(err),
    maxQueue: 5000,
    maxWaitMs: 2000,
  });
}

const taskColumns = [
  'id',
  'type',
  'payload',
  'status',
  'current_step',
  'progress',
  'result',
  'error',
  'attempts',
  'max_attempts',
  'run_at',
  'external_job_id',
  'owner',
  'request_hash',
  'correlation_id',
  'cancel_requested_at',
  'created_at',
  'updated_at',
  'started_at',
  'finished_at',
  'version',
] as const;

/** The task as `viewer` may see it: any owner's for an admin, else only the viewer's own. */
export function findTask(db: Db, viewer: Viewer, id: string) {
  return db
    .selectFrom('tasks')
    .select(taskColumns)
    .$if(!viewer.admin, (q) => q.where('owner', '=', viewer.owner))
    .where('id', '=', id)
    .executeTakeFirst();
}

export function findTaskByIdempotencyKey(db: Db, owner: string, key: string) {
  return db
    .selectFrom('tasks')
    .select(taskColumns)
    .where('owner', '=', owner)
    .where('idempotency_key', '=', key)
    .executeTakeFirst();
}

/** The timeline: each attempt, each retry asked for, and when each outbox message for the task was published. */
export async function findTimeline(db: Db, id: string) {
  const [attempts, messages, retries] = await Promise.all([
    db
      .selectFrom('task_attempts')
      .select(['attempt', 'external_job_id', 'started_at', 'finished_at', 'outcome', 'error'])
      .where('task_id', '=', id)
      .orderBy('attempt')
      .execute(),
    db
      .selectFrom('outbox')
      .select(['payload', 'created_at', 'available_at', 'published_at'])
      .where('task_id', '=', id)
      .orderBy('id')
      .execute(),
    db
      .selectFrom('task_retries')
      .select(['retry', 'requested_by', 'requested_at'])
      .where('task_id', '=', id)
      .orderBy('retry')
      .execute(),
  ]);
  return { attempts, messages, retries };
}

export interface ListFilter extends TaskFilter {
  /** Required here, so that no list leaves it out by mistake. */
  owner: string | null;
  limit: number;
  after?: { createdAt: string; id: string };
}

/**
 * Keyset pagination, newest first. The cursor carries created_at as Postgres text (microseconds; a JS
 * Date would round to milliseconds and skip or repeat rows) plus the id as a tie-breaker. One owner's
 * pages read tasks_owner_created, every owner's tasks_created (migration 0007).
 */
export function listTasks(db: Db, filter: ListFilter) {
  const conditions = filterConditions(filter);
  if (filter.after) {
    const { createdAt, id } = filter.after;
    conditions.push(sql<boolean>`(created_at, id) < (${createdAt}::timestamptz, ${id}::uuid)`);
  }
  return db
    .selectFrom('tasks')
    .select(taskColumns)
    .select(sql<string>`created_at::text`.as('cursor_created_at'))
    .where(allOf(conditions))
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(filter.limit)
    .execute();
}

/**
 * The watermark of a list stream: every transaction with an id below it has ended, so a read from it on
 * misses no commit (db/migrations/0005_task_versions.ts).
 */
export async function currentHorizon(db: Db): Promise<string> {
  const { rows } = await sql<{
    horizon: string;
  }>`SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS horizon`.execute(db);
  return (rows[0] as { horizon: string }).horizon;
}

/**
 * The tasks of these owners changed at or after `since`, with the watermark of the same snapshot for
 * the next read. Read through tasks_owner_changed: one index range per owner, as long as the changes
 * since the oldest watermark (a long transaction anywhere holds it back).
 */
export async function tasksChangedSince(db: Db, owners: string[], since: string) {
  const { rows } = await sql<Partial<TaskRow> & { horizon: string; changed_xid: string | null }>`
    WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS horizon)
    SELECT h.horizon, t.changed_xid::text AS changed_xid, ${sql.join(taskColumns.map((c) => sql.ref(`t.${c}`)))}
    FROM h LEFT JOIN tasks t ON t.owner = ANY(${owners}::text[]) AND t.changed_xid >= ${since}::xid8`.execute(db);
  const horizon = rows[0]?.horizon ?? since;
  const changed = rows.filter((r): r is TaskRow & { horizon: string; changed_xid: string } => r.id != null);
  return { horizon, changed };
}
