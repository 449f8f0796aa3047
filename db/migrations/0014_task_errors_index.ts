import { type Kysely, sql } from 'kysely';

// A list filtered by error text (GET /tasks?errorContains=, the dashboard, bulk retry) reads tasks
// newest first and keeps those whose error matches: through tasks_created or tasks_owner_created it
// read every task until it had a page, and a rare match read the whole table (10.5 s on 1.6 million
// tasks, past the statement timeout). These hold only the tasks that have an error, in the same order,
// and the filter says "error IS NOT NULL" (task-filter.ts): 0.57 s on the same table. They cost no
// write of a task without an error. On a large table, create them by hand first with
// CREATE INDEX CONCURRENTLY (IF NOT EXISTS makes this a no-op then).
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE INDEX IF NOT EXISTS tasks_errored ON tasks (created_at DESC, id DESC) WHERE error IS NOT NULL`.execute(
    db,
  );
  await sql`CREATE INDEX IF NOT EXISTS tasks_owner_errored ON tasks (owner, created_at DESC, id DESC)
            WHERE error IS NOT NULL`.execute(db);
}
