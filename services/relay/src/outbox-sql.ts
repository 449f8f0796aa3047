import { sql } from 'kysely';
import type { Db, PoolOptions } from '@taskbox/shared';

/**
 * The relay's session settings, for each new connection (createPool's onConnect), before the pool
 * hands it out, so they apply to the first claim too.
 *
 * - No bitmap scans: the claim must read the unpublished-rows index with a plain index scan
 *   (claimBatch). The relay's other statements are key lookups or ordered scans that need none.
 * - No wait for the WAL flush at commit: everything the relay writes may be lost to a Postgres crash
 *   (or a failover to a standby) at no cost but a second publish. A lost lease or published mark
 *   leaves the row to be published again, and the worker absorbs the duplicate, as it does when the
 *   relay dies between the confirm and the mark. Nothing is lost: the rows themselves were committed
 *   by the api. It takes about a seventh off commit -> worker start (bench/README.md).
 *
 * Settings belong to a session: through a transaction-pooling proxy they would reach other clients'
 * transactions (the api's inserts would stop waiting for the flush), so the relay needs a direct or
 * session-pooled connection (README).
 */
export const setRelaySession: NonNullable<PoolOptions['onConnect']> = async (client) => {
  await client.query('SET enable_bitmapscan = off; SET synchronous_commit = off');
};

export interface ClaimedRow {
  id: string;
  message_id: string;
  task_id: string;
  routing_key: string;
  payload: unknown;
  headers: Record<string, string>;
  publish_attempts: number;
  /** The claim statement's now(), as Postgres text (exact to the microsecond): markPublished's time. */
  claimed_at: string;
}

/**
 * Claims up to `limit` due, unpublished rows with a lease.
 *
 * Why a lease and not one long transaction: a claim holding FOR UPDATE locks until the confirms come
 * back keeps a transaction open for the broker's round trip, and a slow or blocked broker then holds
 * back vacuum on the hottest table. Here the claim transaction is one statement; `locked_until` keeps
 * other relays off the rows while they are in flight, and if this relay dies the rows come back when
 * the lease ends (re-published, absorbed by the worker's deduplication).
 *
 * SKIP LOCKED lets several relays claim disjoint batches at once. The scan reads outbox_due (a partial
 * index on available_at, id) from its start, oldest due first, and stops at the batch: rows not due
 * yet (scheduled tasks, retries in backoff) sit after the due ones, so however many wait, a claim never
 * reads them (in id order, 100 000 rows due tomorrow made every claim read all of them). It selects
 * rows by state, never with "id > last seen": identity values commit out of order, and a cursor would
 * skip a row whose transaction committed late.
 *
 * The index keeps an entry for every row published since the last vacuum. A plain index scan marks
 * such an entry dead the first time it passes it once no transaction can still see the old row, so
 * later claims skip it; a bitmap scan (the planner's choice when it expects few rows) never does, and
 * visits every one on every claim, thirty times slower with 20 000 of them. The relay's connections
 * turn bitmap scans off (setRelaySession).
 */
export async function claimBatch(db: Db, limit: number, leaseMs: number): Promise<ClaimedRow[]> {
  const { rows } = await sql<ClaimedRow>`
    WITH due AS (
      SELECT id FROM outbox
      WHERE published_at IS NULL
        AND available_at <= now()
        AND (locked_until IS NULL OR locked_until < now())
      ORDER BY available_at, id
      LIMIT ${limit}
      FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox o
    SET locked_until = now() + ${leaseMs} * interval '1 millisecond',
        publish_attempts = o.publish_attempts + 1
    FROM due
    WHERE o.id = due.id
    RETURNING o.id, o.message_id, o.task_id, o.routing_key, o.payload, o.headers, o.publish_attempts,
              now()::text AS claimed_at`.execute(db);
  return rows.sort((a, b) => Number(BigInt(a.id) - BigInt(b.id)));
}

/**
 * How long until the next unpublished row falls due after `since` (the relay's last claim; now when it
 * claimed nothing), or null when none waits: the relay sleeps until then rather than a whole poll, so a
 * scheduled task or a retry is published at its time. Zero or less for a row that fell due after that
 * claim, while the drain was publishing: no wake-up will announce it. Rows due before the claim were
 * the claim's to take, so a row held by another claim is not read again and again. One read of
 * outbox_due's first entry after `since`; leased rows are skipped.
 */
export async function msUntilNextDue(db: Db, since: string | null): Promise<number | null> {
  const { rows } = await sql<{ ms: number | null }>`
    SELECT (extract(epoch FROM min(available_at) - now()) * 1000)::float8 AS ms
    FROM outbox
    WHERE published_at IS NULL AND available_at > coalesce(${since}::timestamptz, now())
      AND (locked_until IS NULL OR locked_until < now())`.execute(db);
  return rows[0]?.ms ?? null;
}

/**
 * Marks rows published; called only after the broker confirmed every one of them. `claimedAt` is the
 * time of the claim that published them (ClaimedRow.claimed_at), on Postgres's clock: before the
 * publish, so before any worker's start. The mark's own now() comes after the confirm, and a worker
 * may start the task before that: the task's timeline showed it started before it was published.
 */
export async function markPublished(db: Db, ids: string[], claimedAt: string): Promise<void> {
  if (ids.length === 0) return;
  await sql`
    UPDATE outbox SET published_at = ${claimedAt}::timestamptz, locked_until = NULL, last_error = NULL
    WHERE id = ANY(${ids}::bigint[])`.execute(db);
}

/** Releases failed rows for a later try: each row waits its own backoff, then any relay may claim it. */
export async function recordPublishFailure(
  db: Db,
  failures: { id: string; error: string; retryInMs: number }[],
): Promise<void> {
  if (failures.length === 0) return;
  await sql`
    UPDATE outbox o
    SET locked_until = NULL,
        last_error = f.error,
        available_at = now() + f.retry_ms * interval '1 millisecond'
    FROM unnest(${failures.map((f) => f.id)}::bigint[], ${failures.map((f) => f.error)}::text[],
                ${failures.map((f) => f.retryInMs)}::int[]) AS f(id, error, retry_ms)
    WHERE o.id = f.id`.execute(db);
}

/**
 * The reconciler's measure of live queues: the time `ms` ago (as Postgres text, to the microsecond),
 * and how many messages of each type (routing key) were published since then.
 */
export async function publishedSince(db: Db, ms: number): Promise<{ cutoff: string; byType: Map<string, number> }> {
  const { rows } = await sql<{ cutoff: string; counts: Record<string, string> | null }>`
    SELECT c.cutoff::text AS cutoff,
           (SELECT jsonb_object_agg(k.routing_key, k.n) FROM (
              SELECT routing_key, count(*) AS n FROM outbox WHERE published_at > c.cutoff GROUP BY routing_key
            ) k) AS counts
    FROM (SELECT now() - ${ms} * interval '1 millisecond' AS cutoff) c`.execute(db);
  const row = rows[0];
  if (!row) throw new Error('the cutoff query answered no row');
  return { cutoff: row.cutoff, byType: new Map(Object.entries(row.counts ?? {}).map(([k, n]) => [k, Number(n)])) };
}

/**
 * Deletes published rows older than the retention, at most `limit` at a time so that no statement
 * holds many row locks or runs long (a long transaction would stop vacuum and bloat the claim scan).
 */
export async function deletePublished(db: Db, retentionMs: number, limit: number): Promise<number> {
  const result = await sql`
    DELETE FROM outbox WHERE id IN (
      SELECT id FROM outbox
      WHERE published_at < now() - ${retentionMs} * interval '1 millisecond'
      LIMIT ${limit}
    )`.execute(db);
  return Number(result.numAffectedRows ?? 0);
}
