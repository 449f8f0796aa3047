import { sql, type RawBuilder } from 'kysely';
import {
  insertOutbox,
  outboxMessage,
  wakeRelays,
  TASK_CHANGED_SET,
  type Db,
  type MessageContext,
  type TaskStatus,
} from '@taskbox/shared';
import type { Viewer } from './viewer';

/** What a retry or a cancel needs of a task it has locked. */
export interface LockedTask {
  id: string;
  type: string;
  status: TaskStatus;
  attempts: number;
  owner: string;
  correlation_id: string | null;
}

/** The statuses a retry applies to: the task ended without succeeding. */
export const retryableStatuses: readonly TaskStatus[] = ['failed', 'cancelled'];

export type RetryOutcome =
  | { kind: 'not found' }
  | { kind: 'replayed'; owner: string }
  | { kind: 'refused'; status: TaskStatus }
  | { kind: 'retried'; owner: string; attempt: number; messageId?: string; correlationId: string | null };

/**
 * Puts tasks that the caller's transaction has locked and found failed or cancelled back to pending,
 * each with a new outbox row for its next attempt, and records each retry (task_retries). Attempts go
 * on counting; the task gets a fresh budget of attempts: max_attempts becomes attempts plus the budget
 * it had, which is its max_attempts less the attempts it had at its previous retry (none: its
 * maxAttempts at creation), less the attempts a shutdown interrupted since (`interrupted`: each raised
 * max_attempts by one, interruptAttempt in the worker). The error of the last attempt stays until the
 * next outcome, as it does between the worker's own retries. Answers each task's new message id.
 */
export async function retryLocked(
  tx: Db,
  tasks: LockedTask[],
  requestedBy: string,
  idempotencyKey: string | null,
  context: Pick<MessageContext, 'traceparent'>,
): Promise<Map<string, string>> {
  if (tasks.length === 0) return new Map();
  await sql`
    WITH last AS (
      SELECT t.id, t.attempts, coalesce(r.retry, 0) AS retries,
             t.max_attempts - coalesce(r.after_attempt, 0) - t.interrupted AS budget
      FROM tasks t
      LEFT JOIN LATERAL (
        SELECT retry, after_attempt FROM task_retries WHERE task_id = t.id ORDER BY retry DESC LIMIT 1
      ) r ON true
      WHERE t.id = ANY(${tasks.map((t) => t.id)}::uuid[])
    ), retried AS (
      UPDATE tasks t
      SET status = 'pending', max_attempts = l.attempts + l.budget, interrupted = 0, result = NULL, current_step = NULL,
          progress = NULL, lease_until = NULL, cancel_requested_at = NULL, finished_at = NULL, updated_at = now(),
          -- A retry runs at once: a due time still ahead would hide the task from the reconciler until then.
          run_at = CASE WHEN t.run_at > now() THEN NULL ELSE t.run_at END,
          ${TASK_CHANGED_SET}
      FROM last l WHERE t.id = l.id
      RETURNING t.id
    )
    INSERT INTO task_retries (task_id, retry, after_attempt, requested_by, idempotency_key)
    SELECT l.id, l.retries + 1, l.attempts, ${requestedBy}, ${idempotencyKey} FROM last l JOIN retried USING (id)`.execute(
    tx,
  );
  const messages = tasks.map((t) =>
    outboxMessage(t, t.attempts + 1, { correlationId: t.correlation_id, traceparent: context.traceparent }),
  );
  await insertOutbox(tx, messages);
  // Rare (a person asked), so the relay is woken from inside the transaction: delivered at the commit.
  await wakeRelays(tx);
  return new Map(messages.map((m) => [m.task_id, m.message_id]));
}

/** The condition for the one task `id`, if `viewer` may see it. */
export function visibleTask(viewer: Viewer, id: string): RawBuilder<boolean> {
  return viewer.admin ? sql<boolean>`id = ${id}` : sql<boolean>`id = ${id} AND owner = ${viewer.owner}`;
}

/**
 * Locks tasks for a retry or a cancel, oldest first. `narrow` holds the caller's conditions (one task
 * and its owner, or a bulk filter). A bulk action passes skipLocked: a task busy elsewhere is left to
 * the next call, and since it never waits, no order of locking can deadlock it.
 */
export function lockTasks(tx: Db, narrow: RawBuilder<boolean>, limit: number, skipLocked: boolean) {
  return lockingQuery(narrow, limit, skipLocked).execute(tx);
}

/**
 * lockTasks's statement. It orders by an expression (`+ interval '0'`) that no index has, so Postgres
 * finds the rows the filter matches first and sorts them, instead of walking tasks_created from the
 * oldest task until it meets them: those a bulk action looks for (a backlog, today's failures) are the
 * newest of a table of finished tasks, and the walk read 1.4 million rows, past the statement timeout.
 */
export function lockingQuery(narrow: RawBuilder<boolean>, limit: number, skipLocked: boolean) {
  return sql<LockedTask>`
    SELECT id, type, status, attempts, owner, correlation_id FROM tasks
    WHERE ${narrow}
    ORDER BY created_at + interval '0', id
    LIMIT ${limit}
    FOR UPDATE ${skipLocked ? sql`SKIP LOCKED` : sql``}`;
}

/**
 * POST /tasks/{id}/retry in one transaction: the task locked, the Idempotency-Key checked (a key this
 * task's retries used before replays the answer), the status checked, the retry written. Two retries at
 * once queue on the row lock, so the second finds the task pending and is refused: one new attempt.
 */
export async function retryTask(
  db: Db,
  viewer: Viewer,
  id: string,
  idempotencyKey: string | null,
  context: Pick<MessageContext, 'traceparent'>,
): Promise<RetryOutcome> {
  return db.transaction().execute(async (tx): Promise<RetryOutcome> => {
    const { rows } = await lockTasks(tx, visibleTask(viewer, id), 1, false);
    const task = rows[0];
    if (!task) return { kind: 'not found' };
    if (idempotencyKey !== null) {
      const used = await tx
        .selectFrom('task_retries')
        .select('retry')
        .where('task_id', '=', id)
        .where('idempotency_key', '=', idempotencyKey)
        .executeTakeFirst();
      if (used) return { kind: 'replayed', owner: task.owner };
    }
    if (!retryableStatuses.includes(task.status)) return { kind: 'refused', status: task.status };
    const messages = await retryLocked(tx, [task], viewer.owner, idempotencyKey, context);
    const { owner, attempts, correlation_id: correlationId } = task;
    return { kind: 'retried', owner, attempt: attempts + 1, messageId: messages.get(id), correlationId };
  });
}
