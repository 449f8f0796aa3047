import { sql } from 'kysely';
import {
  errorJson,
  prepared,
  TASK_CHANGED_SET,
  taskChanged,
  type Db,
  type PoolOptions,
  type TaskStatus,
} from '@taskbox/shared';
import { closeLostAttempts, LOST_RUN } from './lease-sql';

/**
 * The worker's session settings, for each new connection (createPool's onConnect).
 *
 * Generic plans: the statements here and in finish-sql.ts that run for every task are prepared (prepared()), but Postgres
 * would still plan them again for every batch, because a plan for the exact batch size looks cheaper;
 * generic plans halve Postgres's CPU for a start and a finish (bench/README.md). The setting covers
 * every statement of the worker, so each must plan the same without its values: all find their rows by
 * key or through the lease index. A statement whose plan depends on a value, such as the relay's claim
 * with its LIMIT (a full scan when planned without it), does not belong here.
 *
 * No sequential scans, hash or merge joins: a connection keeps its generic plans (the foreign-key
 * checks' too) until the tables' statistics change, and a worker that starts on a new or quiet
 * database plans while `tasks` is a page or two, where reading all of it looks cheapest. Without
 * them, every row of a batch is found by its key, whatever the statistics said when it was planned;
 * with the start and finish planned on an almost empty table, Postgres spent more CPU per task than
 * the rest of taskbox together in the benchmark (bench/README.md). The one statement that should read
 * the whole table, countTasksByStatus, turns sequential scans back on for itself.
 *
 * No JIT: a plan that must scan anyway (the task NOTIFY's read of task_watchers) carries the disabled
 * scan's huge cost estimate, far past jit_above_cost, and Postgres compiled it on every run: a third of
 * the machine's CPU in the benchmark. The worker's statements are all short; none gains from JIT.
 */
export const setWorkerSession: NonNullable<PoolOptions['onConnect']> = async (client) => {
  await client.query(
    'SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET enable_hashjoin = off; ' +
      'SET enable_mergejoin = off; SET jit = off',
  );
};

export interface LockedTask {
  id: string;
  type: string;
  payload: unknown;
  status: TaskStatus;
  attempts: number;
  max_attempts: number;
  /** Null on rows from before migration 0009: the type's default applies. */
  timeout_ms: number | null;
  lease_expired: boolean;
  /** A cancel was asked for while the task was processing (the api's POST /tasks/{id}/cancel). */
  cancel_requested: boolean;
  correlation_id: string | null;
  /** The delivery that started its current attempt. */
  external_job_id: string | null;
}

/** Locks the task row for the rest of the caller's transaction, so two deliveries decide one at a time. */
export async function lockTask(tx: Db, id: string): Promise<LockedTask | undefined> {
  const { rows } = await sql<LockedTask>`
    SELECT id, type, payload, status, attempts, max_attempts, timeout_ms, correlation_id, external_job_id,
           coalesce(lease_until < now(), true) AS lease_expired, cancel_requested_at IS NOT NULL AS cancel_requested
    FROM tasks WHERE id = ${id} FOR UPDATE`.execute(tx);
  return rows[0];
}

export interface AttemptStart {
  taskId: string;
  type: string;
  attempt: number;
  externalJobId: string;
}

type StartedRow = Omit<LockedTask, 'status' | 'lease_expired' | 'cancel_requested'> & { external_job_id: string };

/**
 * The one statement that starts attempts, for each start whose task the guard matches (startGuards):
 * the task becomes processing with the delivery's external job id and a lease, and the attempt gets
 * its row. Answers the tasks as updated (attempts is the new attempt). When two starts name one task
 * only one wins; the answer carries the winner's job id.
 *
 * The batch arrives as typed arrays through unnest, here and in finishTerminals, not as JSON: for
 * unnest the planner assumes 10 rows under the worker's generic plans (and reads the arrays when it
 * has them), but 100 rows for jsonb_to_recordset, and for 100 rows it joined by scanning whole tables,
 * a cost that grew with every task ever run (bench/README.md, "planned like a scan").
 */
async function startNextAttempts(db: Db, starts: AttemptStart[], guard: keyof typeof startGuards, leaseMs: number) {
  const { rows } = await sql<StartedRow>`${prepared(`worker_start_${guard}`)}
    WITH locked AS (
      SELECT t.id, i.external_job_id
      FROM (
        SELECT * FROM unnest(${starts.map((s) => s.taskId)}::uuid[], ${starts.map((s) => s.type)}::text[],
                             ${starts.map((s) => s.attempt)}::int[], ${starts.map((s) => s.externalJobId)}::text[])
          AS u(task_id, type, attempt, external_job_id)
        ORDER BY task_id
      ) i
      CROSS JOIN LATERAL (
        SELECT id, type, status, attempts FROM tasks WHERE id = i.task_id LIMIT 1 FOR UPDATE
      ) t
      WHERE ${startGuards[guard]}
    ), started AS (
      UPDATE tasks t
      SET status = 'processing', attempts = t.attempts + 1, external_job_id = l.external_job_id,
          lease_until = now() + ${leaseMs} * interval '1 millisecond', started_at = coalesce(t.started_at, now()),
          updated_at = now(), current_step = NULL, progress = NULL, ${TASK_CHANGED_SET}
      FROM locked l
      WHERE t.id = l.id
      RETURNING t.id, t.type, t.payload, t.attempts, t.max_attempts, t.timeout_ms, t.correlation_id, t.external_job_id
    ), attempt AS (
      INSERT INTO task_attempts (task_id, attempt, external_job_id)
      SELECT id, attempts, external_job_id FROM started
    )
    SELECT * FROM started`.execute(db);
  return rows;
}

/**
 * Which starts startNextAttempts writes; each guard sees the task, locked, as `t` and the start as `i`.
 * `pending` is decide()'s 'run' rule for a pending task; `locked` is for a start already decided under
 * the task's row lock.
 *
 * Each task is locked by its key first, in id order as finishTerminals does (the LIMIT keeps the guard
 * out of that lookup), then the guard is checked on the locked row. With the guard inside, Postgres
 * could read the task through `tasks_pending_due`, every pending task and each dead entry since the last
 * vacuum, instead of one row.
 */
const startGuards = {
  pending: sql<boolean>`t.type = i.type AND t.status = 'pending' AND t.attempts < i.attempt`,
  locked: sql<boolean>`true`,
};

/**
 * The common deliveries in ONE statement, with no explicit transaction: each pending task whose message
 * asks for a later attempt starts it. The guard is decide()'s 'run' rule for a pending task, and
 * Postgres re-checks it under the row lock, so two deliveries of one message cannot both start. Any
 * other state answers undefined for that delivery, and the caller takes the locked path, which decides
 * every case. One round trip for a whole batch instead of five per delivery (BEGIN, lock, update,
 * insert, COMMIT): the benchmark found the worker bound by round trips.
 */
export async function startPendingAttempts(
  db: Db,
  starts: AttemptStart[],
  leaseMs: number,
): Promise<({ task: LockedTask; attempt: number } | undefined)[]> {
  const rows = await startNextAttempts(db, starts, 'pending', leaseMs);
  const byJobId = new Map(rows.map((row) => [row.external_job_id, row]));
  return starts.map((start) => {
    const row = byJobId.get(start.externalJobId);
    if (!row) return undefined;
    const task: LockedTask = {
      id: row.id,
      type: row.type,
      payload: row.payload,
      status: 'pending',
      attempts: row.attempts - 1,
      max_attempts: row.max_attempts,
      timeout_ms: row.timeout_ms,
      lease_expired: true,
      // The start's guard took a pending task, and a cancel ends a pending task at once.
      cancel_requested: false,
      correlation_id: row.correlation_id,
      external_job_id: row.external_job_id,
    };
    return { task, attempt: row.attempts };
  });
}

/**
 * Gives a start of this delivery whose answer was lost (decide's 'resume') a fresh lease, in the
 * transaction that locked it, so the run's fence counts from a time before that lease began.
 */
export async function renewOwnStart(tx: Db, taskId: string, leaseMs: number): Promise<void> {
  await sql`UPDATE tasks SET lease_until = now() + ${leaseMs} * interval '1 millisecond' WHERE id = ${taskId}`.execute(
    tx,
  );
}

/**
 * Starts the next attempt of a task locked and decided in the caller's transaction. When it resumes a
 * dead run, that run's attempt row is closed as 'lost'.
 */
export async function startAttempt(tx: Db, task: LockedTask, externalJobId: string, leaseMs: number): Promise<number> {
  if (task.status === 'processing') await closeLostAttempts(tx, [{ taskId: task.id, attempt: task.attempts }]);
  const start = { taskId: task.id, type: task.type, attempt: task.attempts + 1, externalJobId };
  const [started] = await startNextAttempts(tx, [start], 'locked', leaseMs);
  if (!started) throw new Error(`task ${task.id} vanished while locked`);
  return started.attempts;
}

/** Fails a task without running it (its payload or type is not runnable, or attempts ran out). */
export function failTask(tx: Db, task: LockedTask, error: unknown): Promise<void> {
  return endWithoutRun(tx, task, 'failed', JSON.stringify(errorJson(error)));
}

/** Ends cancelled a task whose run stopped after a cancel was requested, as the sweeper does. */
export function cancelLostRun(tx: Db, task: LockedTask): Promise<void> {
  return endWithoutRun(tx, task, 'cancelled', LOST_RUN);
}

async function endWithoutRun(tx: Db, task: LockedTask, status: 'failed' | 'cancelled', error: string): Promise<void> {
  if (task.status === 'processing') await closeLostAttempts(tx, [{ taskId: task.id, attempt: task.attempts }]);
  await tx
    .updateTable('tasks')
    .set({
      status,
      error,
      lease_until: null,
      finished_at: sql`now()`,
      updated_at: sql`now()`,
      ...taskChanged,
    })
    .where('id', '=', task.id)
    .execute();
}

export async function setStep(db: Db, taskId: string, attempt: number, step: string | null, progress?: number) {
  await db
    .updateTable('tasks')
    .set({
      ...(step !== null ? { current_step: step } : {}),
      ...(progress !== undefined ? { progress } : {}),
      updated_at: sql`now()`,
      ...taskChanged,
    })
    .where('id', '=', taskId)
    .where('status', '=', 'processing')
    .where('attempts', '=', attempt)
    .execute();
}

/** How many tasks are in each status (statuses with none are absent): tasks_by_status on /metrics. */
export async function countTasksByStatus(db: Db): Promise<Map<TaskStatus, number>> {
  const rows = await db.transaction().execute(async (tx) => {
    // The whole table: the worker's session turns sequential scans off (setWorkerSession).
    await sql`SET LOCAL enable_seqscan = on`.execute(tx);
    return tx
      .selectFrom('tasks')
      .select(['status', tx.fn.countAll<string>().as('n')])
      .groupBy('status')
      .execute();
  });
  return new Map(rows.map((r) => [r.status, Number(r.n)]));
}
