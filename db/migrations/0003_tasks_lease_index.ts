import { type Kysely, sql } from 'kysely';

// The lease index was partial on status = 'processing'. Every statement that finds a running task by
// key guards on that status too (renewing leases, progress, recording an outcome), so the planner
// could read the whole index instead of the primary key, and it did whenever the last ANALYZE had seen
// no task running: the index then looks empty. With 3 000 tasks running, one progress update read
// all 3 000 entries (0.5 ms instead of 0.02), and a lease renewal 2.4 ms. Only running tasks have a
// lease (lease_until is set when an attempt starts and cleared when it ends), so the same rows are
// indexed under a predicate that only the lease queries (the sweeper's lease_until < now()) imply.
// Building the index blocks writes to tasks while it scans the table; on a large table, create
// tasks_lease by hand first with CREATE INDEX CONCURRENTLY (IF NOT EXISTS makes this a no-op then).
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_until) WHERE lease_until IS NOT NULL`.execute(db);
  await sql`DROP INDEX tasks_processing_lease`.execute(db);
}
