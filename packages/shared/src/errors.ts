import { inspect, types } from 'node:util';
import { storableText } from './storable-text';

/**
 * True for any Error, also one made in another realm (node core's socket errors fail `instanceof
 * Error` inside jest's sandbox, and would be reported as 500 instead of 503 there).
 */
export function isError(value: unknown): value is Error {
  try {
    return value instanceof Error || types.isNativeError(value);
  } catch {
    // A Proxy whose getPrototypeOf trap throws, or a revoked one: nothing of it can be read as an Error's.
    return false;
  }
}

/** Turns anything thrown into an Error, so callers can rely on .message. */
export function toError(value: unknown): Error {
  if (isError(value)) return value;
  return new Error(describe(value));
}

/** A thrown value that is not an Error as text: JSON where it has one, else as Node prints it (a cycle, a BigInt). */
function describe(value: unknown): string {
  if (typeof value === 'string') return value;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return readText(() => inspect(value, { depth: 2 }), 'a thrown value that cannot be described');
  }
}

/** Work refused before it was started, because too much is already waiting: retry later. */
export class OverloadedError extends Error {
  override name = 'OverloadedError';
}

/**
 * The error of a task the worker that received it has no handler for (a worker older than the api);
 * the doctor looks for it.
 */
export const NO_HANDLER = 'no handler for task type';
/** How the relay's last_error begins on a row the broker nacked, and on one it never confirmed. */
export const NACKED = 'nacked by broker';
export const UNCONFIRMED = 'no confirm within';
/** The relay's last_error on an outbox row the broker returned (no queue bound to its routing key). */
export const UNROUTABLE = 'returned as unroutable';
export const noHandlerError = (type: string): Error => new Error(`${NO_HANDLER} "${type}"`);

// The longest error name and message stored, in UTF-16 code units; the rest is cut. Every read of the
// task serves the error (its view, each attempt of its timeline, the list) and each attempt logs it: a
// handler that threw 150 MB of text made its last finish outrun the statement timeout, so the task
// ended as a lost run, with the handler's own error nowhere.
const ERROR_NAME_MAX = 200;
const ERROR_MESSAGE_MAX = 8192;

/**
 * The JSON stored in tasks.error and task_attempts.error. Text Postgres cannot store is replaced, a name
 * or message that throws when read (a getter, a toString) is described, and a long one is cut, saying
 * so: none of these must make the failure itself unrecordable.
 */
export function errorJson(value: unknown): { name: string; message: string } {
  const err = toError(value);
  return {
    name: boundedText(
      readText(() => err.name, 'Error'),
      ERROR_NAME_MAX,
    ),
    message: boundedText(
      readText(() => err.message, 'an error whose message throws when read'),
      ERROR_MESSAGE_MAX,
    ),
  };
}

function boundedText(text: string, max: number): string {
  // storableText after the cut: a cut through a surrogate pair leaves half of it, which it replaces.
  if (text.length <= max) return storableText(text);
  return `${storableText(text.slice(0, max))}… [cut: ${text.length} characters in all]`;
}

function readText(read: () => unknown, fallback: string): string {
  try {
    return String(read());
  } catch {
    return fallback;
  }
}

// SQLSTATE classes and codes that mean "try again later", not "your request is wrong":
// 08 connection exception, 53 insufficient resources, 57P01-57P03 admin shutdown / crash shutdown /
// cannot connect now (the database is unavailable); 25006 read-only transaction (the server is a
// standby, as after a failover until the services reach the new primary); 57014 query canceled
// (DB_STATEMENT_TIMEOUT_MS ran out, as behind a held lock); 55P03 lock not available (lock_timeout);
// 54000 program limit exceeded, only with a full NOTIFY queue ("too many notifications"): the same
// code also refuses a value that is too large, which no retry fixes. 40001 serialization failure,
// 40P01 deadlock: this statement lost a conflict with another. 3D000 no such database and class 28
// (invalid authorization: a wrong password, an unknown role) refuse every connection: nothing can be
// done until an operator mends the database or the settings, so a worker holds its deliveries rather
// than burning their delivery limit, and the api answers 503 rather than 500.
const unavailablePgCodes = new Set(['57P01', '57P02', '57P03', '25006', '57014', '55P03', '3D000']);
const unavailablePgClasses = new Set(['08', '28', '53']);
const conflictPgCodes = new Set(['40001', '40P01']);
// The host itself gone (a failover moving the database's address) fails with EHOSTUNREACH or ENETUNREACH.
const unavailableNodeCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
]);

/** The message of pg's client-side query_timeout: the server never answered in time (createPool). */
export const QUERY_READ_TIMEOUT = 'Query read timeout';

// Errors pg and pg-pool raise without a code when the server cannot be reached or never answers.
const unavailableMessage = new RegExp(
  `Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|${QUERY_READ_TIMEOUT}`,
  'i',
);

/** The code a thrown value carries (a SQLSTATE from Postgres, an errno name from Node), if any. */
export function errorCode(value: unknown): string | undefined {
  const code = (value as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** True when Postgres cannot be reached or is overloaded: every statement would fail the same way now. */
export function isDbUnavailable(value: unknown): boolean {
  if (!isError(value)) return false;
  const code = errorCode(value);
  if (code !== undefined) {
    if (unavailablePgCodes.has(code) || unavailableNodeCodes.has(code)) return true;
    if (code.length === 5 && unavailablePgClasses.has(code.slice(0, 2))) return true;
    if (code === '54000' && /notification/i.test(value.message)) return true;
    // A Unix socket whose file is gone: the server stopped.
    if (code === 'ENOENT' && (value as { syscall?: unknown }).syscall === 'connect') return true;
  }
  return unavailableMessage.test(value.message);
}

/**
 * The connection broke after a statement was sent (reset, ended, its backend terminated): a write may
 * have committed before the answer was lost. Not a refusal (read-only, a lock, a statement timeout),
 * after which Postgres rolled it back; not a failure to connect, before which nothing was sent; nor a
 * server that stopped answering (QUERY_READ_TIMEOUT), which a lookup would wait for as long again.
 */
export function mayHaveCommitted(value: unknown): boolean {
  if (!isError(value)) return false;
  const code = errorCode(value);
  if (code === 'ECONNRESET' || code === '57P01') return true;
  return /Connection terminated unexpectedly/i.test(value.message);
}

/**
 * Postgres answered, but the statement ran past DB_STATEMENT_TIMEOUT_MS: behind a lock, or on a busy
 * server. Not an outage. 57014 is also a cancel by pg_cancel_backend ("canceling statement due to user
 * request"), which is.
 */
export function isStatementTimeout(value: unknown): boolean {
  return errorCode(value) === '57014' && /statement timeout/.test(toError(value).message);
}

/** True when a database error means "try again later" (unavailable, or a lost conflict), not that the query was wrong. */
export function isTransientDbError(value: unknown): boolean {
  if (!isError(value)) return false;
  const code = errorCode(value);
  return isDbUnavailable(value) || (code !== undefined && conflictPgCodes.has(code));
}
