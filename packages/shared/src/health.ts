import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type pg from 'pg';
import type { Registry } from 'prom-client';
import { errorCode, toError } from './errors';
import { migrationsDir, shippedMigrations } from './migrate';
import { withTimeout, type Service } from './lifecycle';
import type { Logger } from './logger';

export type ReadinessCheck = () => Promise<Record<string, boolean>>;

export interface ReadinessOptions {
  /**
   * Whether Postgres must take writes. The relay and the worker do nothing without them. The api says
   * no: on a read-only server it still reads and answers each write 503 problem+json with Retry-After,
   * where every replica unready at once would leave its Service with no endpoint at all.
   */
  writes: boolean;
  /** Where this build's compiled migrations are. */
  dir?: string;
  /** How long a probe waits for Postgres before it answers not ready (READINESS_TIMEOUT_MS). */
  timeoutMs?: number;
}

/**
 * A probe answers within this: a half-open connection would otherwise hold it for the statement timeout
 * and its margin (6 s by default), past an orchestrator's own probe timeout (Kubernetes: 1 s by default,
 * commonly raised to a few). A healthy probe is two short reads: milliseconds, even on a loaded server.
 */
export const READINESS_TIMEOUT_MS = 2000;

/**
 * Every service's readiness probe of Postgres: true when it answers, holds every migration this build
 * ships, and (`writes`) takes writes, so a replica started before `npm run migrate`, or a relay or worker
 * left on a read-only server, reports it. Migrations it does not know are fine: a newer build applies
 * them during a rolling upgrade. Logs each change of state, an unreachable Postgres with its error (a
 * wrong password, a refused connection), which nothing else logs. Probes that overlap share one check; a
 * check that takes longer than `timeoutMs` answers not ready, and it logs once it ends, with why.
 */
export function postgresReadiness(
  pool: pg.Pool,
  logger: Logger,
  { writes, dir = migrationsDir, timeoutMs = READINESS_TIMEOUT_MS }: ReadinessOptions,
): () => Promise<boolean> {
  let shipped: Promise<string[]> | undefined;
  // What the last answer logged: '' ready, else why not.
  let state = '';
  const enter = (next: string, log: () => void): void => {
    if (next !== state) log();
    state = next;
  };
  let checking: Promise<boolean> | null = null;
  const check = async (): Promise<boolean> => {
    let names: string[];
    try {
      names = await (shipped ??= shippedMigrations(dir));
    } catch (err) {
      shipped = undefined;
      const reason = toError(err).message;
      enter(`unreadable: ${reason}`, () =>
        logger.error("not ready: cannot list this build's migrations, run npm run build", { error: reason }),
      );
      return false;
    }
    const schema = await readSchema(pool, names);
    if ('error' in schema) {
      const { error, code } = schema;
      // By kind (a refused connection, a wrong password), not by text, which may vary within one outage.
      enter(`unreachable: ${code}`, () => logger.warn('not ready: Postgres does not answer', { error }));
      return false;
    }
    if (writes && schema.readOnly) {
      enter('read-only', () => logger.warn('not ready: Postgres refuses writes (a standby, or read-only mode)'));
      return false;
    }
    const missing = names.filter((name) => !schema.applied.has(name));
    enter(missing.join(), () => {
      if (missing.length > 0) logger.warn('not ready: migrations not applied, run npm run migrate', { missing });
      else
        logger.info(`ready: Postgres ${writes ? 'takes writes and ' : ''}has every migration of this build`, {
          latest: names.at(-1),
        });
    });
    return missing.length === 0;
  };
  return () => {
    checking ??= check().finally(() => (checking = null));
    return withTimeout(checking, timeoutMs, 'Postgres').catch(() => false);
  };
}

/**
 * Whether the session takes writes, and which of `names` are applied; why not when Postgres does not
 * answer. A read-only session is closed, not pooled: it stays read-only for its life (db.ts,
 * spoilsConnection), and the probe would keep finding it after the server takes writes again.
 */
async function readSchema(
  pool: pg.Pool,
  names: string[],
): Promise<{ readOnly: boolean; applied: Set<string> } | { error: string; code: string }> {
  const failure = (err: unknown) => ({ error: toError(err).message, code: errorCode(err) ?? 'no code' });
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    return failure(err);
  }
  let readOnly = false;
  let broken = false;
  try {
    const { rows } = await client.query<{ read_only: boolean }>(
      "SELECT current_setting('transaction_read_only') = 'on' AS read_only",
    );
    readOnly = rows[0]?.read_only === true;
    const applied = await client.query<{ name: string }>(
      'SELECT name FROM kysely_migration WHERE name = ANY($1::text[])',
      [names],
    );
    return { readOnly, applied: new Set(applied.rows.map((r) => r.name)) };
  } catch (err) {
    // 42P01: no kysely_migration table, a database never migrated. Anything else: the connection failed.
    if (errorCode(err) === '42P01') return { readOnly, applied: new Set() };
    broken = true;
    return failure(err);
  } finally {
    client.release(readOnly || broken);
  }
}

export interface ServerPart extends Service {
  /** The port it listens on, once started (port 0 picks a free one). */
  port(): number;
}

/** An HTTP server as a part of a service: start listens on `port`, stop closes it. */
export function serverPart(server: http.Server, port: number): ServerPart {
  return {
    start: () => listen(server, port),
    stop: () => closeServer(server),
    port: () => (server.address() as AddressInfo).port,
  };
}

/**
 * /healthz (alive), /readyz (its dependencies usable: 200 or 503) and /metrics, for relay and worker.
 * /metrics serves each registry in turn: the all-in-one process serves the relay's and the worker's.
 */
export function createHealthServer(
  port: number,
  ready: ReadinessCheck,
  registries: readonly Registry[],
  logger: Logger,
): ServerPart {
  const server = http.createServer((req, res) => {
    const send = (status: number, type: string, body: string): void => {
      res.writeHead(status, { 'content-type': type }).end(body);
    };
    // As the api answers its errors (RFC 9457). Node leaves a body out of the answer to a HEAD.
    const problem = (status: number, detail: string): void => {
      const title = http.STATUS_CODES[status] ?? 'Error';
      send(status, 'application/problem+json', JSON.stringify({ type: 'about:blank', title, status, detail }));
    };
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const known = ['/healthz', '/readyz', '/metrics'].includes(path);
    if (known && req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return problem(405, `${req.method} ${path} takes GET, HEAD`);
    }
    if (path === '/healthz') return send(200, 'application/json', JSON.stringify({ status: 'ok' }));
    if (path === '/readyz') {
      ready().then(
        (checks) => {
          const ok = Object.values(checks).every(Boolean);
          send(ok ? 200 : 503, 'application/json', JSON.stringify({ status: ok ? 'ready' : 'not ready', checks }));
        },
        (err: unknown) =>
          send(503, 'application/json', JSON.stringify({ status: 'not ready', error: toError(err).message })),
      );
      return;
    }
    if (path === '/metrics') {
      Promise.all(registries.map((registry) => registry.metrics())).then(
        (texts) => send(200, registries[0]?.contentType ?? 'text/plain', texts.join('')),
        (err: unknown) => problem(500, toError(err).message),
      );
      return;
    }
    problem(404, `no route for ${req.method} ${path}`);
  });
  const part = serverPart(server, port);
  return {
    ...part,
    async start() {
      await part.start();
      logger.info('health server listening', { port: part.port() });
    },
  };
}

/** Resolves once listening, rejects on a bind error (EADDRINUSE) instead of logging success. */
export function listen(server: http.Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * Stops taking connections and resolves once every open one has ended. A keep-alive connection busy at
 * the close would otherwise carry its client's next requests for good, up to the shutdown deadline and
 * its cut of requests in flight: each request from now on is answered with `Connection: close`, and a
 * connection whose response was written out whole waits at most IDLE_CLOSE_MS for another request
 * (Node's keep-alive timer, which starts only then: a large answer to a slow client is never cut).
 */
export function closeServer(server: http.Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    // First of the listeners, so that the header is set before a route can answer synchronously.
    server.prependListener('request', (_req: http.IncomingMessage, res: http.ServerResponse) => {
      if (!res.headersSent) res.setHeader('connection', 'close');
    });
    server.keepAliveTimeout = Math.min(server.keepAliveTimeout || IDLE_CLOSE_MS, IDLE_CLOSE_MS);
    server.close(() => resolve());
    server.closeIdleConnections();
  });
}

// How long a closing server's connection waits for another request once its response is written.
const IDLE_CLOSE_MS = 1000;
