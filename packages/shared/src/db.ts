import { type ColumnType, type Generated, Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import type { Logger } from './logger';

// bigint (outbox.id) arrives as a string; keep it a string rather than lose precision.
type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type Json = ColumnType<unknown, string, string>;

export type TaskStatus = 'pending' | 'processing' | 'succeeded' | 'failed' | 'cancelled';
export const terminalStatuses: readonly TaskStatus[] = ['succeeded', 'failed', 'cancelled'];

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
  external_job_id: string | null;
  owner: string;
  idempotency_key: string | null;
  request_hash: string | null;
  correlation_id: string | null;
  lease_until: Timestamp | null;
  cancel_requested_at: Timestamp | null;
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

export interface OutboxTable {
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

export interface Database {
  tasks: TasksTable;
  task_attempts: TaskAttemptsTable;
  outbox: OutboxTable;
}

export type Db = Kysely<Database>;

export interface PoolOptions {
  max: number;
  /** How long a query may wait for a connection before it fails (and the api answers 503). */
  connectionTimeoutMillis?: number;
  /** Runs on each new connection before any query may use it (session settings). */
  onConnect?: (client: pg.ClientBase) => Promise<void>;
}

/** A pool whose idle-client errors (a restarted server) are logged instead of crashing the process. */
export function createPool(url: string, logger: Logger, options: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: options.max,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 5000,
    idleTimeoutMillis: 30_000,
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
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
}
