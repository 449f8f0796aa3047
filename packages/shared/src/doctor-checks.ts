import amqp, { type ChannelModel } from 'amqplib';
import type pg from 'pg';
import { connectOptions } from './broker-nodes';
import { redactUrl } from './config';
import type { Db } from './db';
import { errorCode, toError } from './errors';
import { withTimeout } from './lifecycle';
import { createMigrator } from './migrate';
import { outboxBacklog } from './outbox';
import {
  longProcessing,
  longTransactions,
  pendingPublished,
  pendingUnpublished,
  recentlyRepublished,
  refusedPublishes,
  unroutableByType,
  type StuckTasks,
} from './doctor-sql';

export type CheckStatus = 'ok' | 'warn' | 'fail';

/** The checks, in the order a task travels: stored, migrated schema, broker, queue, relay, worker. */
export const checkNames = {
  database: 'database reachable',
  migrations: 'migrations current',
  longTransactions: 'long transactions',
  broker: 'broker reachable',
  topology: 'topology declared',
  consumers: 'consumers on the queues',
  backlog: 'outbox backlog',
  pendingUnpublished: 'pending, not published',
  unroutable: 'publishes of unknown types',
  refused: 'publishes refused by the broker',
  pendingPublished: 'pending, published',
  republished: 'stranded tasks republished',
  processing: 'processing too long',
  noHandler: 'tasks no worker could run',
  deadLetters: 'dead letters',
  retiredQueues: 'retired queues',
} as const;

export interface CheckResult {
  name: string;
  status: CheckStatus;
  detail: string;
  /** What to do about it; printed for warn and fail. */
  hint: string;
  /** What the check counted, where it counts one thing (unpublished rows, dead letters), for a dashboard. */
  count?: number;
}

export const result = (name: string, status: CheckStatus, detail: string, hint = ''): CheckResult => ({
  name,
  status,
  detail,
  hint,
});

/** Seconds as a short human duration: 45s, 12m, 3h. */
export function formatAge(seconds: number): string {
  if (seconds < 120) return `${Math.round(seconds)}s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)}m`;
  return `${Math.round(seconds / 3600)}h`;
}

export async function checkDatabase(pool: pg.Pool, url: string): Promise<CheckResult> {
  const name = checkNames.database;
  try {
    const { rows } = await pool.query<{ v: string }>("SELECT current_setting('server_version') AS v");
    return result(name, 'ok', `PostgreSQL ${rows[0]?.v ?? '?'} at ${redactUrl(url)}`);
  } catch (err) {
    const missing = errorCode(err) === '3D000';
    return result(
      name,
      'fail',
      `${redactUrl(url)}: ${toError(err).message}`,
      missing ? 'run `npm run migrate`: it creates the database' : 'start Postgres or fix DATABASE_URL',
    );
  }
}

export async function checkMigrations(db: Db): Promise<CheckResult> {
  const name = checkNames.migrations;
  try {
    const migrations = await createMigrator(db).getMigrations();
    const pending = migrations.filter((m) => m.executedAt === undefined).map((m) => m.name);
    if (pending.length > 0) {
      return result(name, 'fail', `${pending.length} not applied: ${pending.join(', ')}`, 'run `npm run migrate`');
    }
    return result(name, 'ok', `${migrations.length} applied, latest ${migrations.at(-1)?.name ?? '(none)'}`);
  } catch (err) {
    return result(name, 'fail', toError(err).message, 'run `npm run build` (migrations are compiled), then migrate');
  }
}

/**
 * Connects once without recovery to the first node that answers: the doctor wants to know whether the
 * broker answers now. A node that did not answer before it is a warning: the cluster runs short.
 */
export async function connectBroker(
  urls: readonly string[],
): Promise<{ check: CheckResult; model: ChannelModel | null }> {
  const name = checkNames.broker;
  const failures: string[] = [];
  for (const url of urls) {
    try {
      // With the services' heartbeat (10 s unless the URL names one), not the server's 60 s.
      const model = await amqp.connect(connectOptions(url), { timeout: 3000 });
      model.on('error', () => undefined);
      const detail = [...failures, `RabbitMQ at ${redactUrl(url)}`].join('; ');
      const check = result(name, failures.length > 0 ? 'warn' : 'ok', detail, 'start the nodes that do not answer');
      return { check, model };
    } catch (err) {
      failures.push(`${redactUrl(url)}: ${toError(err).message}`);
    }
  }
  return {
    check: result(name, 'fail', failures.join('; '), 'start RabbitMQ or fix AMQP_URL / AMQP_URLS'),
    model: null,
  };
}

/** Closes what connectBroker opened, without waiting on a broker gone silent. */
export async function closeBroker(model: ChannelModel | null): Promise<void> {
  if (model) await withTimeout(model.close(), 3000, 'RabbitMQ').catch(() => undefined);
}

export async function checkOutboxBacklog(db: Db, pendingMs: number): Promise<CheckResult> {
  const { count, oldestAgeSeconds } = await outboxBacklog(db);
  const detail = `${count} unpublished, oldest due ${formatAge(oldestAgeSeconds)} ago`;
  if (count > 0 && oldestAgeSeconds * 1000 > pendingMs) {
    const hint = 'the relay is behind or stopped: check its /readyz and logs';
    return { ...result(checkNames.backlog, 'warn', detail, hint), count };
  }
  return { ...result(checkNames.backlog, 'ok', count === 0 ? 'empty' : detail), count };
}

function stuck(name: string, status: CheckStatus, s: StuckTasks, what: string, hint: string): CheckResult {
  if (s.count === 0) return result(name, 'ok', `none ${what}`);
  const detail = `${s.count} ${what}, oldest ${formatAge(s.oldestSeconds)} (task ${s.example ?? '?'})`;
  return result(name, status, detail, hint);
}

export async function checkPendingUnpublished(db: Db, pendingMs: number): Promise<CheckResult> {
  return stuck(
    checkNames.pendingUnpublished,
    'fail',
    await pendingUnpublished(db, pendingMs),
    `pending over ${formatAge(pendingMs / 1000)} without a published message`,
    'relay problem: is the relay running and connected? Its /readyz and its warn lines say why it cannot ' +
      "publish ('relay cannot drain the outbox', 'outbox rows not published'); at LOG_LEVEL=debug it logs each row by task id",
  );
}

export async function checkPendingPublished(db: Db, pendingMs: number, republishMs: number): Promise<CheckResult> {
  return stuck(
    checkNames.pendingPublished,
    'fail',
    await pendingPublished(db, pendingMs),
    `pending over ${formatAge(pendingMs / 1000)} after publishing`,
    'worker or queue problem: is a worker consuming this AMQP_PREFIX? grep its logs for the task id; ' +
      `if the broker lost the message, the relay republishes it ${formatAge(republishMs / 1000)} after publishing`,
  );
}

/**
 * Unpublished rows the broker returned as unroutable: a type no relay or worker has bound yet (an api
 * deployed before them). Each failed try pushes the row's available_at on, so the checks counting from
 * it never see these; this one counts from created_at.
 */
export async function checkUnroutable(db: Db): Promise<CheckResult> {
  const name = checkNames.unroutable;
  const types = await unroutableByType(db);
  const count = types.reduce((sum, t) => sum + t.count, 0);
  if (count === 0) return { ...result(name, 'ok', 'none returned unroutable'), count };
  const oldest = Math.max(...types.map((t) => t.oldestSeconds));
  const byType = types.map((t) => `${t.count} of type ${t.type}`).join(', ');
  const detail = `${byType} returned unroutable, oldest created ${formatAge(oldest)} ago`;
  const hint =
    'no queue is bound to these types, so their tasks wait in the outbox: deploy relays and workers ' +
    'that know these types before the api (either declares the binding when it connects)';
  return { ...result(name, 'fail', detail, hint), count };
}

/**
 * Unpublished rows whose publishes the broker keeps refusing (three tries or more): a queue at its length
 * limit that rejects publishes, a memory or disk alarm, a silent node. As with unroutable rows, each try
 * pushes available_at on, so this counts from created_at, and fails once the oldest is older than
 * `pendingMs`.
 */
export async function checkRefused(db: Db, pendingMs: number): Promise<CheckResult> {
  const name = checkNames.refused;
  const r = await refusedPublishes(db);
  if (r.count === 0) return { ...result(name, 'ok', 'none refused'), count: 0 };
  const detail =
    `${r.count} refused, oldest created ${formatAge(r.oldestSeconds)} ago ` +
    `(task ${r.example ?? '?'}: ${r.error ?? '?'})`;
  if (r.oldestSeconds * 1000 <= pendingMs)
    return { ...result(name, 'ok', `${detail}; retried with backoff`), count: r.count };
  const hint =
    'their tasks wait in the outbox: look for a full queue that rejects publishes (x-max-length with ' +
    "reject-publish), a memory or disk alarm, in RabbitMQ's logs; the relay's /readyz and logs say when " +
    'it cannot publish at all. Each row is retried with backoff, so nothing is lost';
  return { ...result(name, 'fail', detail, hint), count: r.count };
}

const DAY_MS = 86_400_000;

/** Says when the relay's reconciler acted: each time, the broker had lost a task's message. */
export async function checkRepublished(db: Db): Promise<CheckResult> {
  const name = checkNames.republished;
  const r = await recentlyRepublished(db, DAY_MS);
  if (r.count === 0) return result(name, 'ok', 'none in the last 24h');
  return result(
    name,
    'warn',
    `${r.count} in the last 24h, latest ${formatAge(r.latestSeconds)} ago (task ${r.example ?? '?'})`,
    'the broker lost their messages (a purged or deleted queue, the delivery limit, a lost volume), ' +
      "or they waited behind a backlog for 12 times REPUBLISH_AFTER_MS: grep the relay's logs for " +
      "'stranded task republished' (its reason says which)",
  );
}

export async function checkLongProcessing(db: Db, processingMs: number): Promise<CheckResult> {
  return stuck(
    checkNames.processing,
    'warn',
    await longProcessing(db, processingMs),
    `processing over ${formatAge(processingMs / 1000)}`,
    'a handler may hang: grep the worker logs for the task id, or POST /tasks/{id}/cancel',
  );
}

/**
 * A transaction open for long holds back vacuum (the outbox and tasks bloat, and the relay's claims
 * slow down) and the list streams' watermark; one that holds a lock others wait on stops tasks where
 * they are (the api answers 503, the relay cannot drain, the worker cannot record): then a fail.
 */
export async function checkLongTransactions(db: Db, ms: number): Promise<CheckResult> {
  const name = checkNames.longTransactions;
  const { count, oldest, blocked } = await longTransactions(db, ms);
  if (count === 0 || !oldest) return result(name, 'ok', `none open over ${formatAge(ms / 1000)}`);
  const waiting = blocked > 0 ? `; ${blocked} sessions wait on their locks` : '';
  const detail =
    `${count} open over ${formatAge(ms / 1000)}, oldest ${formatAge(oldest.seconds)} ` +
    `(pid ${oldest.pid}, ${oldest.state ?? 'state hidden'}, application '${oldest.application}')${waiting}`;
  const end = 'finish it, or end it with SELECT pg_terminate_backend(pid)';
  if (blocked > 0) return result(name, 'fail', detail, `it holds locks taskbox waits on, so tasks stop moving: ${end}`);
  return result(name, 'warn', detail, `it holds back vacuum and the list streams' event ids: ${end}`);
}
