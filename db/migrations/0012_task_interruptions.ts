import { type Kysely, sql } from 'kysely';

// The attempts a worker's shutdown interrupted since the task's last retry (the worker's
// interruptAttempt). Each raised max_attempts by one, so that it is not counted; the next retry takes
// them back off the task's fresh budget and sets this to 0. Kept on the task: the attempt rows that
// also say so are deleted by retention (ATTEMPT_RETENTION_MS) while the task may still be retried.
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE tasks ADD COLUMN IF NOT EXISTS interrupted integer NOT NULL DEFAULT 0`.execute(db);
}
