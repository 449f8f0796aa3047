import {
  type ColumnType,
  type Generated,
  Kysely,
  PostgresDialect,
  type PostgresCursor,
  type PostgresPool,
  type PostgresPoolClient,
  type PostgresQueryResult,
  type RawBuilder,
  sql,
} from 'kysely';
import pg from 'pg';
import { QUERY_READ_TIMEOUT, errorCode, toError } from './errors';
import type { Logger } from './logger';

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type Json = ColumnType<unknown, string, string>;

/** Every task status, the one list from which the type, the api's enums and the metrics' labels derive. */
export const taskStatuses = ['pending', 'processing', 'succeeded', 'failed', 'cancelled'] as const;
export type TaskStatus = (typeof taskStatuses)[number];
export const terminalStatuses: readonly TaskStatus[] = ['succeeded', 'failed', 'cancelled'];

/** A terminal task never changes again and never runs again. */
export function isTerminal(status: TaskStatus): boolean {
  return terminalStatuses.includes(status);
}

export interface TasksTable {
  id: string;
  type: string;
  payload: Json;
  status: Generated<TaskStatus>;
  current_step: string | null;
  progress: number | null;
  result: Json | null;
  error: Json | null;
  attempts: Generated<number>;
  max_attempts: Generated<number>;
  /** One attempt's time limit (migration 0009); null on older rows: the type's default applies. */
  timeout_ms: number | null;
  external_job_id: string | null;
  owner: string;
  idempotency_key: string | null;
  request_hash: string | null;
  correlation_id: string | null;
  /** The W3C traceparent of the request that created it (migration 0011), for the messages written later. */
  traceparent: string | null;
  /** Attempts a shutdown interrupted since the last retry, each not counted (migration 0012). */
  interrupted: Generated<number>;
  lease_until: Timestamp | null;
  cancel_requested_at: Timestamp | null;
  republished_at: Timestamp | null;
  /** When a scheduled task is due (runAt, or now plus delayMs at creation); null: as soon as possible. */
  run_at: Timestamp | null;
  // Set only through taskChanged (task-version.ts); bigint and xid8 arrive as strings.
  version: ColumnType<string, never, RawBuilder<string>>;
  changed_xid: ColumnType<string | null, never, RawBuilder<string>>;
  created_at: Timestamp;
  updated_at: Timestamp;
  started_at: Timestamp | null;
  finished_at: Timestamp | null;
}

export interface TaskAttemptsTable {
  task_id: string;
  attempt: number;
  external_job_id: string;
  started_at: Timestamp;
  finished_at: Timestamp | null;
  outcome: 'succeeded' | 'failed' | 'cancelled' | 'lost' | null;
  error: Json | null;
}

/** A retry an owner or an admin asked for (POST /tasks/{id}/retry): the timeline shows it. */
export interface TaskRetriesTable {
  task_id: string;
  /** 1 for a task's first retry, then 2, … */
  retry: number;
  /** The task's attempts when it was retried: its next attempt is this plus one. */
  after_attempt: number;
  requested_by: string;
  requested_at: Timestamp;
  idempotency_key: string | null;
}

export interface OutboxTable {
  // bigint arrives as a string; it stays a string rather than lose precision.
  id: Generated<string>;
  message_id: string;
  task_id: string;
  routing_key: string;
  payload: Json;
  headers: Json;
  available_at: Timestamp;
  locked_until: Timestamp | null;
  created_at: Timestamp;
  published_at: Timestamp | null;
  publish_attempts: Generated<number>;
  last_error: string | null;
}

/** An api process with requests waiting on task changes (migration 0010). */
export interface TaskWatchersTable {
  instance: string;
  until: Timestamp;
}

export interface Database {
  tasks: TasksTable;
  task_attempts: TaskAttemptsTable;
  task_retries: TaskRetriesTable;
  outbox: OutboxTable;
  task_watchers: TaskWatchersTable;
}

export type Db = Kysely<Database>;

export interface PoolOptions {
  max: number;
  /**
   * How long a statement may run on the server (DB_STATEMENT_TIMEOUT_MS): a held lock or an overloaded
   * server then fails the statement with 57014 instead of holding its caller. 0 turns it off (migrate).
   */
  statementTimeoutMs: number;
  /** How long a query may wait for a connection before it fails (and the api answers 503). */
  connectionTimeoutMillis?: number;
  /** Runs on each new connection before any query may use it (session settings). */
  onConnect?: (client: pg.ClientBase) => Promise<void>;
}

// Past the statement timeout, the server has answered unless it cannot be reached: a connection that
// went silent (half-open TCP, a blackholed route) gets this much longer before pg gives up on it.
const QUERY_TIMEOUT_MARGIN_MS = 1000;

/**
 * Session settings that only tune performance (the relay's and the worker's), as an onConnect: when
 * they fail, the connection is used without them and a warning says so, instead of every query on a
 * new connection failing.
 */
export function bestEffortSettings(
  apply: NonNullable<PoolOptions['onConnect']>,
  logger: Logger,
): NonNullable<PoolOptions['onConnect']> {
  return async (client) => {
    await apply(client).catch((err: unknown) => {
      logger.warn('could not apply the session settings; going on without them', { error: toError(err).message });
    });
  };
}

/**
 * A pool whose idle-client errors (a restarted server) are logged instead of crashing the process, and
 * whose every wait is bounded: the statement timeout on the server; pg's client-side query_timeout a
 * little later, for a server that never answers; and idle_in_transaction_session_timeout, so a client
 * that vanished inside a transaction does not hold its row locks until TCP gives up on it.
 */
export function createPool(url: string, logger: Logger, options: PoolOptions): pg.Pool {
  const timeout = options.statementTimeoutMs;
  const pool = new pg.Pool({
    connectionString: url,
    max: options.max,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 5000,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    ...(timeout > 0
      ? {
          statement_timeout: timeout,
          query_timeout: timeout + QUERY_TIMEOUT_MARGIN_MS,
          idle_in_transaction_session_timeout: timeout * 2,
        }
      : {}),
    onConnect: options.onConnect,
  });
  pool.on('error', (err) => logger.warn('idle postgres connection failed', { error: err.message }));
  // pg-pool listens for errors only on idle clients. A checked-out client whose socket is reset
  // (Postgres restarting) emits 'error' with no listener, which would crash the process; its query
  // still rejects, and that is where the failure is handled.
  pool.on('connect', (client) => {
    client.on('error', (err) => logger.debug('postgres connection failed while in use', { error: err.message }));
  });
  return pool;
}

export function createDb(pool: pg.Pool): Db {
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool: preparingPool(pool) }) });
}

/**
 * Marks a statement to be sent as the named prepared statement `name`; it must open the statement's
 * text: sql`${prepared('worker_finish')} WITH ...`. Each connection then parses the statement once, and
 * plans it once when Postgres keeps a generic plan (it does by itself when the plan cannot depend on
 * the parameters; the worker forces it). For the statements that run for every task: at a few rows per
 * statement, parsing and planning cost Postgres as much as running them. One name, one text; names
 * start with the package that owns the statement (api_, worker_, shared_). Prepared statements live in
 * a session: behind PgBouncer the services need session pooling (README).
 */
export function prepared(name: string): RawBuilder<unknown> {
  if (!/^\w+$/.test(name)) throw new Error(`prepared statement name must be letters, digits or _: ${name}`);
  return sql.raw(`/* prepared ${name} */`);
}

const preparedName = /^\/\* prepared (\w+) \*\//;

/**
 * Errors after which a connection cannot run its copy of a named statement again: 0A000, "cached plan
 * must not change result type" (a migration changed a column the statement returns), and 26000, the
 * server no longer has it. pg would keep sending the name on that connection, so it is closed instead.
 */
const stalePreparedCodes = new Set(['0A000', '26000']);

/**
 * Whether the connection that ran a failed query must be closed rather than reused: its copy of a
 * named statement is stale; pg's query_timeout gave up on a server that never answered (pg leaves
 * that query in flight on the connection, so every later query on it would wait behind it); or the
 * session is read-only (25006): a server that became a standby, or a session that began while
 * default_transaction_read_only was on, stays so for its life, while a new connection finds the
 * primary (through the URL's address) once writes are possible again.
 */
function spoilsConnection(err: unknown, named: boolean): boolean {
  if (named && stalePreparedCodes.has(errorCode(err) ?? '')) return true;
  return errorCode(err) === '25006' || toError(err).message === QUERY_READ_TIMEOUT;
}

/** The pool as Kysely sees it: a statement marked by prepared() goes out as a named statement. */
function preparingPool(pool: pg.Pool): PostgresPool {
  const clients = new WeakMap<pg.PoolClient, PostgresPoolClient>();
  const wrap = (client: pg.PoolClient): PostgresPoolClient => {
    let spoiled = false;
    function query<R>(text: string, values: readonly unknown[]): Promise<PostgresQueryResult<R>>;
    function query<R>(cursor: PostgresCursor<R>): PostgresCursor<R>;
    function query(
      text: string | PostgresCursor<unknown>,
      values: readonly unknown[] = [],
    ): Promise<PostgresQueryResult<unknown>> | PostgresCursor<unknown> {
      // Kysely passes a cursor only when the dialect has a cursor class, and createDb gives none.
      if (typeof text !== 'string') throw new Error('cursors are not supported');
      const name = preparedName.exec(text)?.[1];
      const result = client.query({ name, text, values: [...values] });
      // Runs before Kysely, which awaits the same promise and then releases the client.
      result.catch((err: unknown) => {
        if (spoilsConnection(err, name !== undefined)) spoiled = true;
      });
      // pg types `command` as any string; Postgres answers Kysely's statements with the ones it lists.
      return result as Promise<PostgresQueryResult<unknown>>;
    }
    return { query, release: () => client.release(spoiled) };
  };
  return {
    async connect() {
      const client = await pool.connect();
      // Kysely keeps per-client state keyed by this object, so each client keeps one wrapper.
      let wrapped = clients.get(client);
      if (!wrapped) clients.set(client, (wrapped = wrap(client)));
      return wrapped;
    },
    end: () => pool.end(),
  };
}
