import { type Kysely, sql } from 'kysely';

// Scheduled tasks (POST /tasks with runAt or delayMs): the outbox row's available_at holds the due time
// and the relay publishes the row once it is due. The task row keeps the time too, because published
// outbox rows are deleted after OUTBOX_RETENTION_MS and the task view, its timeline and the "stuck"
// measures (lastPublishedAt) still need it. NULL: as soon as possible. Adding a nullable column without
// a default rewrites nothing and holds its lock only for a moment.
//
// outbox_due replaces outbox_unpublished (id): the relay's claim reads unpublished rows oldest due first
// and stops at its batch, so the rows waiting for a later time are never read (claimBatch), and its
// first entry after the relay's last claim is when it should claim next (msUntilNextDue). One index instead of two
// keeps the api's insert at the same cost. The outbox holds about an hour of published rows
// (OUTBOX_RETENTION_MS) and CREATE INDEX blocks the api's inserts while it runs: on a busy deployment,
// create outbox_due by hand first with CREATE INDEX CONCURRENTLY (IF NOT EXISTS makes this a no-op then).
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE tasks ADD COLUMN run_at timestamptz`.execute(db);
  await sql`CREATE INDEX IF NOT EXISTS outbox_due ON outbox (available_at, id) WHERE published_at IS NULL`.execute(db);
  await sql`DROP INDEX IF EXISTS outbox_unpublished`.execute(db);
}
