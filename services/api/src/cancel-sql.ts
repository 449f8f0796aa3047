import { sql } from 'kysely';
import { taskChanged, type Db, type TaskStatus } from '@taskbox/shared';
import { lockTasks, visibleTask } from './retry-sql';
import type { Viewer } from './viewer';

/** The statuses a cancel applies to: the task has not finished. */
export const cancellableStatuses: readonly TaskStatus[] = ['pending', 'processing'];

/**
 * Cancels tasks the caller's transaction has locked: a pending task is cancelled at once, and its
 * unpublished message goes with it; a processing one gets cancel_requested_at, which the worker's heartbeat turns
 * into an abort of the running handler. Other statuses are left alone.
 */
export async function cancelLocked(tx: Db, tasks: { id: string; status: TaskStatus }[]): Promise<void> {
  const pending = tasks.filter((t) => t.status === 'pending').map((t) => t.id);
  const processing = tasks.filter((t) => t.status === 'processing').map((t) => t.id);
  if (pending.length > 0) {
    await tx
      .updateTable('tasks')
      .set({
        status: 'cancelled',
        finished_at: sql`now()`,
        updated_at: sql`now()`,
        cancel_requested_at: sql`now()`,
        ...taskChanged,
      })
      .where('id', 'in', pending)
      .execute();
    // Cancel wins: its unpublished message goes in this transaction; one a relay is publishing now the worker skips.
    await tx.deleteFrom('outbox').where('task_id', 'in', pending).where('published_at', 'is', null).execute();
  }
  if (processing.length > 0) {
    await tx
      .updateTable('tasks')
      .set({ cancel_requested_at: sql`now()`, updated_at: sql`now()`, ...taskChanged })
      .where('id', 'in', processing)
      // A second request changes nothing a client sees: no new version.
      .where('cancel_requested_at', 'is', null)
      .execute();
  }
}

/**
 * POST /tasks/{id}/cancel in one transaction. Returns the status the task had, or undefined when
 * `viewer` may not see it.
 */
export async function cancelTask(db: Db, viewer: Viewer, id: string): Promise<TaskStatus | undefined> {
  return db.transaction().execute(async (tx) => {
    const { rows } = await lockTasks(tx, visibleTask(viewer, id), 1, false);
    const task = rows[0];
    if (task) await cancelLocked(tx, [task]);
    return task?.status;
  });
}
