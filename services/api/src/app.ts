import { randomUUID } from 'node:crypto';
import cors from 'cors';
import express, { type RequestHandler } from 'express';
import type pg from 'pg';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import {
  cachedLoader,
  countReuseMs,
  postgresReadiness,
  type Db,
  type Logger,
  type TaskNotifier,
} from '@taskbox/shared';
import { authenticate, type AuthConfig } from './auth';
import type { StreamBounds, StreamTiming } from './event-stream';
import { dashboardRouter, type DashboardFiles } from './dashboard';
import { examplePageRouter, type ExamplePage } from './example-page';
import { createHeldRequests, type HeldKind, type HeldRequests, type LongPollLimits } from './held-requests';
import { createListStreams } from './list-streams';
import { jsonParser } from './json-body';
import { openApiDocument } from './openapi';
import { allowOnly, notFoundHandler, problemHandler } from './problem';
import { adminRouter, type AdminSettings } from './routes/admin';
import { streamsRouter } from './routes/streams';
import { tasksRouter } from './routes/tasks';
import { createStreamTokens } from './stream-tokens';
import { createSystemChecks } from './system-checks';
import { countTasks } from './bulk-sql';
import type { TaskEvents } from './task-events';
import { viewer } from './viewer';
import type { ScheduleLimits } from './schedule';

export interface AppDeps {
  db: Db;
  pool: pg.Pool;
  taskNotifier: TaskNotifier;
  events: TaskEvents;
  logger: Logger;
  bodyLimit: string;
  /** No token settings means authentication is off and every caller is ANONYMOUS_OWNER. */
  auth: AuthConfig;
  /** Origins a browser may call from ("*" for any); empty sends no CORS headers at all. */
  corsOrigins: string[];
  /** Caps long polls and streams together. */
  longPoll: LongPollLimits;
  streams: StreamSettings;
  /** Served at /example/ when given (EXAMPLE_PAGE=true). */
  examplePage?: ExamplePage;
  /** Served at /dashboard/ when given (DASHBOARD, on by default). */
  dashboard?: DashboardFiles;
  admin: AdminSettings;
  /** The bounds of runAt and delayMs on POST /tasks. */
  schedule: ScheduleLimits;
  /** DEMO_FAULTS; unset, on outside production. */
  demoFaults: boolean;
}

export interface StreamSettings {
  timing: StreamTiming;
  /** What a stream may hold for a client that reads slowly or not at all (event-stream.ts). */
  bounds: StreamBounds;
  /** Signs stream tokens; without it each process draws its own key (stream-tokens.ts). */
  tokenSecret: string | undefined;
  tokenTtlMs: number;
}

// Counts scan an owner's tasks (an admin's, every task): pages that poll them share one count a second,
// or longer on a large table (countReuseMs), which bounds their cost.
const COUNTS_REUSE_MS = 1000;

const REQUEST_ID = /^[\w.:@/+=-]{1,128}$/;

function requestId(): RequestHandler {
  return (req, res, next) => {
    const given = req.get('x-request-id');
    const id = given && REQUEST_ID.test(given) ? given : randomUUID();
    res.locals.requestId = id;
    res.setHeader('X-Request-Id', id);
    next();
  };
}

function securityHeaders(): RequestHandler {
  return (_req, res, next) => {
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.setHeader('X-Frame-Options', 'DENY');
    res.setHeader('Referrer-Policy', 'no-referrer');
    res.setHeader('Cache-Control', 'no-store');
    // The api serves JSON only: nothing it returns may run scripts or be framed.
    res.setHeader('Content-Security-Policy', "default-src 'none'; frame-ancestors 'none'");
    next();
  };
}

function httpMetrics(registry: Registry): RequestHandler {
  const labelNames = ['method', 'route', 'status'] as const;
  const requests = new Counter({
    name: 'http_requests_total',
    help: 'HTTP requests',
    labelNames,
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'HTTP request latency',
    labelNames,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  return (req, res, next) => {
    const end = duration.startTimer();
    res.on('finish', () => {
      // The mount as noted on the way in (an error leaves its router with req.baseUrl reset). A router's
      // root route is "/tasks/" by concatenation; label it as clients call it.
      const mount = typeof res.locals.mount === 'string' ? res.locals.mount : req.baseUrl;
      const route = req.route ? `${mount}${String(req.route.path)}`.replace(/(.)\/$/, '$1') : 'unmatched';
      const labels = { method: req.method, route, status: String(res.statusCode) };
      requests.inc(labels);
      end(labels);
    });
    next();
  };
}

/** Notes a router's mount for httpMetrics, which labels a response by its route after the router is done. */
const noteMount: RequestHandler = (req, res, next) => {
  res.locals.mount = req.baseUrl;
  next();
};

function heldGauges(registry: Registry, held: HeldRequests): void {
  const gauges: [string, string, HeldKind][] = [
    ['http_long_polls_waiting', 'GET /tasks/{id}?wait= requests waiting for a change', 'long poll'],
    ['http_streams_open', 'Server-Sent Event streams open (GET /tasks/{id}/events, GET /tasks/events)', 'stream'],
  ];
  for (const [name, help, kind] of gauges) {
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(held.count(kind));
      },
    });
  }
}

/** /me, the tasks (streams first: /tasks/events is not an id) and the admin endpoints. */
function useTaskRoutes(app: express.Express, deps: AppDeps, held: HeldRequests): void {
  // Who the token says the caller is: a page shows admin controls only to admins (the api checks anyway).
  app
    .route('/me')
    .get(authenticate(deps.auth), (_req, res) => {
      res.json(viewer(res));
    })
    .all(allowOnly('GET'));
  app.use(
    '/tasks',
    noteMount,
    streamsRouter({
      ...deps,
      held,
      lists: createListStreams(deps.db, deps.events, deps.logger),
      tokens: createStreamTokens(deps.streams.tokenSecret, deps.streams.tokenTtlMs),
      timing: deps.streams.timing,
      bounds: deps.streams.bounds,
    }),
  );
  const json = jsonParser(deps.bodyLimit);
  // Keyed by owner; '' stands for every owner, since no owner is empty.
  const countsOf = cachedLoader(
    COUNTS_REUSE_MS,
    async (owner) => {
      const at = new Date();
      return { counts: await countTasks(deps.db, owner === '' ? null : owner), at };
    },
    ({ counts }) => countReuseMs(counts.reduce((sum, c) => sum + c.count, 0)),
  );
  const counts = (owner: string | null) => countsOf(owner ?? '');
  app.use('/tasks', noteMount, authenticate(deps.auth), json, tasksRouter({ ...deps, held, counts }));
  const checks = createSystemChecks(deps.admin.doctor, deps.pool, deps.db);
  app.use('/admin', noteMount, authenticate(deps.auth), json, adminRouter({ ...deps, settings: deps.admin, checks }));
}

/** Builds the api; main.ts listens on it, tests use port 0. */
export function buildApp(deps: AppDeps): { app: express.Express; registry: Registry } {
  const registry = new Registry();
  registry.setDefaultLabels({ service: 'api' });
  collectDefaultMetrics({ register: registry });
  const held = createHeldRequests(deps.db, deps.longPoll);
  heldGauges(registry, held);

  const app = express();
  app.disable('x-powered-by');
  app.set('query parser', 'simple');
  app.use(requestId(), securityHeaders(), httpMetrics(registry));
  if (deps.corsOrigins.length > 0) {
    app.use(
      cors({
        origin: deps.corsOrigins.includes('*') ? '*' : deps.corsOrigins,
        // Without these a browser script cannot read the headers a frontend needs (Retry-After: when to
        // try again after a 429 or 503, which the client waits for).
        exposedHeaders: ['Location', 'X-Request-Id', 'Idempotent-Replayed', 'Retry-After'],
        maxAge: 600,
      }),
    );
  }
  const document = openApiDocument();
  const postgresReady = postgresReadiness(deps.pool, deps.logger, { writes: false });
  const gets: Record<string, express.RequestHandler> = {
    '/openapi.json': (_req, res) => void res.json(document),
    '/healthz': (_req, res) => void res.json({ status: 'ok' }),
    '/readyz': async (_req, res) => {
      const postgres = await postgresReady();
      res.status(postgres ? 200 : 503).json({ status: postgres ? 'ready' : 'not ready', checks: { postgres } });
    },
    '/metrics': async (_req, res) => void res.type(registry.contentType).send(await registry.metrics()),
  };
  for (const [path, handler] of Object.entries(gets)) app.route(path).get(handler).all(allowOnly('GET'));

  useTaskRoutes(app, deps, held);
  if (deps.examplePage) app.use('/example', examplePageRouter(deps.examplePage));
  if (deps.dashboard) app.use('/dashboard', dashboardRouter(deps.dashboard));
  app.use(notFoundHandler);
  app.use(problemHandler(deps.logger));
  return { app, registry };
}
