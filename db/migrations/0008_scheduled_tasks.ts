import { type Kysely, sql } from 'kysely';

// Scheduled tasks (POST /tasks with runAt or delayMs): the outbox row's available_at holds the due time
// and the relay publishes the row once it is due. The task row keeps the time too, because published
// outbox rows are deleted after OUTBOX_RETENTION_MS and the task view, its timeline and the "stuck"
// measures (lastPublishedAt) still need it. NULL: as soon as possible. Adding a nullable column without
// a default rewrites nothing and holds its lock only for a moment.
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE tasks ADD COLUMN run_at timestamptz`.execute(db);
}
