import { sql, type RawBuilder } from 'kysely';
import type { Db } from './db';
import { NACKED, NO_HANDLER, UNCONFIRMED, UNROUTABLE } from './errors';
import { earliestPublish, lastPublishedAt } from './outbox';

/** Tasks stuck in one place: how many, how long the oldest has waited, and its id to look up. */
export interface StuckTasks {
  count: number;
  oldestSeconds: number;
  example: string | null;
}

/**
 * How many of `tasks` (a query with columns `id` and `since`) have waited since before `ms` ago, how
 * long the oldest has, and its id. Each check below only says which tasks, waiting since when.
 *
 * OFFSET 0 keeps `since` a column computed once a row, not an expression copied into each of its three
 * uses. JIT off: Postgres cannot estimate how many rows a partial index's expression keeps, guessed a
 * third of the pending tasks, and spent half a second compiling a query that then took 80 ms.
 */
async function stuckSince(db: Db, tasks: RawBuilder<unknown>, ms: number): Promise<StuckTasks> {
  const { rows } = await db.transaction().execute(async (tx) => {
    await sql`SET LOCAL jit = off`.execute(tx);
    return sql<{ count: string; oldest: number | null; example: string | null }>`
      SELECT count(*) AS count,
             extract(epoch FROM now() - min(s.since))::float8 AS oldest,
             (array_agg(s.id::text ORDER BY s.since))[1] AS example
      FROM (${tasks} OFFSET 0) s
      WHERE s.since < now() - ${ms} * interval '1 millisecond'`.execute(tx);
  });
  const row = rows[0];
  return { count: Number(row?.count ?? 0), oldestSeconds: row?.oldest ?? 0, example: row?.example ?? null };
}

/**
 * Pending tasks whose next message has been due for longer than `ms` and is still unpublished: the
 * relay is not publishing (stopped, or failing to reach the broker). A retry whose backoff has not
 * run out yet is not due, so it is not counted.
 */
export function pendingUnpublished(db: Db, ms: number): Promise<StuckTasks> {
  const tasks = sql`
    SELECT t.id, min(o.available_at) AS since
    FROM tasks t JOIN outbox o ON o.task_id = t.id
    WHERE t.status = 'pending' AND o.published_at IS NULL
    GROUP BY t.id`;
  return stuckSince(db, tasks, ms);
}

/**
 * Pending tasks whose message was published more than `ms` ago and that no worker has started: the
 * worker is down, consumes another queue (AMQP_PREFIX), or the message was lost in the broker. As the
 * reconciler does (republishStranded), it reads from tasks_pending_due only the tasks that could have
 * been published that long ago, never the ones scheduled for later.
 */
export function pendingPublished(db: Db, ms: number): Promise<StuckTasks> {
  const tasks = sql`
    SELECT t.id, ${lastPublishedAt} AS since FROM tasks t
    WHERE t.status = 'pending' AND ${earliestPublish} < now() - ${ms} * interval '1 millisecond'`;
  return stuckSince(db, tasks, ms);
}

/**
 * Tasks whose current attempt started more than `ms` ago and has not finished. Every running task has
 * a lease, and saying so lets Postgres find them through tasks_lease.
 */
export function longProcessing(db: Db, ms: number): Promise<StuckTasks> {
  const tasks = sql`
    SELECT t.id, a.started_at AS since
    FROM tasks t JOIN task_attempts a ON a.task_id = t.id AND a.attempt = t.attempts
    WHERE t.lease_until IS NOT NULL AND t.status = 'processing'`;
  return stuckSince(db, tasks, ms);
}

/** Tasks the relay's reconciler republished within `ms`: how many, how long ago the latest, and its id. */
export async function recentlyRepublished(
  db: Db,
  ms: number,
): Promise<{ count: number; latestSeconds: number; example: string | null }> {
  const { rows } = await sql<{ count: string; latest: number | null; example: string | null }>`
    SELECT count(*) AS count,
           extract(epoch FROM now() - max(republished_at))::float8 AS latest,
           (array_agg(id::text ORDER BY republished_at DESC))[1] AS example
    FROM tasks WHERE republished_at > now() - ${ms} * interval '1 millisecond'`.execute(db);
  const row = rows[0];
  return { count: Number(row?.count ?? 0), latestSeconds: row?.latest ?? 0, example: row?.example ?? null };
}

/** Per type, the tasks that failed within `ms` because the worker that got them had no handler. */
export async function noHandlerFailures(
  db: Db,
  ms: number,
): Promise<{ type: string; count: number; example: string }[]> {
  // The predicate names the finished statuses, as tasks_finished does, so the scan reads that index.
  const { rows } = await sql<{ type: string; count: string; example: string }>`
    SELECT type, count(*) AS count, (array_agg(id::text ORDER BY finished_at DESC))[1] AS example
    FROM tasks
    WHERE status IN ('succeeded', 'failed', 'cancelled')
      AND finished_at > now() - ${ms} * interval '1 millisecond'
      AND status = 'failed'
      AND error->>'message' LIKE ${`${NO_HANDLER} %`}
    GROUP BY type ORDER BY type`.execute(db);
  return rows.map((r) => ({ type: r.type, count: Number(r.count), example: r.example }));
}

/**
 * The unpublished outbox rows the broker has refused (nacked, or never confirmed) on each of at least
 * three tries, so not a single blip: how many, how long ago the oldest was created, its task and its
 * error. `published_at IS NULL` keeps the scan on outbox_due.
 */
export async function refusedPublishes(
  db: Db,
): Promise<{ count: number; oldestSeconds: number; example: string | null; error: string | null }> {
  const { rows } = await sql<{ count: string; oldest: number; example: string; error: string }>`
    SELECT count(*) OVER () AS count, extract(epoch FROM now() - created_at)::float8 AS oldest,
           task_id::text AS example, last_error AS error
    FROM outbox
    WHERE published_at IS NULL AND publish_attempts >= 3
      AND (last_error LIKE ${`${NACKED}%`} OR last_error LIKE ${`${UNCONFIRMED}%`})
    ORDER BY created_at LIMIT 1`.execute(db);
  const row = rows[0];
  return row
    ? { count: Number(row.count), oldestSeconds: row.oldest, example: row.example, error: row.error }
    : { count: 0, oldestSeconds: 0, example: null, error: null };
}

/**
 * Per routing key (type), the unpublished outbox rows whose last publish came back unroutable, and
 * how long ago the oldest was created. `published_at IS NULL` keeps the scan on outbox_due.
 */
export async function unroutableByType(db: Db): Promise<{ type: string; count: number; oldestSeconds: number }[]> {
  const { rows } = await sql<{ type: string; count: string; oldest: number }>`
    SELECT routing_key AS type, count(*) AS count, extract(epoch FROM now() - min(created_at))::float8 AS oldest
    FROM outbox
    WHERE published_at IS NULL AND last_error = ${UNROUTABLE}
    GROUP BY routing_key ORDER BY routing_key`.execute(db);
  return rows.map((r) => ({ type: r.type, count: Number(r.count), oldestSeconds: r.oldest }));
}

/** Sessions whose transaction has been open too long: how many, the oldest, and the sessions waiting on their locks. */
export interface LongTransactions {
  count: number;
  oldest: { pid: number; seconds: number; state: string | null; application: string } | null;
  blocked: number;
}

/**
 * Client sessions of this database whose transaction has been open longer than `ms` (an idle psql
 * session that began one, a long report, a migration), and how many sessions wait on locks they hold.
 * Another role's sessions show only with pg_read_all_stats (or as a superuser).
 */
export async function longTransactions(db: Db, ms: number): Promise<LongTransactions> {
  const { rows } = await sql<{ count: string; oldest: LongTransactions['oldest']; blocked: string }>`
    WITH long AS (
      SELECT pid, state, application_name AS application,
             extract(epoch FROM now() - xact_start)::float8 AS seconds
      FROM pg_stat_activity
      WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
        AND xact_start < now() - ${ms} * interval '1 millisecond'
    )
    SELECT (SELECT count(*) FROM long) AS count,
           (SELECT row_to_json(l) FROM (SELECT * FROM long ORDER BY seconds DESC LIMIT 1) l) AS oldest,
           (SELECT count(*) FROM pg_stat_activity w
            WHERE w.datname = current_database() AND w.wait_event_type = 'Lock'
              AND pg_blocking_pids(w.pid) && ARRAY(SELECT pid FROM long)) AS blocked`.execute(db);
  const row = rows[0];
  return { count: Number(row?.count ?? 0), oldest: row?.oldest ?? null, blocked: Number(row?.blocked ?? 0) };
}
