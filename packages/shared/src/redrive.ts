import { createHash } from 'node:crypto';
import type { ChannelModel, GetMessage } from 'amqplib';
import { sql } from 'kysely';
import { BROKER_ANSWER_MS } from './amqp';
import type { AmqpTopology } from './amqp-topology';
import { isTerminal, type Db, type TaskStatus } from './db';
import { toError } from './errors';
import { withTimeout } from './lifecycle';
import type { Logger } from './logger';
import { nextAttemptMessage, outboxInsert, type TaskRowForMessage } from './outbox';
import { parseTaskMessage } from './task-message';

export interface RedriveOptions {
  /** Decide and report, write nothing, take nothing off the queue. */
  dryRun: boolean;
  /** Most messages to look at in this run. */
  limit: number;
}

export interface RedriveReport {
  /** Messages whose task got a new outbox row (or, in a dry run, would have). */
  republished: number;
  /** Messages dropped, by why. */
  dropped: Record<string, number>;
}

/** What a re-drive did, as a line: `re-drove 2; dropped 1 task succeeded`. */
export function redriveSummary(report: RedriveReport, dryRun: boolean): string {
  const dropped = Object.entries(report.dropped).map(([why, n]) => `${n} ${why}`);
  return `${dryRun ? 'would re-drive' : 're-drove'} ${report.republished}; dropped ${dropped.join(', ') || 'none'}`;
}

/**
 * A re-drive cut short because RabbitMQ stopped answering or closed the channel, with what it had done:
 * the message in hand goes back to its queue unacked, and a run later takes up the rest.
 */
export class RedriveInterrupted extends Error {
  override name = 'RedriveInterrupted';
  constructor(
    readonly report: RedriveReport,
    dryRun: boolean,
    cause: unknown,
  ) {
    super(`RabbitMQ stopped the re-drive (${toError(cause).message}); until then it ${redriveSummary(report, dryRun)}`);
  }
}

type Verdict = { action: 'republish'; taskId: string } | { action: 'drop'; reason: string; taskId?: string };

/**
 * A stable id for the outbox row that re-drives a dead message: a second run that meets the same
 * message again (the first committed, then died before its ack) writes nothing new.
 */
function redriveMessageId(msg: GetMessage): string {
  const key = typeof msg.properties.messageId === 'string' ? msg.properties.messageId : msg.content.toString('base64');
  const hex = createHash('sha256').update(`taskbox redrive ${key}`).digest('hex');
  const variant = ((parseInt(hex[16] ?? '0', 16) & 0x3) | 0x8).toString(16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-5${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

async function taskStatus(db: Db, taskId: string, lock: boolean) {
  const { rows } = await sql<TaskRowForMessage & { status: TaskStatus }>`
    SELECT id, type, status, attempts, correlation_id, traceparent FROM tasks WHERE id = ${taskId}
    ${lock ? sql`FOR UPDATE` : sql``}`.execute(db);
  return rows[0];
}

/** Why the message was dead-lettered: the worker's reason header, else the broker's (x-death). */
function deadLetterReason(msg: GetMessage): string | undefined {
  const headers = msg.properties.headers ?? {};
  const ours: unknown = headers['x-dead-letter-reason'];
  if (typeof ours === 'string') return ours;
  const deaths: unknown = headers['x-death'];
  const first: unknown = Array.isArray(deaths) ? deaths[0] : undefined;
  const reason = (first as { reason?: unknown } | undefined)?.reason;
  return typeof reason === 'string' ? reason : undefined;
}

/** What to do with one dead message, from its body and its task as they are now. */
async function judge(db: Db, msg: GetMessage): Promise<Verdict> {
  const parsed = parseTaskMessage(msg.content);
  if (!parsed.ok) return { action: 'drop', reason: parsed.problem };
  const { taskId } = parsed.message;
  const task = await taskStatus(db, taskId, false);
  if (!task) return { action: 'drop', reason: 'unknown task', taskId };
  if (isTerminal(task.status)) return { action: 'drop', reason: `task ${task.status}`, taskId };
  // A row the relay has yet to publish (a schedule or a retry's backoff not due, or a backlog) brings
  // the task's next attempt at its time: another now would run it early.
  const { rows } = await sql`SELECT 1 FROM outbox WHERE task_id = ${taskId} AND published_at IS NULL LIMIT 1`.execute(
    db,
  );
  if (rows.length > 0) return { action: 'drop', reason: 'task already queued', taskId };
  return { action: 'republish', taskId };
}

/**
 * Republishes, in one transaction, the next attempt of a task that is still pending or processing,
 * under a message id derived from the dead one. Answers false when the task finished meanwhile.
 */
async function republish(db: Db, taskId: string, messageId: string): Promise<boolean> {
  return db.transaction().execute(async (tx) => {
    const task = await taskStatus(tx, taskId, true);
    if (!task || isTerminal(task.status)) return false;
    const m = nextAttemptMessage(task);
    await sql`${outboxInsert(sql`
      SELECT ${messageId}::uuid, ${m.task_id}::uuid, ${m.routing_key}, ${m.payload}::jsonb, ${m.headers}::jsonb, 0`)}
      ON CONFLICT (message_id) DO NOTHING`.execute(tx);
    return true;
  });
}

/**
 * Re-drives the dead-letter queue of every queue of the topology, in its order, up to `limit` messages
 * in all. A message whose task is still pending or processing goes back
 * through the outbox (a new row for the task's next attempt, which the relay publishes and the worker
 * runs or absorbs like any other); one whose task is finished or unknown, or that cannot be parsed, is
 * dropped. Either way one log line says which and why, and the message is acked only once its outcome
 * has committed: a run that dies half-way leaves the rest, and what it committed is not written twice.
 */
export async function redriveDeadLetters(
  db: Db,
  model: ChannelModel,
  topology: AmqpTopology,
  options: RedriveOptions,
  logger: Logger,
): Promise<RedriveReport> {
  const report: RedriveReport = { republished: 0, dropped: {} };
  let left = options.limit;
  for (const { deadQueue } of topology.queues) {
    if (left === 0) break;
    left -= await redriveQueue(db, model, deadQueue, { ...options, limit: left }, report, logger);
  }
  return report;
}

/** Re-drives up to `options.limit` messages of one dead-letter queue into `report`; returns how many it read. */
async function redriveQueue(
  db: Db,
  model: ChannelModel,
  deadQueue: string,
  options: RedriveOptions,
  report: RedriveReport,
  logger: Logger,
): Promise<number> {
  // Each answer of RabbitMQ (a channel, a message, a close) bounded: a broker gone silent (a half-open
  // connection) would hold each call until the heartbeat.
  const answer = <T>(call: Promise<T>): Promise<T> =>
    withTimeout(call, BROKER_ANSWER_MS, 'RabbitMQ').catch((err: unknown) => {
      throw new RedriveInterrupted(report, options.dryRun, err);
    });
  const ch = await answer(model.createChannel());
  // A channel the broker closes (a queue deleted) rejects the call in flight, which stops the re-drive.
  ch.on('error', () => undefined);
  let n = 0;
  try {
    for (; n < options.limit; n++) {
      const msg = await answer(ch.get(deadQueue, { noAck: false }));
      if (!msg) break;
      let verdict = await judge(db, msg);
      const messageId = redriveMessageId(msg);
      if (verdict.action === 'republish' && !options.dryRun && !(await republish(db, verdict.taskId, messageId))) {
        verdict = { action: 'drop', reason: 'task finished', taskId: verdict.taskId };
      }
      const context = {
        taskId: verdict.taskId,
        messageId: msg.properties.messageId as string | undefined,
        correlationId: msg.properties.correlationId as string | undefined,
        deadLetterReason: deadLetterReason(msg),
        deadQueue,
      };
      if (verdict.action === 'republish') {
        report.republished++;
        logger.info('dead letter re-driven', { ...context, newMessageId: messageId, dryRun: options.dryRun });
      } else {
        report.dropped[verdict.reason] = (report.dropped[verdict.reason] ?? 0) + 1;
        logger.info('dead letter dropped', { ...context, reason: verdict.reason, dryRun: options.dryRun });
      }
      if (!options.dryRun) ch.ack(msg);
    }
    // A dry run gives every message back. A quorum queue puts them at its back, and counts a delivery.
    if (options.dryRun) ch.nackAll(true);
  } finally {
    await answer(ch.close()).catch(() => undefined);
  }
  return n;
}
