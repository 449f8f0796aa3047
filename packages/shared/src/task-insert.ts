import { createHash } from 'node:crypto';
import { sql, type RawBuilder, type Selectable } from 'kysely';
import { prepared, type Db, type TasksTable } from './db';
import { OUTBOX_CHANNEL, outboxInsert, outboxMessage, type MessageContext } from './outbox';

/**
 * When a new task is due: at a time (runAt), after a delay (delayMs, counted by Postgres from the
 * insert), or null for as soon as possible.
 */
export type TaskSchedule = { runAt: string } | { delayMs: number } | null;

/** A task as the api and enqueueTask write it: type, payload and options already validated. */
export interface NewTask {
  id: string;
  type: string;
  payload: unknown;
  maxAttempts: number;
  timeoutMs: number;
  schedule: TaskSchedule;
  owner: string;
  idempotencyKey: string | null;
  /** requestHash() of the request, when it carries an idempotency key. */
  requestHash: string | null;
}

export interface TaskInsert {
  task: NewTask;
  context: MessageContext;
}

/** The columns a client sees, read by the api's queries and returned by the insert. */
export const taskColumns = [
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
  'timeout_ms',
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

export type TaskRow = Pick<Selectable<TasksTable>, (typeof taskColumns)[number]>;

/** Per insert, in order: the row and its first message, or undefined when the owner's key was used before. */
export type Inserted = { task: TaskRow; messageId: string } | undefined;

/**
 * JSON with object keys sorted at every level, so two bodies that differ only in key order (which
 * no JSON consumer may rely on) are the same request to the idempotency check. Callers pass values
 * whose depth is already bounded (the api's findJsonIssue).
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return v;
    const entries = Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return Object.fromEntries(entries);
  });
}

/**
 * What an Idempotency-Key stands for: a replay with the same key and another request is refused. The
 * options added later (a time limit, a schedule) count only when the request names them, so hashes from
 * before they existed still match.
 */
export function requestHash(request: {
  type: string;
  payload: unknown;
  maxAttempts: number;
  timeoutMs?: number | undefined;
  schedule?: TaskSchedule;
}): string {
  const { type, payload, maxAttempts, timeoutMs, schedule } = request;
  const options = { ...(timeoutMs === undefined ? {} : { timeoutMs }), ...(schedule ? { schedule } : {}) };
  const parts =
    Object.keys(options).length === 0 ? [type, payload, maxAttempts] : [type, payload, maxAttempts, options];
  return createHash('sha256').update(canonicalJson(parts)).digest('hex');
}

/**
 * THE task insert, for the api (a batch of requests) and enqueueTask (one task in the caller's
 * transaction): the statement, and how to read its rows back into one answer per insert.
 *
 * ONE statement inserts the tasks and the outbox rows that dispatch their first attempts: a
 * data-modifying CTE is atomic on its own, so there is no window where a task exists without its outbox
 * row or the reverse, and it costs one round trip instead of BEGIN/INSERT/INSERT/COMMIT. It returns the
 * whole rows, which saves a SELECT after it. An owner's idempotency key used before inserts nothing.
 * A scheduled task's outbox row is due at its run_at (the relay's claim skips it until then); a delay
 * counts from the statement's now(), and a runAt already past is due at once.
 *
 * The statement also wakes the relay: its pg_notify is delivered when it commits. A NOTIFY inside a
 * transaction holds a cluster-wide lock from pre-commit until the commit is flushed, which serializes
 * notifying commits (notify.ts), but here it is one NOTIFY per shared statement, and an api process
 * has at most two in flight: group commit already coalesces the wake-ups, and a NOTIFY after the
 * commit would cost a second round trip per statement (the api ran 17 % more POST/s with it inside;
 * bench/README.md). The price: a NOTIFY that fails fails the insert. That happens only when Postgres's
 * notification queue is full (a listening session stuck in one transaction for hours): nothing is
 * written, and Postgres logs a warning from half full on.
 */
export function buildTaskInsert(inserts: TaskInsert[]): {
  statement: RawBuilder<TaskRow>;
  answer(rows: TaskRow[]): Inserted[];
} {
  const input = inserts.map(({ task, context }) => {
    const message = outboxMessage(task, 1, context);
    return {
      id: task.id,
      type: task.type,
      // As JSON text, cast in SQL: jsonb_to_recordset would turn a JSON null payload into SQL NULL.
      payload: JSON.stringify(task.payload),
      max_attempts: task.maxAttempts,
      timeout_ms: task.timeoutMs,
      run_at: task.schedule && 'runAt' in task.schedule ? task.schedule.runAt : null,
      delay_ms: task.schedule && 'delayMs' in task.schedule ? task.schedule.delayMs : null,
      owner: task.owner,
      idempotency_key: task.idempotencyKey,
      request_hash: task.requestHash,
      correlation_id: context.correlationId,
      traceparent: context.traceparent ?? null,
      message_id: message.message_id,
      message_payload: message.payload,
      message_headers: message.headers,
    };
  });
  return {
    statement: insertTasksStatement(JSON.stringify(input)),
    answer(rows) {
      const byId = new Map(rows.map((row) => [row.id, row]));
      return input.map((i) => {
        const task = byId.get(i.id);
        return task && { task, messageId: i.message_id };
      });
    },
  };
}

/** buildTaskInsert's statement, run through a Kysely executor (a pool's Db or a transaction). */
export async function insertTasks(db: Db, inserts: TaskInsert[]): Promise<Inserted[]> {
  const { statement, answer } = buildTaskInsert(inserts);
  const { rows } = await statement.execute(db);
  return answer(rows);
}

/**
 * The statement itself, for `input`: a JSON array of rows as buildTaskInsert makes them. Exported for
 * the benchmark, which runs this very statement under pgbench as the api's ceiling. Prepared
 * (prepared()): each connection parses and plans it once; its plan does not depend on the parameters,
 * so Postgres keeps the generic one.
 */
export function insertTasksStatement(input: string): RawBuilder<TaskRow> {
  return sql<TaskRow>`${prepared('api_insert_tasks')}
    WITH input AS (
      SELECT * FROM jsonb_to_recordset(${input}::jsonb) AS i(
        id uuid, type text, payload text, max_attempts int, timeout_ms int, run_at timestamptz, delay_ms float8,
        owner text, idempotency_key text, request_hash text, correlation_id text, traceparent text, message_id uuid,
        message_payload text, message_headers text)
    ), inserted AS (
      INSERT INTO tasks (id, type, payload, max_attempts, timeout_ms, run_at, owner, idempotency_key, request_hash,
                         correlation_id, traceparent)
      SELECT id, type, payload::jsonb, max_attempts, timeout_ms,
             coalesce(run_at, now() + delay_ms * interval '1 millisecond'), owner, idempotency_key, request_hash,
             correlation_id, traceparent
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
