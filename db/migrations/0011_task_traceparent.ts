import { type Kysely, sql } from 'kysely';

// The W3C traceparent of the request that created the task. Its first message carries it from the
// request itself; the messages written later without a request (the worker's retry, the sweeper's
// resume, the reconciler's republish, a re-drive) read it here, so every attempt stays in the trace.
// NULL when the request sent none, and on rows from before this migration.
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE tasks ADD COLUMN IF NOT EXISTS traceparent text`.execute(db);
}
