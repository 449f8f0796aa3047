import { sql } from 'kysely';
import {
  insertOutbox,
  nextAttemptMessage,
  TASK_CHANGED_SET,
  type Db,
  type TaskRowForMessage,
  type TaskStatus,
} from '@taskbox/shared';

/** The error of an attempt whose run stopped (its worker died, or lost Postgres longer than its lease). */
export const LOST_RUN = JSON.stringify({
  name: 'LostRun',
  message: 'the worker running this attempt stopped renewing its lease',
});

/**
 * Closes the current attempts of runs that stopped as 'lost', in the caller's transaction, which holds
 * the tasks' row locks. The one place a run is declared lost: when a delivery resumes or fails a task
 * whose run died (startAttempt, failTask, cancelLostRun), when the sweeper does (sweepExpiredLeases),
 * and, with INTERRUPTED_RUN as the error, when a shutdown stopped it (interruptAttempt).
 */
export async function closeLostAttempts(
  tx: Db,
  runs: { taskId: string; attempt: number }[],
  error = LOST_RUN,
): Promise<void> {
  if (runs.length === 0) return;
  await sql`
    UPDATE task_attempts a SET outcome = 'lost', finished_at = now(), error = ${error}::jsonb
    FROM unnest(${runs.map((r) => r.taskId)}::uuid[], ${runs.map((r) => r.attempt)}::int[]) AS r(task_id, attempt)
    WHERE a.task_id = r.task_id AND a.attempt = r.attempt AND a.finished_at IS NULL`.execute(tx);
}

/** The error of an attempt a shutdown stopped: not counted against maxAttempts (interruptAttempt). */
export const INTERRUPTED_RUN = JSON.stringify({
  name: 'Interrupted',
  message: 'the worker shut down while the attempt ran; it is not counted against maxAttempts',
});

/**
 * Ends the attempt of a run that a shutdown stopped, in one transaction: the attempt is closed as 'lost'
 * with INTERRUPTED_RUN, the task's budget grows by one (max_attempts + 1, counted in `interrupted`,
 * which a retry takes off again: retry-sql.ts), and the task is pending with an outbox row for its next
 * attempt, as after a failure but at once. So a deploy costs no attempt and never fails a task on its last one; attempt
 * numbers still only grow, so whatever the stopped run still sends is fenced off; and the next run does
 * not depend on the old message coming back. Only while the run still owns the task with no cancel
 * requested; false otherwise (a cancel is then the redelivery's or the sweeper's to end).
 */
export async function interruptAttempt(db: Db, taskId: string, attempt: number): Promise<boolean> {
  return db.transaction().execute(async (tx) => {
    const { rows } = await sql<TaskRowForMessage>`
      UPDATE tasks
      SET status = 'pending', max_attempts = max_attempts + 1, interrupted = interrupted + 1, lease_until = NULL,
          updated_at = now(), ${TASK_CHANGED_SET}
      WHERE id = ${taskId} AND status = 'processing' AND attempts = ${attempt} AND cancel_requested_at IS NULL
      RETURNING id, type, attempts, correlation_id, traceparent`.execute(tx);
    const task = rows[0];
    if (!task) return false;
    await closeLostAttempts(tx, [{ taskId, attempt }], INTERRUPTED_RUN);
    await insertOutbox(tx, [nextAttemptMessage(task)]);
    return true;
  });
}

/**
 * Lets a run that stopped be resumed at once by the redelivery: one whose outcome could not be
 * recorded, or one a shutdown stopped that interruptAttempt could not record (a cancel requested,
 * Postgres away).
 */
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
 * longer owns its task) and whether each one's cancellation was requested. The rows are locked in id
 * order, as every batch of the worker locks them (finishTerminals): in the order the runs started, a
 * renewal and a finish of the same two tasks could each wait for the other, a deadlock.
 */
export async function renewLeases(db: Db, runs: { taskId: string; attempt: number }[], leaseMs: number) {
  if (runs.length === 0) return [];
  const { rows } = await sql<{ id: string; attempt: number; cancel_requested: boolean }>`
    WITH locked AS (
      SELECT t.id
      FROM (
        SELECT * FROM unnest(${runs.map((r) => r.taskId)}::uuid[], ${runs.map((r) => r.attempt)}::int[]) AS u(id, attempt)
        ORDER BY id
      ) r
      CROSS JOIN LATERAL (
        SELECT id FROM tasks WHERE id = r.id AND attempts = r.attempt AND status = 'processing' FOR UPDATE
      ) t
    )
    UPDATE tasks t SET lease_until = now() + ${leaseMs} * interval '1 millisecond'
    FROM locked l WHERE t.id = l.id
    RETURNING t.id, t.attempts AS attempt, t.cancel_requested_at IS NOT NULL AS cancel_requested`.execute(db);
  return rows;
}

/**
 * Extends the leases of runs whose handler returned and whose outcome is being written, so that the
 * sweeper does not take such a run for a dead one while its write is retried. A row locked (by that
 * very write) is skipped, never waited for: a renewal waiting on it would come back too late for the
 * live runs beside it, and fence them all. A lease released or already run out is left to the sweeper.
 */
export async function holdLeases(db: Db, runs: { taskId: string; attempt: number }[], leaseMs: number): Promise<void> {
  if (runs.length === 0) return;
  await sql`
    WITH held AS (
      SELECT t.id
      FROM unnest(${runs.map((r) => r.taskId)}::uuid[], ${runs.map((r) => r.attempt)}::int[]) AS r(id, attempt)
      CROSS JOIN LATERAL (
        SELECT id FROM tasks
        WHERE id = r.id AND attempts = r.attempt AND status = 'processing' AND lease_until > now()
        FOR UPDATE SKIP LOCKED
      ) t
    )
    UPDATE tasks t SET lease_until = now() + ${leaseMs} * interval '1 millisecond'
    FROM held h WHERE t.id = h.id`.execute(db);
}

/** A task whose run the sweeper found lost: its state now, and the message of its next attempt when resumed. */
export interface SweptTask {
  id: string;
  status: TaskStatus;
  /** The attempt that was lost. */
  attempt: number;
  correlationId: string | null;
  messageId?: string;
}

/**
 * Resumes runs whose lease expired (their worker died or lost Postgres): the attempt is closed as
 * 'lost' and the task goes back to pending with an outbox row for the next attempt, or to failed
 * when no attempts are left (cancelled when a cancel was asked). SKIP LOCKED lets every worker run this
 * without stepping on another.
 */
export async function sweepExpiredLeases(db: Db, limit: number): Promise<SweptTask[]> {
  return db.transaction().execute(async (tx) => {
    const { rows: expired } = await sql<{ id: string; attempts: number }>`
      SELECT id, attempts FROM tasks
      WHERE status = 'processing' AND lease_until < now()
      ORDER BY lease_until LIMIT ${limit}
      FOR UPDATE SKIP LOCKED`.execute(tx);
    if (expired.length === 0) return [];
    await closeLostAttempts(
      tx,
      expired.map((e) => ({ taskId: e.id, attempt: e.attempts })),
    );
    const { rows } = await sql<TaskRowForMessage & { status: TaskStatus }>`
      UPDATE tasks t
      SET status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled'
                        WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'pending' END,
          error = ${LOST_RUN}::jsonb,
          finished_at = CASE WHEN t.cancel_requested_at IS NULL AND t.attempts < t.max_attempts THEN NULL ELSE now() END,
          lease_until = NULL, updated_at = now(), ${TASK_CHANGED_SET}
      WHERE t.id = ANY(${expired.map((e) => e.id)}::uuid[])
      RETURNING t.id, t.type, t.status, t.attempts, t.correlation_id, t.traceparent`.execute(tx);
    const messages = new Map(rows.filter((r) => r.status === 'pending').map((r) => [r.id, nextAttemptMessage(r)]));
    await insertOutbox(tx, [...messages.values()]);
    return rows.map((r) => ({
      id: r.id,
      status: r.status,
      attempt: r.attempts,
      correlationId: r.correlation_id,
      messageId: messages.get(r.id)?.message_id,
    }));
  });
}
