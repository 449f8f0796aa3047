import { type Kysely, sql } from 'kysely';

// The relay's reconciler (services/relay/src/reconciler.ts) looks for pending tasks that no one has
// run long after their message was published: the broker lost it. It reads pending tasks by
// updated_at, oldest first, and only those older than REPUBLISH_AFTER_MS, so a partial index keeps
// that scan to the few old pending rows instead of the whole table. republished_at records when it
// last acted on a task, for the doctor and the timeline. Adding a nullable column rewrites nothing;
// on a large table, create tasks_pending by hand first with CREATE INDEX CONCURRENTLY.
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE tasks ADD COLUMN republished_at timestamptz`.execute(db);
  await sql`CREATE INDEX IF NOT EXISTS tasks_pending ON tasks (updated_at) WHERE status = 'pending'`.execute(db);
}
