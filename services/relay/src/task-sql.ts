import { sql } from 'kysely';
import {
  earliestPublish,
  insertOutbox,
  lastPublishedAt,
  nextAttemptMessage,
  type Db,
  type OutboxMessage,
  type TaskRowForMessage,
} from '@taskbox/shared';

// The relay's SQL on tasks and their attempts (its outbox SQL is in outbox-sql.ts).

export interface Republished {
  message: OutboxMessage;
  correlationId: string | null;
}

/** The tasks republishStranded takes, locked (its comment says which). */
export function strandedTasks(before: { cutoff: string; extraMs: number }, types: readonly string[], limit: number) {
  const publishedBefore = sql`${before.cutoff}::timestamptz - ${before.extraMs} * interval '1 millisecond'`;
  return sql<TaskRowForMessage>`
    SELECT t.id, t.type, t.attempts, t.correlation_id, t.traceparent
    FROM tasks t
    WHERE t.status = 'pending'
      AND t.type = ANY(${types}::text[])
      AND ${earliestPublish} < ${publishedBefore}
      AND ${lastPublishedAt} < ${publishedBefore}
      AND (t.republished_at IS NULL OR t.republished_at < ${publishedBefore})
    ORDER BY ${earliestPublish}
    LIMIT ${limit}
    FOR UPDATE OF t SKIP LOCKED`;
}

/**
 * Republishes up to `limit` stranded tasks of `types` (one queue's), each through a new outbox row in this one transaction: a
 * task that is pending, whose latest message was published (lastPublishedAt) before `cutoff` minus
 * `extraMs`, and that no worker has started since. The new message asks for the same attempt as the
 * lost one (attempts + 1), so if the lost one turns up after all, the worker runs whichever comes
 * first and drops the other as stale.
 *
 * One actor per task across relays: SKIP LOCKED keeps two relays off the same rows at once, and the
 * republished_at guard is re-checked on the locked row, so a relay whose snapshot predates another's
 * commit skips the task rather than republishing it a second time. The unpublished row this writes also
 * keeps the task out of every later pass until it is published, and published long enough ago.
 *
 * lastPublishedAt is at least earliestPublish, and that bound lets the scan read from tasks_pending_due
 * only the pending tasks that could be stranded, never the ones scheduled for later.
 */
export async function republishStranded(
  db: Db,
  before: { cutoff: string; extraMs: number },
  types: readonly string[],
  limit: number,
): Promise<Republished[]> {
  return db.transaction().execute(async (tx) => {
    const { rows } = await strandedTasks(before, types, limit).execute(tx);
    if (rows.length === 0) return [];
    const republished = rows.map((t) => ({
      message: nextAttemptMessage(t),
      correlationId: t.correlation_id,
    }));
    await insertOutbox(
      tx,
      republished.map((r) => r.message),
    );
    await tx
      .updateTable('tasks')
      .set({ republished_at: sql`now()` })
      .where(
        'id',
        'in',
        rows.map((t) => t.id),
      )
      .execute();
    return republished;
  });
}

/**
 * Deletes finished task attempts older than the retention, `limit` at a time like deletePublished.
 * Unfinished attempts are never touched: a live or lost run still needs its row. An attempt that
 * finished before the cutoff started before it: the walk of task_attempts_started (migration 0015)
 * reads the attempts that started before the cutoff, oldest first: those to delete, and the few that
 * started so long ago and are still unfinished.
 */
export async function deleteFinishedAttempts(db: Db, retentionMs: number, limit: number): Promise<number> {
  const result = await finishedAttemptsDeletion(retentionMs, limit).execute(db);
  return Number(result.numAffectedRows ?? 0);
}

export function finishedAttemptsDeletion(retentionMs: number, limit: number) {
  const cutoff = sql`now() - ${retentionMs} * interval '1 millisecond'`;
  return sql`
    DELETE FROM task_attempts WHERE (task_id, attempt) IN (
      SELECT task_id, attempt FROM task_attempts
      WHERE started_at < ${cutoff} AND finished_at < ${cutoff}
      ORDER BY started_at
      LIMIT ${limit}
    )`;
}

/**
 * Deletes up to `limit` tasks that finished more than `retentionMs` ago, oldest first, with their
 * attempts (ON DELETE CASCADE) and any outbox rows left for them. Pending and processing tasks are
 * never touched: the predicate names the finished statuses, as tasks_finished does. SKIP LOCKED: a
 * task being read for update elsewhere (a late retry of a cancel, say) waits for the next batch.
 */
export async function deleteFinishedTasks(db: Db, retentionMs: number, limit: number): Promise<number> {
  const result = await sql`
    WITH doomed AS (
      SELECT id FROM tasks
      WHERE status IN ('succeeded', 'failed', 'cancelled')
        AND finished_at < now() - ${retentionMs} * interval '1 millisecond'
      ORDER BY finished_at
      LIMIT ${limit}
      FOR UPDATE SKIP LOCKED
    ), outbox_rows AS (
      DELETE FROM outbox o USING doomed d WHERE o.task_id = d.id
    )
    DELETE FROM tasks t USING doomed d WHERE t.id = d.id`.execute(db);
  return Number(result.numAffectedRows ?? 0);
}
