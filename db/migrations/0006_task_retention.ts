import { type Kysely, sql } from 'kysely';

// The relay deletes tasks that finished longer than TASK_RETENTION_MS ago, oldest first, in batches
// (services/relay/src/task-sql.ts deleteFinishedTasks). This index holds only finished tasks, by when
// they finished, so each batch reads its rows off the front of the index instead of scanning the
// table. The predicate is the statement's own, which lets the planner use the index. On a large
// table, create tasks_finished by hand first with CREATE INDEX CONCURRENTLY.
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled')`.execute(db);
}
