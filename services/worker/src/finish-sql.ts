import { sql } from 'kysely';
import {
  errorJson,
  insertOutbox,
  nextAttemptMessage,
  prepared,
  TASK_CHANGED_SET,
  type Db,
  type TaskRowForMessage,
  type TaskStatus,
} from '@taskbox/shared';

// How an attempt's end is written: the finish statements (the start's are in task-sql.ts).

export type AttemptOutcome =
  | { kind: 'succeeded'; resultJson: string }
  | { kind: 'cancelled' }
  | { kind: 'failed'; error: unknown; retryInMs: number | null };

/**
 * Records a failed attempt that will be retried, in one transaction with its side effect: the retry is
 * a new outbox row with a later available_at, written with the failed attempt so neither exists
 * without the other. Guarded by (status = processing, attempts = attempt): when the run lost its lease
 * and the task was resumed elsewhere, nothing is written and null is returned; the newer attempt owns
 * the task. Otherwise returns the task's new status: pending, or cancelled when a cancel was
 * requested while the attempt ran (it wins over the retry).
 */
export async function finishWithRetry(
  db: Db,
  taskId: string,
  attempt: number,
  failure: unknown,
  retryInMs: number,
): Promise<TaskStatus | null> {
  const error = JSON.stringify(errorJson(failure));
  return db.transaction().execute(async (tx) => {
    const { rows } = await sql<TaskRowForMessage & { status: TaskStatus }>`
      UPDATE tasks
      SET status = CASE WHEN cancel_requested_at IS NULL THEN 'pending' ELSE 'cancelled' END,
          finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END,
          result = NULL, error = ${error}::jsonb, lease_until = NULL, updated_at = now(), ${TASK_CHANGED_SET}
      WHERE id = ${taskId} AND status = 'processing' AND attempts = ${attempt}
      RETURNING id, type, attempts, status, correlation_id, traceparent`.execute(tx);
    const updated = rows[0];
    if (!updated) return null;
    await tx
      .updateTable('task_attempts')
      .set({ outcome: 'failed', error, finished_at: sql`now()` })
      .where('task_id', '=', taskId)
      .where('attempt', '=', attempt)
      .execute();
    if (updated.status === 'pending') await insertOutbox(tx, [nextAttemptMessage(updated)], retryInMs);
    return updated.status;
  });
}

/** How an attempt ended, as its row says: null while it runs, 'lost' when the sweeper closed it. */
export async function attemptOutcome(db: Db, taskId: string, attempt: number): Promise<string | null | undefined> {
  const row = await db
    .selectFrom('task_attempts')
    .select('outcome')
    .where('task_id', '=', taskId)
    .where('attempt', '=', attempt)
    .executeTakeFirst();
  return row?.outcome;
}

/** An attempt that ends its task: succeeded, cancelled, or failed with no retry left. */
export interface TerminalFinish {
  taskId: string;
  attempt: number;
  outcome: AttemptOutcome;
}

/**
 * Terminal outcomes (no retry row to write) in ONE statement: each task and its attempt row change
 * together or not at all, under the same guard as finishWithRetry. Answers, per finish, the task's new
 * status, or null when nothing was written. One round trip for a whole batch instead of four per attempt.
 * A last attempt that failed after a cancel was requested ends the task cancelled, as a retry would
 * (finishWithRetry): the cancel was accepted, and its run may have failed of it (a timeout that fired
 * before the lease tick told the run of the cancel). The attempt itself stays failed.
 *
 * `locked` locks each task by primary key, in id order, under the guard: the fixed lock order keeps
 * two batches from deadlocking.
 */
export async function finishTerminals(db: Db, finishes: TerminalFinish[]): Promise<(TaskStatus | null)[]> {
  const { rows } = await sql<{ id: string; attempts: number; task_status: TaskStatus }>`${prepared('worker_finish')}
    WITH locked AS (
      SELECT t.id, i.status, i.result, i.error
      FROM (
        SELECT * FROM unnest(${finishes.map((f) => f.taskId)}::uuid[], ${finishes.map((f) => f.attempt)}::int[],
                             ${finishes.map((f) => f.outcome.kind)}::text[], ${finishes.map(resultText)}::text[],
                             ${finishes.map(errorText)}::text[]) AS u(task_id, attempt, status, result, error)
        ORDER BY task_id
      ) i
      CROSS JOIN LATERAL (
        SELECT id FROM tasks WHERE id = i.task_id AND status = 'processing' AND attempts = i.attempt FOR UPDATE
      ) t
    ), finished AS (
      UPDATE tasks t
      SET status = CASE WHEN l.status = 'failed' AND t.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE l.status END,
          result = l.result::jsonb, error = l.error::jsonb, lease_until = NULL,
          updated_at = now(), finished_at = now(),
          progress = CASE WHEN l.status = 'succeeded' THEN 1 ELSE t.progress END, ${TASK_CHANGED_SET}
      FROM locked l
      WHERE t.id = l.id
      RETURNING t.id, t.attempts, t.status AS task_status, l.status, l.error
    ), attempt AS (
      UPDATE task_attempts a SET outcome = f.status, error = f.error::jsonb, finished_at = now()
      FROM finished f
      WHERE a.task_id = f.id AND a.attempt = f.attempts
    )
    SELECT id, attempts, task_status FROM finished`.execute(db);
  const written = new Map(rows.map((r) => [`${r.id}:${r.attempts}`, r.task_status]));
  return finishes.map((f) => written.get(`${f.taskId}:${f.attempt}`) ?? null);
}

/** As JSON text, cast in SQL, so that a JSON null result stays JSON null (not SQL NULL). */
const resultText = ({ outcome }: TerminalFinish) => (outcome.kind === 'succeeded' ? outcome.resultJson : null);

/** The bytes of a finish's result (an error is cut to 8 192 characters). */
export const resultBytes = (finish: TerminalFinish): number => Buffer.byteLength(resultText(finish) ?? '');

const errorText = ({ outcome }: TerminalFinish) =>
  outcome.kind === 'failed' ? JSON.stringify(errorJson(outcome.error)) : null;
