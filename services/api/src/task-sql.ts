import { sql } from 'kysely';
import {
  createBatcher,
  insertTasks,
  isDbUnavailable,
  taskColumns,
  type Db,
  type Inserted,
  type TaskInsert,
  type TaskRow,
} from '@taskbox/shared';
import { allOf, filterConditions, type TaskFilter } from './task-filter';
import type { Viewer } from './viewer';

/**
 * The api's one way to insert a task: concurrent requests are grouped into one insertTasks statement
 * (shared/task-insert.ts) by createBatcher, which is what lets the api keep up with the database under
 * load. A request whose values Postgres refuses fails alone. Two statements in flight: the benchmark's api throughput was
 * best with one or two (larger batches, fewer round trips) and lower with four; two keep inserts going
 * while one statement waits on a lock.
 *
 * The wait for a slot is bounded so that a POST is answered within 12 s however Postgres holds it:
 * a short wait here, then the pool's wait for a connection (main.ts) and the statement timeout. The
 * queue holds about two seconds of the api's best throughput.
 */
export function createTaskInserter(db: Db): (insert: TaskInsert) => Promise<Inserted> {
  return createBatcher((inserts: TaskInsert[]) => insertTasks(db, inserts), {
    maxSize: 100,
    concurrency: 2,
    retryAlone: (err) => !isDbUnavailable(err),
    maxQueue: 5000,
    maxWaitMs: 2000,
  });
}

/** The task as `viewer` may see it: any owner's for an admin, else only the viewer's own. */
export function findTask(db: Db, viewer: Viewer, id: string) {
  return db
    .selectFrom('tasks')
    .select(taskColumns)
    .$if(!viewer.admin, (q) => q.where('owner', '=', viewer.owner))
    .where('id', '=', id)
    .executeTakeFirst();
}

export function findTaskByIdempotencyKey(db: Db, owner: string, key: string) {
  return db
    .selectFrom('tasks')
    .select(taskColumns)
    .where('owner', '=', owner)
    .where('idempotency_key', '=', key)
    .executeTakeFirst();
}

/** The timeline: each attempt, each retry asked for, and when each outbox message for the task was published. */
export async function findTimeline(db: Db, id: string) {
  const [attempts, messages, retries] = await Promise.all([
    db
      .selectFrom('task_attempts')
      .select(['attempt', 'external_job_id', 'started_at', 'finished_at', 'outcome', 'error'])
      .where('task_id', '=', id)
      .orderBy('attempt')
      .execute(),
    db
      .selectFrom('outbox')
      .select(['payload', 'created_at', 'available_at', 'published_at'])
      .where('task_id', '=', id)
      .orderBy('id')
      .execute(),
    db
      .selectFrom('task_retries')
      .select(['retry', 'requested_by', 'requested_at'])
      .where('task_id', '=', id)
      .orderBy('retry')
      .execute(),
  ]);
  return { attempts, messages, retries };
}

export interface ListFilter extends TaskFilter {
  /** Required here, so that no list leaves it out by mistake. */
  owner: string | null;
  limit: number;
  after?: { createdAt: string; id: string };
}

/**
 * Keyset pagination, newest first. The cursor carries created_at as Postgres text (microseconds; a JS
 * Date would round to milliseconds and skip or repeat rows) plus the id as a tie-breaker. One owner's
 * pages read tasks_owner_created, every owner's tasks_created (migration 0007).
 */
export function listTasks(db: Db, filter: ListFilter) {
  return listQuery(db, filter).execute();
}

/** listTasks's statement. */
export function listQuery(db: Db, filter: ListFilter) {
  const conditions = filterConditions(filter);
  if (filter.after) {
    const { createdAt, id } = filter.after;
    conditions.push(sql<boolean>`(created_at, id) < (${createdAt}::timestamptz, ${id}::uuid)`);
  }
  return db
    .selectFrom('tasks')
    .select(taskColumns)
    .select(sql<string>`created_at::text`.as('cursor_created_at'))
    .where(allOf(conditions))
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(filter.limit);
}

/**
 * The watermark of a list stream: every transaction with an id below it has ended, so a read from it on
 * misses no commit (db/migrations/0005_task_versions.ts).
 */
export async function currentHorizon(db: Db): Promise<string> {
  const { rows } = await sql<{
    horizon: string;
  }>`SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS horizon`.execute(db);
  return (rows[0] as { horizon: string }).horizon;
}

/**
 * What a read's snapshot could not see yet: transactions at or above `xmax`, and those in `xip` (then
 * in progress). Every other transaction had ended, so its changes were in that read. Only true of the
 * server that took the snapshot (`server`, its start time): a standby promoted after a failover, or a
 * server restarted after a crash, may hand out again transaction ids the old one had.
 */
export interface SnapshotEdge {
  server: string;
  xmax: string;
  xip: string[];
}

/** A task as a list stream reads it: with the transaction that last changed it. */
export type ChangedRow = TaskRow & { changed_xid: string };

/**
 * The tasks of these owners changed at or after `since`, with the watermark of the same snapshot for
 * the next read, and its edge. With `after` (the edge of a read every reader had), only the changes
 * that read could not see: a transaction left open (an idle session, a long report) holds the watermark
 * back, and each read would otherwise return every change since it, again and again. Read through
 * tasks_owner_changed: one index range per owner from the newer bound, and one lookup per transaction
 * that was in progress. An edge of another server, or ahead of this one's, is not used: the read is
 * done again from `since`.
 */
export async function tasksChangedSince(
  db: Db,
  owners: string[],
  since: string,
  after: SnapshotEdge | null,
): Promise<{ horizon: string; edge: SnapshotEdge; changed: ChangedRow[] }> {
  const read = await changesSince(db, owners, since, after);
  const edgeHolds = after && read.edge.server === after.server && BigInt(read.edge.xmax) >= BigInt(after.xmax);
  return after && !edgeHolds ? changesSince(db, owners, since, null) : read;
}

async function changesSince(db: Db, owners: string[], since: string, after: SnapshotEdge | null) {
  const columns = sql.join(taskColumns.map((c) => sql.ref(`t.${c}`)));
  const mine = sql`t.owner = ANY(${owners}::text[])`;
  const changes = after
    ? sql`SELECT t.changed_xid, ${columns} FROM tasks t
          WHERE ${mine} AND t.changed_xid >= greatest(${since}::xid8, ${after.xmax}::xid8)
          UNION ALL
          SELECT t.changed_xid, ${columns} FROM tasks t
          WHERE ${mine} AND t.changed_xid = ANY(${after.xip}::xid8[])
            AND t.changed_xid >= ${since}::xid8 AND t.changed_xid < ${after.xmax}::xid8`
    : sql`SELECT t.changed_xid, ${columns} FROM tasks t WHERE ${mine} AND t.changed_xid >= ${since}::xid8`;
  // h has one row, so the join returns at least one: the edge even when nothing changed.
  const { rows } = await sql<Partial<TaskRow> & { changed_xid: string | null } & SnapshotEdge & { horizon: string }>`
    WITH h AS (
      SELECT pg_postmaster_start_time()::text AS server, pg_snapshot_xmin(s)::text AS horizon,
             pg_snapshot_xmax(s)::text AS xmax, ARRAY(SELECT x::text FROM pg_snapshot_xip(s) x) AS xip
      FROM pg_current_snapshot() s
    ), c AS (${changes})
    SELECT h.server, h.horizon, h.xmax, h.xip, c.changed_xid::text AS changed_xid,
           ${sql.join(taskColumns.map((col) => sql.ref(`c.${col}`)))}
    FROM h LEFT JOIN c ON true`.execute(db);
  const { server, horizon, xmax, xip } = rows[0]!;
  const changed = rows.filter((r): r is ChangedRow & SnapshotEdge & { horizon: string } => r.id != null);
  return { horizon, edge: { server, xmax, xip }, changed };
}

/** Where a page of tasksChangedBetween ended: the next page starts after this task. */
export interface ChangeCursor {
  xid: string;
  id: string;
}

/**
 * At most `limit` of one owner's tasks changed by transactions in [since, until), in (changed_xid, id)
 * order, after `after`. Every transaction below `until` (a watermark) has ended, so the range gains no
 * rows while it is paged through; a task that changes meanwhile leaves it for a transaction at or
 * above `until`. One index range of tasks_owner_changed.
 */
export async function tasksChangedBetween(
  db: Db,
  owner: string,
  since: string,
  until: string,
  after: ChangeCursor | null,
  limit: number,
): Promise<(TaskRow & { changed_xid: string })[]> {
  const { rows } = await sql<TaskRow & { changed_xid: string }>`
    SELECT t.changed_xid::text AS changed_xid, ${sql.join(taskColumns.map((c) => sql.ref(`t.${c}`)))}
    FROM tasks t
    WHERE t.owner = ${owner} AND t.changed_xid >= ${since}::xid8 AND t.changed_xid < ${until}::xid8
      ${after ? sql`AND (t.changed_xid, t.id) > (${after.xid}::xid8, ${after.id}::uuid)` : sql``}
    ORDER BY t.changed_xid, t.id
    LIMIT ${limit}`.execute(db);
  return rows;
}
