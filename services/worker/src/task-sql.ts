import { sql, type RawBuilder } from 'kysely';
import { errorJson, insertOutbox, outboxMessage, type Db, type TaskStatus } from '@taskbox/shared';

export interface LockedTask {
  id: string;
  type: string;
  payload: unknown;
  status: TaskStatus;
  attempts: number;
  max_attempts: number;
  lease_expired: boolean;
  correlation_id: string | null;
}

/** Locks the task row for the rest of the caller's transaction, so two deliveries decide one at a time. */
export async function lockTask(tx: Db, id: string): Promise<LockedTask | undefined> {
  const { rows } = await sql<LockedTask>`
    SELECT id, type, payload, status, attempts, max_attempts, correlation_id,
           coalesce(lease_until < now(), true) AS lease_expired
    FROM tasks WHERE id = ${id} FOR UPDATE`.execute(tx);
  return rows[0];
}

/**
 * The one statement that starts the next attempt of the task `guard` matches: the task becomes
 * processing with this delivery's external job id and a lease, and the attempt gets its row. Returns
 * the task as updated (its attempts is the new attempt), or no row when the guard did not match.
 */
async function startNextAttempt(db: Db, guard: RawBuilder<boolean>, externalJobId: string, leaseMs: number) {
  const { rows } = await sql<Omit<LockedTask, 'status' | 'lease_expired'>>`
    WITH started AS (
      UPDATE tasks
      SET status = 'processing', attempts = attempts + 1, external_job_id = ${externalJobId},
          lease_until = now() + ${leaseMs} * interval '1 millisecond', started_at = coalesce(started_at, now()),
          updated_at = now(), current_step = NULL, progress = NULL
      WHERE ${guard}
      RETURNING id, type, payload, attempts, max_attempts, correlation_id
    ), attempt AS (
      INSERT INTO task_attempts (task_id, attempt, external_job_id)
      SELECT id, attempts, ${externalJobId} FROM started
    )
    SELECT * FROM started`.execute(db);
  return rows[0];
}

/**
 * The common delivery in ONE statement, with no explicit transaction: a pending task whose message asks
 * for a later attempt starts it. The guard is decide()'s 'run' rule for a pending task, and Postgres
 * re-checks it under the row lock, so two deliveries of one message cannot both start. Any other state
 * returns undefined and the caller takes the locked path, which decides every case. One round trip
 * instead of five (BEGIN, lock, update, insert, COMMIT): the benchmark found the worker bound by round trips.
 */
export async function startPendingAttempt(
  db: Db,
  message: { taskId: string; type: string; attempt: number },
  externalJobId: string,
  leaseMs: number,
): Promise<{ task: LockedTask; attempt: number } | undefined> {
  const guard = sql<boolean>`id = ${message.taskId} AND type = ${message.type}
    AND status = 'pending' AND attempts < ${message.attempt}`;
  const started = await startNextAttempt(db, guard, externalJobId, leaseMs);
  if (!started) return undefined;
  const task: LockedTask = { ...started, status: 'pending', attempts: started.attempts - 1, lease_expired: true };
  return { task, attempt: started.attempts };
}

/**
 * Starts the next attempt of a task locked and decided in the caller's transaction. When it resumes a
 * dead run, that run's attempt row is closed as 'lost'.
 */
export async function startAttempt(tx: Db, task: LockedTask, externalJobId: string, leaseMs: number): Promise<number> {
  if (task.status === 'processing') await closeLostAttempt(tx, task.id, task.attempts);
  const started = await startNextAttempt(tx, sql<boolean>`id = ${task.id}`, externalJobId, leaseMs);
  if (!started) throw new Error(`task ${task.id} vanished while locked`);
  return started.attempts;
}

/** The error of an attempt whose run stopped (its worker died, or lost Postgres longer than its lease). */
const LOST_RUN = JSON.stringify({
  name: 'LostRun',
  message: 'the worker running this attempt stopped renewing its lease',
});

async function closeLostAttempt(tx: Db, taskId: string, attempt: number): Promise<void> {
  await tx
    .updateTable('task_attempts')
    .set({
      outcome: 'lost',
      finished_at: sql`now()`,
      error: LOST_RUN,
    })
    .where('task_id', '=', taskId)
    .where('attempt', '=', attempt)
    .where('finished_at', 'is', null)
    .execute();
}

/** Fails a task without running it (its payload or type is not runnable, or attempts ran out). */
export async function failTask(tx: Db, task: LockedTask, error: unknown): Promise<void> {
  if (task.status === 'processing') await closeLostAttempt(tx, task.id, task.attempts);
  await tx
    .updateTable('tasks')
    .set({
      status: 'failed',
      error: JSON.stringify(errorJson(error)),
      lease_until: null,
      finished_at: sql`now()`,
      updated_at: sql`now()`,
    })
    .where('id', '=', task.id)
    .execute();
}

export type AttemptOutcome =
  | { kind: 'succeeded'; result: unknown }
  | { kind: 'cancelled' }
  | { kind: 'failed'; error: unknown; retryInMs: number | null };

/**
 * Records how an attempt ended, in one transaction with its side effects: a retry is a new outbox
 * row with a later available_at, written with the failed attempt so neither exists without the other.
 * Guarded by (status = processing, attempts = attempt): when the run lost its lease and the task was
 * resumed elsewhere, nothing is written and null is returned; the newer attempt owns the task.
 * Otherwise returns the task's new status.
 */
export async function finishAttempt(
  db: Db,
  taskId: string,
  attempt: number,
  outcome: AttemptOutcome,
): Promise<TaskStatus | null> {
  if (outcome.kind !== 'failed' || outcome.retryInMs === null) {
    const next: TaskStatus = outcome.kind === 'failed' ? 'failed' : outcome.kind;
    return (await finishTerminal(db, taskId, attempt, next, outcome)) ? next : null;
  }
  const error = JSON.stringify(errorJson(outcome.error));
  const retryInMs = outcome.retryInMs;
  return db.transaction().execute(async (tx) => {
    // A cancel requested while this attempt ran wins over its retry: the task ends cancelled.
    const { rows } = await sql<{ type: string; status: TaskStatus; correlation_id: string | null }>`
      UPDATE tasks
      SET status = CASE WHEN cancel_requested_at IS NULL THEN 'pending' ELSE 'cancelled' END,
          finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END,
          result = NULL, error = ${error}::jsonb, lease_until = NULL, updated_at = now()
      WHERE id = ${taskId} AND status = 'processing' AND attempts = ${attempt}
      RETURNING type, status, correlation_id`.execute(tx);
    const updated = rows[0];
    if (!updated) return null;
    await tx
      .updateTable('task_attempts')
      .set({ outcome: 'failed', error, finished_at: sql`now()` })
      .where('task_id', '=', taskId)
      .where('attempt', '=', attempt)
      .execute();
    if (updated.status === 'pending') {
      const message = outboxMessage({ id: taskId, type: updated.type }, attempt + 1, {
        correlationId: updated.correlation_id,
      });
      await insertOutbox(tx, [message], retryInMs);
    }
    return updated.status;
  });
}

/**
 * A terminal outcome (no retry row to write) in ONE statement: the task and its attempt row change
 * together or not at all, under the same guard as finishAttempt. One round trip instead of four.
 */
async function finishTerminal(
  db: Db,
  taskId: string,
  attempt: number,
  next: TaskStatus,
  outcome: AttemptOutcome,
): Promise<boolean> {
  const result = outcome.kind === 'succeeded' ? JSON.stringify(outcome.result ?? null) : null;
  const error = outcome.kind === 'failed' ? JSON.stringify(errorJson(outcome.error)) : null;
  const { rows } = await sql<{ id: string }>`
    WITH finished AS (
      UPDATE tasks
      SET status = ${next}, result = ${result}::jsonb, error = ${error}::jsonb, lease_until = NULL,
          updated_at = now(), finished_at = now(),
          progress = CASE WHEN ${next} = 'succeeded' THEN 1 ELSE progress END
      WHERE id = ${taskId} AND status = 'processing' AND attempts = ${attempt}
      RETURNING id
    ), attempt AS (
      UPDATE task_attempts SET outcome = ${outcome.kind}, error = ${error}::jsonb, finished_at = now()
      WHERE task_id = (SELECT id FROM finished) AND attempt = ${attempt}
    )
    SELECT id FROM finished`.execute(db);
  return rows.length === 1;
}

/** Lets a run that is being abandoned (shutdown) be resumed at once by the redelivery. */
export async function releaseLease(db: Db, taskId: string, attempt: number): Promise<void> {
  await db
    .updateTable('tasks')
    .set({ lease_until: sql`now()` })
    .where('id', '=', taskId)
    .where('status', '=', 'processing')
    .where('attempts', '=', attempt)
    .execute();
}

/**
 * Extends the leases of live runs. Returns the runs it renewed (a run missing from the answer no
 * longer owns its task) and whether each one's cancellation was requested.
 */
export async function renewLeases(db: Db, runs: { taskId: string; attempt: number }[], leaseMs: number) {
  if (runs.length === 0) return [];
  const { rows } = await sql<{ id: string; attempt: number; cancel_requested: boolean }>`
    UPDATE tasks t SET lease_until = now() + ${leaseMs} * interval '1 millisecond'
    FROM unnest(${runs.map((r) => r.taskId)}::uuid[], ${runs.map((r) => r.attempt)}::int[]) AS r(id, attempt)
    WHERE t.id = r.id AND t.attempts = r.attempt AND t.status = 'processing'
    RETURNING t.id, t.attempts AS attempt, t.cancel_requested_at IS NOT NULL AS cancel_requested`.execute(db);
  return rows;
}

export async function setStep(db: Db, taskId: string, attempt: number, step: string | null, progress?: number) {
  await db
    .updateTable('tasks')
    .set({
      ...(step !== null ? { current_step: step } : {}),
      ...(progress !== undefined ? { progress } : {}),
      updated_at: sql`now()`,
    })
    .where('id', '=', taskId)
    .where('status', '=', 'processing')
    .where('attempts', '=', attempt)
    .execute();
}

/**
 * Resumes runs whose lease expired (their worker died or lost Postgres): the attempt is closed as
 * 'lost' and the task goes back to pending with an outbox row for the next attempt, or to failed
 * when no attempts are left. SKIP LOCKED lets every worker run this without stepping on another.
 */
export async function sweepExpiredLeases(
  db: Db,
  limit: number,
): Promise<{ resumed: number; failed: number; taskIds: string[] }> {
  return db.transaction().execute(async (tx) => {
    const { rows } = await sql<{
      id: string;
      type: string;
      status: TaskStatus;
      attempts: number;
      correlation_id: string | null;
    }>`
      WITH expired AS (
        SELECT id FROM tasks
        WHERE status = 'processing' AND lease_until < now()
        ORDER BY lease_until LIMIT ${limit}
        FOR UPDATE SKIP LOCKED
      ), lost AS (
        UPDATE task_attempts a
        SET outcome = 'lost', finished_at = now(),
            error = ${LOST_RUN}::jsonb
        FROM tasks t JOIN expired e ON e.id = t.id
        WHERE a.task_id = t.id AND a.attempt = t.attempts AND a.finished_at IS NULL
      )
      UPDATE tasks t
      SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled'
                        WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'pending' END,
          error = ${LOST_RUN}::jsonb,
          finished_at = CASE WHEN t.cancel_requested_at IS NULL AND t.attempts < t.max_attempts THEN NULL ELSE now() END,
          lease_until = NULL, updated_at = now()
      FROM expired e WHERE t.id = e.id
      RETURNING t.id, t.type, t.status, t.attempts, t.correlation_id`.execute(tx);
    const resumed = rows.filter((r) => r.status === 'pending');
    await insertOutbox(
      tx,
      resumed.map((r) => outboxMessage(r, r.attempts + 1, { correlationId: r.correlation_id })),
    );
    const failed = rows.filter((r) => r.status === 'failed').length;
    return { resumed: resumed.length, failed, taskIds: rows.map((r) => r.id) };
  });
}
