import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import { closeServer, createTaskNotifier, loadConfig } from '@taskbox/shared';
import { buildApp, type AppDeps } from '../../services/api/src/app';
import { createServer, type HttpLimits } from '../../services/api/src/server';
import { createTaskEvents, type TaskEvents } from '../../services/api/src/task-events';
import { createWatcherRegistration } from '../../services/api/src/watcher-registration';
import { findTask } from '../../services/api/src/task-sql';
import { amqpUrl, testPrefix } from './amqp';
import { createTestDatabase, quietLogger, type TestDatabase } from './db';

export interface TestApi {
  app: http.RequestListener;
  database: TestDatabase;
  events: TaskEvents;
  /** Reads of a task row made for long polls (first reads and shared reads) that have ended. */
  taskReads(): number;
  /**
   * Listens on a loopback port, through the api's own server and limits (the configured defaults unless
   * overridden), for clients other than supertest (fetch, long polls, raw sockets); returns the base URL.
   */
  listen(limits?: Partial<HttpLimits>): Promise<string>;
  /** Connections the listening server holds open now. */
  connections(): Promise<number>;
  close(): Promise<void>;
}

const defaults = loadConfig({});

/** The configured bounds of a stream's queue and blocked writes, for tests that set their own stream settings. */
export const streamBounds = { maxQueuedBytes: defaults.STREAM_MAX_QUEUED_BYTES, stallMs: defaults.STREAM_STALL_MS };

export interface TestApiOptions {
  /** Where the api LISTENs, given the test database's URL: e.g. through a fault proxy in front of it. */
  listenVia?: (databaseUrl: string) => string;
  /** The resync of watched tasks; off unless a test sets it, so reads are counted exactly. */
  resyncMs?: number | null;
  /** The AMQP_PREFIX of the admin endpoints (re-drive, checks); a fresh one by default, which reaches nothing. */
  amqpPrefix?: string;
  bulkMax?: number;
}

/** The api built in-process (as main.ts builds it) on its own test database, auth off unless overridden. */
export async function startTestApi(overrides: Partial<AppDeps> = {}, options: TestApiOptions = {}): Promise<TestApi> {
  const database = await createTestDatabase();
  const db = overrides.db ?? database.db;
  const taskNotifier = createTaskNotifier(database.pool, quietLogger);
  let taskReads = 0;
  // Counted when a read ends, so a test that saw the count rise knows the reader has its row.
  const events = createTaskEvents(
    options.listenVia?.(database.url) ?? database.url,
    quietLogger,
    (viewer, id) => findTask(db, viewer, id).finally(() => taskReads++),
    createWatcherRegistration(database.db, quietLogger),
    { resyncMs: options.resyncMs ?? null },
  );
  events.start();
  const { app } = buildApp({
    db: database.db,
    pool: database.pool,
    taskNotifier,
    events,
    logger: quietLogger,
    bodyLimit: '16kb',
    auth: {},
    corsOrigins: [],
    longPoll: { max: defaults.LONG_POLL_MAX, maxPerOwner: defaults.LONG_POLL_MAX_PER_OWNER },
    streams: {
      timing: { heartbeatMs: defaults.STREAM_HEARTBEAT_MS, retryMs: 2000 },
      bounds: streamBounds,
      tokenSecret: undefined,
      tokenTtlMs: defaults.STREAM_TOKEN_TTL_MS,
    },
    admin: {
      doctor: {
        ...defaults,
        DATABASE_URL: database.url,
        AMQP_URL: amqpUrl(),
        AMQP_PREFIX: options.amqpPrefix ?? testPrefix(),
      },
      bulkMax: options.bulkMax ?? defaults.BULK_ACTION_MAX,
    },
    schedule: { maxAheadMs: defaults.SCHEDULE_MAX_AHEAD_MS, pastSkewMs: defaults.SCHEDULE_PAST_SKEW_MS },
    demoFaults: true,
    ...overrides,
  });
  let server: http.Server | null = null;
  return {
    app,
    database,
    events,
    taskReads: () => taskReads,
    async listen(limits = {}) {
      // A second server would replace the first in close(), which would then leave it listening.
      if (server) throw new Error('listen() once per test api; keep the URL it returned');
      const s = createServer(app, {
        headersTimeoutMs: defaults.HTTP_HEADERS_TIMEOUT_MS,
        requestTimeoutMs: defaults.HTTP_REQUEST_TIMEOUT_MS,
        maxConnections: defaults.HTTP_MAX_CONNECTIONS,
        ...limits,
      });
      server = s;
      await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
      return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
    },
    connections() {
      return new Promise((resolve, reject) =>
        server ? server.getConnections((err, n) => (err ? reject(err) : resolve(n))) : resolve(0),
      );
    },
    async close() {
      await events.stop();
      if (server) await closeServer(server);
      await taskNotifier.stop();
      await database.drop();
    },
  };
}
