import { STATUS_CODES } from 'node:http';
import type { ErrorRequestHandler, RequestHandler, Response } from 'express';
import {
  OverloadedError,
  errorCode,
  isStatementTimeout,
  isTransientDbError,
  toError,
  type Logger,
} from '@taskbox/shared';

/** An RFC 9457 problem: thrown by routes, rendered by `problemHandler`. */
export class HttpProblem extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail?: string,
    readonly extra: Record<string, unknown> = {},
    /** Sent as Retry-After: when a client that was turned away may try again. */
    readonly retryAfterSeconds?: number,
  ) {
    super(detail ?? title);
  }
}

export function sendProblem(res: Response, problem: HttpProblem): void {
  if (problem.retryAfterSeconds !== undefined) res.setHeader('Retry-After', String(problem.retryAfterSeconds));
  res
    .status(problem.status)
    .type('application/problem+json')
    .json({
      type: 'about:blank',
      title: problem.title,
      status: problem.status,
      ...(problem.detail ? { detail: problem.detail } : {}),
      // Without a stream token's value (stream-tokens.ts): a client's error tracker keeps what it is given.
      instance: res.req.originalUrl.replace(/([?&]token=)[^&]*/g, '$1redacted'),
      requestId: res.locals.requestId as string | undefined,
      ...problem.extra,
    });
}

export const notFoundHandler: RequestHandler = (req) => {
  throw new HttpProblem(404, 'Not Found', `no route for ${req.method} ${req.path}`);
};

/**
 * The last handler of a route: a method it does not take is 405 with the methods it does in `Allow`
 * (RFC 9110), not the 404 of a path that does not exist. Express answers HEAD as GET; OPTIONS (without
 * CORS, which answers it first) gets the same `Allow` and no body.
 */
export function allowOnly(...methods: string[]): RequestHandler {
  const allow = [...methods, ...(methods.includes('GET') ? ['HEAD'] : []), 'OPTIONS'].join(', ');
  return (req, res) => {
    res.setHeader('Allow', allow);
    if (req.method === 'OPTIONS') return void res.status(204).end();
    throw new HttpProblem(405, 'Method Not Allowed', `${req.method} ${req.originalUrl.split('?')[0]} takes ${allow}`);
  };
}

// body-parser marks its errors with `type` and `status`; they are the client's fault, never a 500.
const bodyParserProblems: Record<string, [number, string]> = {
  'entity.parse.failed': [400, 'Malformed JSON'],
  'entity.too.large': [413, 'Payload Too Large'],
  'encoding.unsupported': [415, 'Unsupported Encoding'],
  'charset.unsupported': [415, 'Unsupported Charset'],
  'request.aborted': [400, 'Request Aborted'],
  'stream.encoding.set': [500, 'Internal Server Error'],
};

/**
 * SQLSTATE class 22 (data exception): Postgres refused a value the request carried (a NUL, a bad
 * timestamp) that validation should have caught. Still the client's input, so 400 rather than 500;
 * the detail stays generic because Postgres' message quotes the query's types and values.
 */
function isDataException(err: unknown): boolean {
  return /^22[0-9A-Z]{3}$/.test(errorCode(err) ?? '');
}

/**
 * A table or column the api's statements name is missing (SQLSTATE 42P01, 42703): a database not
 * migrated for this build. Not the request's fault, and fixed by `npm run migrate`.
 */
function isSchemaMissing(err: unknown): boolean {
  return ['42P01', '42703'].includes(errorCode(err) ?? '');
}

/** How long after its last refusal an outage counts as over, and how often a long one is logged again. */
const OUTAGE_LOG_MS = 30_000;

/**
 * One warn line when requests start being refused for the database or for load, not one per request: at
 * a thousand requests a second an outage would flood the logs. While it lasts, a line every
 * OUTAGE_LOG_MS with how many were refused since; each request's own line is at debug.
 */
function createOutageLog(logger: Logger): (message: string, fields: Record<string, unknown>) => void {
  let lastLogged = 0;
  let lastRefused = 0;
  let refused = 0;
  return (message, fields) => {
    const now = Date.now();
    const newOutage = now - lastRefused > OUTAGE_LOG_MS;
    lastRefused = now;
    refused++;
    if (newOutage || now - lastLogged >= OUTAGE_LOG_MS) {
      logger.warn(newOutage ? message : `${message}: still`, { ...fields, refusedSinceLastLine: refused });
      lastLogged = now;
      refused = 0;
    } else logger.debug(message, fields);
  };
}

/**
 * The 503s a client may retry, each with its log line. A statement timeout is not an outage: Postgres
 * answered, but the statement ran past DB_STATEMENT_TIMEOUT_MS, behind a lock or on a busy server,
 * or because a list's filter reads too much of the table, which no retry helps.
 */
const refusals = {
  database: { message: 'database unavailable', detail: 'the database is unavailable; retry shortly' },
  overload: {
    message: 'request refused: too many waiting',
    detail: 'too many requests are waiting for the database; retry shortly',
  },
  schema: {
    message: 'database not migrated for this build: run npm run migrate',
    detail: 'the database is not ready for this version of the service; retry shortly',
  },
  timeout: {
    message: 'database statement timed out',
    detail:
      'the query ran past the time the database allows it (DB_STATEMENT_TIMEOUT_MS): a table is locked or ' +
      'the server is busy, and a retry may pass',
  },
};
const LIST_ADVICE = "; or a list's filters read too many tasks: narrow them (createdAfter, status, type)";
// A write sent before the database went silent may still commit when the network heals.
const WRITE_ADVICE = '; a write sent before may still have been accepted: retry with the same Idempotency-Key';

/** Which of the refusals (a 503 a client may retry) an error is, if any. */
function refusalKind(err: unknown): keyof typeof refusals | null {
  if (err instanceof OverloadedError) return 'overload';
  if (isSchemaMissing(err)) return 'schema';
  if (!isTransientDbError(err)) return null;
  return isStatementTimeout(err) ? 'timeout' : 'database';
}

/** Renders every error as problem+json; never leaks a stack trace. */
export function problemHandler(logger: Logger): ErrorRequestHandler {
  // Each kind of refusal is an outage of its own.
  const outages = {
    database: createOutageLog(logger),
    overload: createOutageLog(logger),
    schema: createOutageLog(logger),
    timeout: createOutageLog(logger),
  };
  return (err: unknown, req, res, next) => {
    if (res.headersSent) return next(err);
    if (err instanceof HttpProblem) return sendProblem(res, err);
    const type = (err as { type?: unknown }).type;
    const known = typeof type === 'string' ? bodyParserProblems[type] : undefined;
    if (known && known[0] < 500) return sendProblem(res, new HttpProblem(known[0], known[1], toError(err).message));
    // Express's router marks a path it cannot decode (e.g. /tasks/%) with status 400: the client's fault too.
    const status = (err as { status?: unknown }).status;
    if (typeof status === 'number' && status >= 400 && status < 500) {
      return sendProblem(res, new HttpProblem(status, STATUS_CODES[status] ?? 'Bad Request', toError(err).message));
    }
    const log = { requestId: res.locals.requestId as string, method: req.method, path: req.path };
    const kind = refusalKind(err);
    if (kind) {
      const { message, detail } = refusals[kind];
      outages[kind](message, { ...log, error: toError(err).message });
      // Only a read can be narrowed; only a write can be in doubt.
      const advice =
        kind === 'timeout' && req.method === 'GET'
          ? LIST_ADVICE
          : kind === 'database' && req.method === 'POST'
            ? WRITE_ADVICE
            : '';
      return sendProblem(res, new HttpProblem(503, 'Service Unavailable', detail + advice, {}, 2));
    }
    if (isDataException(err)) {
      logger.warn('database refused a value from the request', { ...log, error: toError(err).message });
      return sendProblem(
        res,
        new HttpProblem(400, 'Bad Request', 'the request contains a value that cannot be stored'),
      );
    }
    logger.error('unhandled error', { ...log, error: toError(err).message, stack: toError(err).stack });
    sendProblem(res, new HttpProblem(500, 'Internal Server Error', 'an unexpected error occurred'));
  };
}
