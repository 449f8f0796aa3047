import { randomUUID, timingSafeEqual } from 'node:crypto';
import express, { type RequestHandler } from 'express';
import type pg from 'pg';
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { toError, type Db, type Logger, type OutboxNotifier } from '@taskbox/shared';
import { HttpProblem, notFoundHandler, problemHandler } from './problem';
import { tasksRouter } from './routes/tasks';

export interface AppDeps {
  db: Db;
  pool: pg.Pool;
  notifier: OutboxNotifier;
  logger: Logger;
  bodyLimit: string;
  /** token → owner; empty means authentication is off and every caller is ANONYMOUS_OWNER. */
  tokens: Map<string, string>;
}

export const ANONYMOUS_OWNER = 'anonymous';
const REQUEST_ID = /^[\w.:@/+=-]{1,128}$/;

/** Parses AUTH_TOKENS ("token:owner,token:owner") into a lookup. */
export function parseTokens(value: string | undefined): Map<string, string> {
  const tokens = new Map<string, string>();
  for (const pair of (value ?? '').split(',').filter(Boolean)) {
    const [token, ownerName] = pair.split(':');
    if (token && ownerName) tokens.set(token.trim(), ownerName.trim());
  }
  return tokens;
}

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
    next();
  };
}

function authenticate(tokens: Map<string, string>): RequestHandler {
  const known = [...tokens.entries()].map(([token, ownerName]) => [Buffer.from(token), ownerName] as const);
  return (req, res, next) => {
    if (tokens.size === 0) {
      res.locals.owner = ANONYMOUS_OWNER;
      return next();
    }
    const match = /^Bearer (.+)$/.exec(req.get('authorization') ?? '');
    const given = Buffer.from(match?.[1] ?? '');
    const found = known.find(([token]) => token.length === given.length && timingSafeEqual(token, given));
    if (!found) {
      res.setHeader('WWW-Authenticate', 'Bearer');
      throw new HttpProblem(401, 'Unauthorized', 'send a valid bearer token in the Authorization header');
    }
    res.locals.owner = found[1];
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
      // A router's root route is "/tasks/" by concatenation; label it as clients call it.
      const route = req.route ? `${req.baseUrl}${String(req.route.path)}`.replace(/(.)\/$/, '$1') : 'unmatched';
      const labels = { method: req.method, route, status: String(res.statusCode) };
      requests.inc(labels);
      end(labels);
    });
    next();
  };
}

/** Builds the api; main.ts listens on it, tests use port 0. */
export function buildApp(deps: AppDeps): { app: express.Express; registry: Registry } {
  const registry = new Registry();
  registry.setDefaultLabels({ service: 'api' });
  collectDefaultMetrics({ register: registry });

  const app = express();
  app.disable('x-powered-by');
  app.set('query parser', 'simple');
  app.use(requestId(), securityHeaders(), httpMetrics(registry));

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    try {
      await deps.pool.query('SELECT 1');
      res.json({ status: 'ready', checks: { postgres: true } });
    } catch (err) {
      res.status(503).json({ status: 'not ready', checks: { postgres: false }, error: toError(err).message });
    }
  });
  app.get('/metrics', async (_req, res) => {
    res.type(registry.contentType).send(await registry.metrics());
  });

  app.use(
    '/tasks',
    authenticate(deps.tokens),
    express.json({ limit: deps.bodyLimit, type: ['application/json', 'application/*+json'] }),
    tasksRouter(deps),
  );
  app.use(notFoundHandler);
  app.use(problemHandler(deps.logger));
  return { app, registry };
}
