import { type Kysely, sql } from 'kysely';

// Live streams (services/api/src/task-stream.ts, list-streams.ts) need to tell what a client has seen.
// `version` counts the changes a task view can show (status, step, progress, attempts, result, error,
// cancel request); every statement that makes one sets it to version + 1, so under the row lock it is
// monotonic per task and an event id of one task's stream. `changed_xid` is the transaction that made the
// last such change: with the snapshot's xmin as a watermark, "changed_xid >= watermark" finds every task
// changed since, however commits interleave (an identity or timestamp would skip a late commit).
//
// Cost on the worker's hot statements: both columns are set in the statements that already rewrite the
// row, so no extra statement or round trip. Those updates are already not HOT (they change lease_until
// or updated_at, both indexed), so the new index adds one index entry per update of a task (lease
// renewals included); per-row executor time grew by about a tenth in a rollback loop, well below the
// round trip and commit that dominate each statement. Adding the columns rewrites nothing: the constant
// default is stored in the catalog, and the volatile default only applies to new rows. On a large table
// create tasks_owner_changed by hand first with CREATE INDEX CONCURRENTLY.
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE tasks ADD COLUMN version bigint NOT NULL DEFAULT 1, ADD COLUMN changed_xid xid8`.execute(db);
  await sql`ALTER TABLE tasks ALTER COLUMN changed_xid SET DEFAULT pg_current_xact_id()`.execute(db);
  await sql`CREATE INDEX IF NOT EXISTS tasks_owner_changed ON tasks (owner, changed_xid)`.execute(db);
}
