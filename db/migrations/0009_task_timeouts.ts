import { type Kysely, sql } from 'kysely';

// How long one attempt of a task may run before its AbortSignal fires with the reason 'timeout'
// (services/worker/src/leases.ts). The api and enqueueTask write the request's timeoutMs, or the type's
// default, as they write max_attempts; NULL only on rows from before this migration, which run under
// their type's current default. Adding a nullable column without a default rewrites nothing.
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE tasks ADD COLUMN IF NOT EXISTS timeout_ms integer
    CONSTRAINT tasks_timeout_ms_check CHECK (timeout_ms > 0)`.execute(db);
}
