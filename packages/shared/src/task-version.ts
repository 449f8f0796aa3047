import { sql } from 'kysely';

/**
 * What every statement that changes a task's view also sets (status, step, progress, attempts, result,
 * error or cancel request): the next version and the writing transaction, which live streams resume
 * from (db/migrations/0005_task_versions.ts). A write that skips it is never streamed.
 */
export const taskChanged = {
  version: sql<string>`version + 1`,
  changed_xid: sql<string>`pg_current_xact_id()`,
};

/** taskChanged as SET items for statements written with the sql tag. */
export const TASK_CHANGED_SET = sql`version = version + 1, changed_xid = pg_current_xact_id()`;
