import { type Kysely, sql } from 'kysely';

// POST /tasks/{id}/retry puts a failed or cancelled task back to pending (services/api/src/retry-sql.ts).
// Each retry is a row here, for the timeline: who asked, when, after how many attempts, and under which
// Idempotency-Key (unique per task, so a replayed request finds its retry instead of making another).
//
// attempts keeps counting across retries, because task_attempts is keyed by it: a retry raises
// max_attempts to attempts plus the task's budget. The api still bounds the budget (maxAttempts) at
// creation; the column's own upper bound would make the retries of a task run out, so it goes.
//
// tasks_created: an admin lists every owner's tasks newest first, and bulk actions filter on created_at;
// tasks_owner_created only serves one owner at a time. Like every index on tasks, it costs each
// non-HOT update of a task one more index entry. On a large table, create it by hand first with
// CREATE INDEX CONCURRENTLY.
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE TABLE task_retries (
      task_id uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
      retry integer NOT NULL,
      after_attempt integer NOT NULL,
      requested_by text NOT NULL,
      requested_at timestamptz NOT NULL DEFAULT now(),
      idempotency_key text,
      PRIMARY KEY (task_id, retry)
    )`.execute(db);
  await sql`CREATE UNIQUE INDEX task_retries_idempotency_key ON task_retries (task_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL`.execute(db);
  await sql`ALTER TABLE tasks DROP CONSTRAINT tasks_max_attempts_check,
    ADD CONSTRAINT tasks_max_attempts_check CHECK (max_attempts >= 1)`.execute(db);
  await sql`CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at DESC, id DESC)`.execute(db);
}
