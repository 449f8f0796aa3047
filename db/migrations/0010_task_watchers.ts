import { type Kysely, sql } from 'kysely';

// One row per api process while a request of it waits on task changes (a long poll, a stream), kept
// fresh by that process (services/api/src/watcher-registration.ts). The "task changed" NOTIFY
// (packages/shared/src/notify.ts) is sent only while a fresh row exists: with nobody waiting, the
// worker's NOTIFY after each start and finish was a commit of its own, with a WAL flush and the
// cluster-wide notify lock. `until` expires the row of a process that died without deleting it.
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`CREATE TABLE IF NOT EXISTS task_watchers (
    instance text PRIMARY KEY,
    until timestamptz NOT NULL
  )`.execute(db);
}
