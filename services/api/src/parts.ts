import type { RequestListener } from 'node:http';
import {
  createDb,
  createPool,
  createTaskNotifier,
  redactUrl,
  resource,
  serverPart,
  type Config,
  type Logger,
  type ServerPart,
  type Service,
} from '@taskbox/shared';
import { buildApp, type AppDeps } from './app';
import { authStartProblem } from './auth';
import { dashboardFromRepo } from './dashboard';
import { examplePageFromRepo } from './example-page';
import { createServer } from './server';
import { createTaskEvents } from './task-events';
import { createWatcherRegistration } from './watcher-registration';
import { findTask } from './task-sql';

/** The api's parts, in start order, and its "api listening" line once they have started. */
export interface ApiParts {
  parts: Service[];
  logStarted(): void;
}

/** Throws when the configuration's auth settings are invalid: the api must not start open by mistake. */
export function apiParts(config: Config, logger: Logger): ApiParts {
  const authProblem = authStartProblem(config);
  if (authProblem) throw new Error(`invalid configuration:\n  ${authProblem}`);
  // connectionTimeoutMillis also bounds the wait for a free pooled client. POSTs share two statements
  // (createTaskInserter), so only a database that holds every connection (a locked table, a hung
  // server) makes a request wait here; with the inserter's 2 s and the statement timeout, a POST is
  // answered within 12 s. A database that is really down refuses connections at once, answered 503.
  const pool = createPool(config.DATABASE_URL, logger, {
    max: config.PG_POOL_SIZE,
    connectionTimeoutMillis: 3000,
    statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
  });
  const db = createDb(pool);
  const taskNotifier = createTaskNotifier(pool, logger);
  const registration = createWatcherRegistration(db, logger);
  const events = createTaskEvents(config.DATABASE_URL, logger, (viewer, id) => findTask(db, viewer, id), registration);
  const app = appFor(config, { db, pool, taskNotifier, events, logger });
  const server = httpServer(config, app);
  // Started in this order, stopped in reverse: long polls and streams are released first (polls answer
  // with the current view, streams end), or closing the server would wait for them.
  return {
    parts: [resource(() => db.destroy()), resource(() => taskNotifier.stop()), server, events],
    logStarted: () => logger.info('api listening', listening(config, server)),
  };
}

/** What the "api listening" line says: where it listens and what it serves. */
function listening(config: Config, server: ServerPart): Record<string, unknown> {
  return {
    port: server.port(),
    database: redactUrl(config.DATABASE_URL),
    ...(config.EXAMPLE_PAGE ? { examplePage: '/example/' } : {}),
    ...(config.DASHBOARD ? { dashboard: '/dashboard/' } : {}),
    auth: config.AUTH_JWKS_URL ? 'jwks' : config.AUTH_JWT_SECRET ? 'jwt' : config.AUTH_TOKENS ? 'tokens' : 'off',
  };
}

// How long an EventSource waits before it reconnects after a cut: short enough that a progress bar
// barely stalls.
const STREAM_RETRY_MS = 2000;

/** The pages the api serves, as configured; one whose files are missing stops the start. */
function pages(config: Config): Pick<AppDeps, 'examplePage' | 'dashboard'> {
  return {
    examplePage: config.EXAMPLE_PAGE ? examplePageFromRepo(__dirname) : undefined,
    dashboard: config.DASHBOARD ? dashboardFromRepo(__dirname) : undefined,
  };
}

/** The app, with its settings from the configuration. */
function appFor(config: Config, parts: Pick<AppDeps, 'db' | 'pool' | 'taskNotifier' | 'events' | 'logger'>) {
  return buildApp({
    ...parts,
    bodyLimit: config.BODY_LIMIT,
    auth: config,
    corsOrigins: config.CORS_ORIGINS,
    longPoll: { max: config.LONG_POLL_MAX, maxPerOwner: config.LONG_POLL_MAX_PER_OWNER },
    streams: {
      timing: { heartbeatMs: config.STREAM_HEARTBEAT_MS, retryMs: STREAM_RETRY_MS },
      bounds: { maxQueuedBytes: config.STREAM_MAX_QUEUED_BYTES, stallMs: config.STREAM_STALL_MS },
      tokenSecret: config.STREAM_TOKEN_SECRET,
      tokenTtlMs: config.STREAM_TOKEN_TTL_MS,
    },
    ...pages(config),
    admin: { doctor: config, bulkMax: config.BULK_ACTION_MAX },
    schedule: { maxAheadMs: config.SCHEDULE_MAX_AHEAD_MS, pastSkewMs: config.SCHEDULE_PAST_SKEW_MS },
    demoFaults: demoFaultsOn(config),
  }).app;
}

/** DEMO_FAULTS; unset, on everywhere but production, where any caller could use them against the workers. */
export function demoFaultsOn(config: Pick<Config, 'DEMO_FAULTS' | 'NODE_ENV'>): boolean {
  return config.DEMO_FAULTS ?? config.NODE_ENV !== 'production';
}

/** The HTTP server part, with its timeouts and connection cap from the configuration. */
function httpServer(config: Config, app: RequestListener) {
  return serverPart(
    createServer(app, {
      headersTimeoutMs: config.HTTP_HEADERS_TIMEOUT_MS,
      requestTimeoutMs: config.HTTP_REQUEST_TIMEOUT_MS,
      maxConnections: config.HTTP_MAX_CONNECTIONS,
    }),
    config.PORT,
  );
}
