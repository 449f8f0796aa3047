import { sql, type RawBuilder } from 'kysely';
import type { Db, MessageContext, TaskStatus } from '@taskbox/shared';
import { cancellableStatuses, cancelLocked } from './cancel-sql';
import { lockTasks, retryableStatuses, retryLocked, type LockedTask } from './retry-sql';
import { allOf, filterConditions, type TaskFilter } from './task-filter';

export type BulkAction = 'retry' | 'cancel';

/** The statuses each action applies to; a filter may narrow them, never widen them. */
export const bulkStatuses: Record<BulkAction, readonly TaskStatus[]> = {
  retry: retryableStatuses,
  cancel: cancellableStatuses,
};

/** The tasks a bulk action with this filter takes. */
export function matching(action: BulkAction, filter: TaskFilter): RawBuilder<boolean> {
  // A running task whose cancel was already asked for is not taken again: it would fill every later
  // call's batch and change nothing.
  const notAsked = action === 'cancel' ? [sql<boolean>`(status = 'pending' OR cancel_requested_at IS NULL)`] : [];
  return allOf([sql`status = ANY(${bulkStatuses[action]}::text[])`, ...notAsked, ...filterConditions(filter)]);
}

export interface BulkOutcome {
  /** Tasks the filter matched when the call ran (the action's statuses only). */
  matched: number;
  /** The tasks this call retried or cancelled: at most the limit, none on a dry run; a retry's new message id. */
  acted: (LockedTask & { messageId?: string })[];
}

/**
 * Retries or cancels, in one transaction, up to `limit` tasks the filter matches, oldest first, as a
 * single retry or cancel would. A task locked elsewhere at that moment is skipped, for the next call.
 */
export async function bulkAct(
  db: Db,
  action: BulkAction,
  filter: TaskFilter,
  options: { limit: number; dryRun: boolean; by: string; context: Pick<MessageContext, 'traceparent'> },
): Promise<BulkOutcome> {
  return db.transaction().execute(async (tx) => {
    const where = matching(action, filter);
    const { rows } = await sql<{ n: string }>`SELECT count(*) AS n FROM tasks WHERE ${where}`.execute(tx);
    const matched = Number(rows[0]?.n ?? 0);
    if (options.dryRun || matched === 0) return { matched, acted: [] };
    const { rows: locked } = await lockTasks(tx, where, options.limit, true);
    if (action === 'cancel') {
      await cancelLocked(tx, locked);
      return { matched, acted: locked };
    }
    const messages = await retryLocked(tx, locked, options.by, null, options.context);
    return { matched, acted: locked.map((t) => ({ ...t, messageId: messages.get(t.id) })) };
  });
}

/** How many tasks of each type are in each status: one owner's, or (null) every owner's. */
export async function countTasks(db: Db, owner: string | null) {
  const rows = await db
    .selectFrom('tasks')
    .select(['type', 'status', db.fn.countAll<string>().as('count')])
    .$if(owner !== null, (q) => q.where('owner', '=', owner as string))
    .groupBy(['type', 'status'])
    .orderBy('type')
    .orderBy('status')
    .execute();
  return rows.map((r) => ({ type: r.type, status: r.status, count: Number(r.count) }));
}
