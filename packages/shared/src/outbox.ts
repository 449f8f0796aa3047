import { randomUUID } from 'node:crypto';
import { sql, type RawBuilder } from 'kysely';
import type { Db } from './db';
import type { TaskMessage } from './task-message';

/** The NOTIFY channel the relay listens on. NOTIFY is scoped to one database, so tests stay apart. */
export const OUTBOX_CHANNEL = 'taskbox_outbox';

export interface OutboxMessage {
  message_id: string;
  task_id: string;
  routing_key: string;
  payload: string;
  headers: string;
}

export interface MessageContext {
  correlationId: string | null;
  traceparent?: string | null;
}

/** What a message written for a task without a request (a resume, a republish, a re-drive) takes from its row. */
export interface TaskRowForMessage {
  id: string;
  type: string;
  attempts: number;
  correlation_id: string | null;
  traceparent: string | null;
}

/** The outbox row for the next attempt of a task, in the trace and under the correlation id of its request. */
export function nextAttemptMessage(task: TaskRowForMessage): OutboxMessage {
  return outboxMessage(task, task.attempts + 1, { correlationId: task.correlation_id, traceparent: task.traceparent });
}

/** The outbox row that asks a worker to run `attempt` of a task. */
export function outboxMessage(
  task: { id: string; type: string },
  attempt: number,
  context: MessageContext,
): OutboxMessage {
  const body: TaskMessage = { taskId: task.id, type: task.type, attempt };
  const headers: Record<string, string> = {};
  if (context.correlationId) headers.correlationId = context.correlationId;
  if (context.traceparent) headers.traceparent = context.traceparent;
  return {
    message_id: randomUUID(),
    task_id: task.id,
    routing_key: task.type,
    payload: JSON.stringify(body),
    headers: JSON.stringify(headers),
  };
}

/**
 * Unpublished rows, and how long the oldest due one has waited, for the relay's /metrics and the
 * doctor. The age counts from available_at, not created_at: a retry scheduled minutes ahead is not
 * late, and counting it would raise a false alarm on every backoff.
 */
export async function outboxBacklog(db: Db): Promise<{ count: number; oldestAgeSeconds: number }> {
  const { rows } = await sql<{ count: string; oldest: number | null }>`
    SELECT count(*) AS count, greatest(0, extract(epoch FROM now() - min(available_at)))::float8 AS oldest
    FROM outbox WHERE published_at IS NULL`.execute(db);
  const row = rows[0];
  return { count: Number(row?.count ?? 0), oldestAgeSeconds: row?.oldest ?? 0 };
}

/**
 * THE outbox insert: every statement that queues messages (the api's insert, a retry, a resumed run, a
 * republished task) writes its rows through this, so the columns and the due time are set one way.
 * `rows` is a query whose columns are, in order: message_id (uuid), task_id (uuid), routing_key, payload
 * (jsonb), headers (jsonb) and delay_ms (a row is due that long after now()).
 */
export function outboxInsert(rows: RawBuilder<unknown>): RawBuilder<unknown> {
  return sql`INSERT INTO outbox (message_id, task_id, routing_key, payload, headers, available_at)
    SELECT r.message_id, r.task_id, r.routing_key, r.payload, r.headers, now() + r.delay_ms * interval '1 millisecond'
    FROM (${rows}) AS r(message_id, task_id, routing_key, payload, headers, delay_ms)`;
}

/**
 * For the task row `t`: the earliest its latest message can have been published, its last change or
 * its due time, whichever is later (a message is published after the change that wrote it, and not
 * before it is due). tasks_pending_due (migration 0013) indexes this very expression, so a query that
 * bounds pending tasks by it reads only those that can have been published by then.
 */
export const earliestPublish = sql<Date>`greatest(t.updated_at, t.run_at)`;

/**
 * For the task row `t`: when its latest message was published, or NULL while one of its messages still
 * waits to be published (a scheduled task's, until it is due). A task with no outbox row left counts
 * from earliestPublish: rows are only ever deleted after publishing, and never before the task was
 * due. "Published this long ago, and no worker started it": the reconciler republishes such a task,
 * and the doctor reports it.
 */
export const lastPublishedAt = sql<Date | null>`(
  SELECT CASE WHEN bool_or(o.published_at IS NULL) THEN NULL
              ELSE coalesce(max(o.published_at), ${earliestPublish}) END
  FROM outbox o WHERE o.task_id = t.id)`;

/**
 * Wakes the relays now rather than at their next poll, for writers that add outbox rows rarely (a
 * retry, a re-drive); inside a transaction the NOTIFY is delivered at its commit.
 */
export async function wakeRelays(db: Db): Promise<void> {
  await sql`SELECT pg_notify(${OUTBOX_CHANNEL}, '')`.execute(db);
}

/** Inserts outbox rows inside the caller's transaction; `delayMs` defers a retry. */
export async function insertOutbox(db: Db, messages: OutboxMessage[], delayMs = 0): Promise<void> {
  if (messages.length === 0) return;
  const rows = sql`
    SELECT m.*, ${delayMs}::float8 FROM unnest(
      ${messages.map((m) => m.message_id)}::uuid[], ${messages.map((m) => m.task_id)}::uuid[],
      ${messages.map((m) => m.routing_key)}::text[], ${messages.map((m) => m.payload)}::jsonb[],
      ${messages.map((m) => m.headers)}::jsonb[]) AS m`;
  await outboxInsert(rows).execute(db);
}
