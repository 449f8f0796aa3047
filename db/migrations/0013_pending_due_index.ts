import { type Kysely, sql } from 'kysely';

// The reconciler (republishStranded) and the doctor (pendingPublished) look for pending tasks whose
// last message was published long ago. tasks_pending (0004) had them by updated_at, which every task
// scheduled for later also passes once it is older than REPUBLISH_AFTER_MS: each pass read all of them
// and looked up their outbox rows, to drop them. 400 000 tasks scheduled over a month made a pass take
// 12.7 s, past the statement timeout, and from then on no stranded task was republished. A message is
// published only once due, so it was published no earlier than greatest(updated_at, run_at): indexed
// by that, the scan reads only tasks that could be stranded (96 ms on the same table). On a large table,
// create tasks_pending_due by hand first with CREATE INDEX CONCURRENTLY (IF NOT EXISTS makes this a
// no-op then). A concurrent build that failed leaves an invalid index under that name, which IF NOT
// EXISTS would keep: it is built again here, before tasks_pending goes.
export async function up(db: Kysely<unknown>): Promise<void> {
  const { rows } = await sql<{ valid: boolean }>`
    SELECT indisvalid AS valid FROM pg_index WHERE indexrelid = to_regclass('tasks_pending_due')`.execute(db);
  if (rows[0]?.valid === false) await sql`DROP INDEX tasks_pending_due`.execute(db);
  await sql`CREATE INDEX IF NOT EXISTS tasks_pending_due ON tasks ((greatest(updated_at, run_at))) WHERE status = 'pending'`.execute(
    db,
  );
  await sql`DROP INDEX IF EXISTS tasks_pending`.execute(db);
}
