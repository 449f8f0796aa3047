import {
  DummyDriver,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  sql,
  type RawBuilder,
} from 'kysely';
import { randomUUID } from 'node:crypto';
import {
  ANONYMOUS_OWNER,
  buildTaskInsert,
  findJsonIssue,
  isoInstant,
  requestHash,
  TASK_OPTION_LIMITS,
  taskColumns,
  type Database,
  type TaskRow,
  type TaskSchedule,
} from '@taskbox/shared';
import { findTaskType, taskTypeNames } from './index';

/** A node-postgres client (pg.Client or a pool's client) on which the caller ran BEGIN. */
export interface PgTransactionClient {
  query(text: string, values: unknown[]): Promise<{ rows: unknown[] }>;
}

/** A Kysely transaction (db.transaction().execute(tx => …)) or a pg client inside BEGIN … COMMIT. */
export type Executor = Kysely<Database> | PgTransactionClient;

export interface EnqueueRequest {
  type: string;
  payload?: unknown;
  maxAttempts?: number;
  timeoutMs?: number;
  /** Run at this time, not before (the relay publishes it when due); not with delayMs. A string is ISO 8601 with an offset. */
  runAt?: Date | string;
  /** Run this many ms after the caller's transaction began (Postgres's now()); not with runAt. */
  delayMs?: number;
  /** Whose task it is, as the api would see the caller (default "anonymous", the owner while auth is off). */
  owner?: string;
  /** Logged with the task by every service, like the api's X-Request-Id. */
  correlationId?: string | null;
  /** Per owner: a second enqueue with this key returns the first task instead of adding one. */
  idempotencyKey?: string;
}

/** A request enqueueTask refuses before it writes anything: unknown type, invalid payload, bad option. */
export class InvalidTaskError extends Error {
  override name = 'InvalidTaskError';
}

// Compiles statements for a pg client without a connection of its own; DummyDriver never connects.
const compiler = new Kysely<Database>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (db) => new PostgresIntrospector(db),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
});

/**
 * Told apart by shape, not instanceof: the caller's service may load its own copy of kysely, whose
 * transactions still execute these statements.
 */
function isKysely(executor: Executor): executor is Kysely<Database> {
  return 'isTransaction' in executor && typeof (executor as Kysely<Database>).executeQuery === 'function';
}

/**
 * Runs taskbox's statement in the caller's transaction, without the caller's plugins: a
 * CamelCasePlugin, say, would rename the columns of the rows the statement answers.
 */
async function run<R>(executor: Executor, statement: RawBuilder<R>): Promise<R[]> {
  if (isKysely(executor)) return (await statement.execute(executor.withoutPlugins())).rows;
  const { sql: text, parameters } = statement.compile(compiler);
  return (await executor.query(text, [...parameters])).rows as R[];
}

/**
 * Refuses an executor whose writes would commit on their own: the point of enqueueTask is that the task
 * commits or rolls back with the caller's rows. node-postgres records the transaction status of every
 * ReadyForQuery in `_txStatus` ('T' inside a transaction; not a public field, so a client without it is
 * asked, one round trip: inside BEGIN, the transaction started before this statement did).
 */
async function assertInTransaction(executor: Executor): Promise<void> {
  if (isKysely(executor)) {
    if (!executor.isTransaction) throw new Error('enqueueTask needs a transaction: pass the tx of db.transaction()');
    return;
  }
  const status = (executor as { _txStatus?: unknown })._txStatus;
  const inside = typeof status === 'string' ? status === 'T' : await startedBefore(executor);
  if (!inside) throw notInTransaction();
}

const notInTransaction = (cause?: unknown): Error =>
  new Error('enqueueTask needs a pg client inside a transaction (after BEGIN, not failed)', { cause });

/**
 * The insert's error, or the refusal of a failed transaction when Postgres says it is one (25P02): pg
 * may reject a failed statement before it reads the status that follows, so `_txStatus` can lag.
 */
function insertError(err: unknown): never {
  throw (err as { code?: unknown }).code === '25P02' ? notInTransaction(err) : err;
}

/** Whether the client's transaction started before this statement: true only after a BEGIN. */
async function startedBefore(executor: Executor): Promise<boolean> {
  const query = sql<{ inside: boolean }>`SELECT transaction_timestamp() < statement_timestamp() AS inside`;
  const [row] = await run(executor, query);
  return row?.inside === true;
}

function checkOption(name: keyof typeof TASK_OPTION_LIMITS, value: number | undefined, fallback: number): number {
  const { min, max } = TASK_OPTION_LIMITS[name];
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new InvalidTaskError(`${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** The api's schedule checks, without its caps (SCHEDULE_*), which guard against untrusted callers. */
function scheduleOf({ runAt, delayMs }: EnqueueRequest): TaskSchedule {
  if (runAt !== undefined && delayMs !== undefined) throw new InvalidTaskError('give runAt or delayMs, not both');
  if (delayMs !== undefined) {
    if (!Number.isInteger(delayMs) || delayMs < 0) throw new InvalidTaskError('delayMs must be an integer >= 0');
    if (!withinYears(new Date(Date.now() + delayMs))) {
      throw new InvalidTaskError(`delayMs ends past the year 9999: ${delayMs}`);
    }
    return { delayMs };
  }
  if (runAt === undefined) return null;
  // As POST /tasks takes it: a string without an offset would be read in this process's time zone.
  if (typeof runAt === 'string' && !isoInstant.safeParse(runAt).success) {
    throw new InvalidTaskError(`runAt must be ISO 8601 with an offset, as 2026-12-08T09:00:00Z: ${runAt}`);
  }
  const at = new Date(runAt);
  if (!withinYears(at)) throw new InvalidTaskError(`runAt is not a time from year 1 to 9999: ${String(runAt)}`);
  return { runAt: at.toISOString() };
}

/**
 * Whether a due time is in years 1 to 9999. Postgres refuses some later ones, aborting the caller's
 * transaction, and stores others past JavaScript's dates, which no view of the task could show.
 */
function withinYears(at: Date): boolean {
  const year = at.getUTCFullYear();
  return year >= 1 && year <= 9999;
}

export interface Enqueued {
  task: TaskRow;
  /** False when the owner's idempotency key was used before: `task` is that first task. */
  created: boolean;
}

/**
 * Adds a task inside the caller's own transaction, so that the caller's rows and the task commit
 * together or not at all: the transactional outbox for another service's data. It writes with the api's
 * own statement (buildTaskInsert: the task row, its outbox row, and the relay's wake-up, which Postgres
 * delivers at the commit), after the checks POST /tasks makes: a registered type, its payload schema,
 * the option bounds, and the api's checks of its body (findJsonIssue: text Postgres cannot store, a key
 * named __proto__, nesting past MAX_JSON_DEPTH). Throws InvalidTaskError before writing anything, so the
 * caller's transaction stays usable; a Postgres error aborts it like any failed statement.
 */
export async function enqueueTask(executor: Executor, request: EnqueueRequest): Promise<Enqueued> {
  const definition = findTaskType(request.type);
  if (!definition) {
    throw new InvalidTaskError(`unknown task type "${request.type}" (known: ${taskTypeNames.join(', ')})`);
  }
  // Checked before the schema, as the api checks its body: zod drops a key named __proto__, and text
  // Postgres refuses would fail the insert, aborting the caller's transaction.
  const issue = findJsonIssue(request.payload);
  if (issue) {
    throw new InvalidTaskError(
      `invalid payload for "${definition.name}": ${issue.path || '(payload)'}: ${issue.message}`,
    );
  }
  // An explicit null is a payload (as in POST /tasks); only a missing one defaults to {}.
  const payload = definition.payload.safeParse(request.payload === undefined ? {} : request.payload);
  if (!payload.success) {
    const issues = payload.error.issues.map((i) => `${i.path.join('.') || '(payload)'}: ${i.message}`);
    throw new InvalidTaskError(`invalid payload for "${definition.name}": ${issues.join('; ')}`);
  }
  const maxAttempts = checkOption('maxAttempts', request.maxAttempts, definition.maxAttempts);
  const timeoutMs = checkOption('timeoutMs', request.timeoutMs, definition.timeoutMs);
  const owner = request.owner ?? ANONYMOUS_OWNER;
  if (owner.length === 0 || owner.length > 300) throw new InvalidTaskError('owner must be 1 to 300 characters');
  const schedule = scheduleOf(request);
  const key = request.idempotencyKey;
  if (key !== undefined && (key.length === 0 || key.length > 200)) {
    throw new InvalidTaskError('idempotencyKey must be 1 to 200 characters');
  }
  await assertInTransaction(executor);

  const type = definition.name;
  const idempotencyKey = request.idempotencyKey ?? null;
  const hashed = { type, payload: payload.data, maxAttempts, timeoutMs: request.timeoutMs, schedule };
  const task = {
    id: randomUUID(),
    type,
    payload: payload.data,
    maxAttempts,
    timeoutMs,
    schedule,
    owner,
    idempotencyKey,
    requestHash: idempotencyKey ? requestHash(hashed) : null,
  };
  const { statement, answer } = buildTaskInsert([{ task, context: { correlationId: request.correlationId ?? null } }]);
  const [inserted] = answer(await run(executor, statement).catch(insertError));
  if (inserted) return { task: inserted.task, created: true };
  const [first] = await run(
    executor,
    sql<TaskRow>`SELECT ${sql.join(taskColumns.map((c) => sql.ref(c)))} FROM tasks
      WHERE owner = ${owner} AND idempotency_key = ${idempotencyKey}`,
  );
  if (!first) throw new Error(`the task of idempotency key "${idempotencyKey}" vanished`);
  if (first.request_hash !== task.requestHash) {
    throw new InvalidTaskError(`idempotency key "${idempotencyKey}" was used with a different request`);
  }
  return { task: first, created: false };
}
