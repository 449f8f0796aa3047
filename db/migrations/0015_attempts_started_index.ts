import { type Kysely, sql } from 'kysely';

// Retention deletes finished attempts older than ATTEMPT_RETENTION_MS, in batches. With no index to
// find them, each batch scanned task_attempts, and a sweep with less than a batch to delete (every
// minute, in a steady state) read the whole table: seconds on a month of a busy system, and past the
// statement timeout on a larger one. An attempt that finished before the cutoff started before it, so
// retention walks this index of start times instead (0.08 ms a sweep on 2 million attempts). started_at
// never changes, so the finish's update of the attempt stays a HOT update. On a large table, create it
// by hand first with CREATE INDEX CONCURRENTLY (IF NOT EXISTS makes this a no-op then); a concurrent
// build that failed leaves an invalid index under that name, which is built again here.
export async function up(db: Kysely<unknown>): Promise<void> {
  const { rows } = await sql<{ valid: boolean }>`
    SELECT indisvalid AS valid FROM pg_index WHERE indexrelid = to_regclass('task_attempts_started')`.execute(db);
  if (rows[0]?.valid === false) await sql`DROP INDEX task_attempts_started`.execute(db);
  await sql`CREATE INDEX IF NOT EXISTS task_attempts_started ON task_attempts (started_at)`.execute(db);
}
