import type { Problem } from './types.js';

/**
 * Every failure as a value: the api's problem+json fields when it answered, or why there was no
 * answer. `status` is 0 then; `invalid` is a request the client could not send (nothing was sent);
 * `callback` is the caller's own `onChange` that threw (watchTask stopped there; `cause` is what it threw).
 */
export interface ClientError {
  kind: 'problem' | 'network' | 'aborted' | 'timeout' | 'invalid' | 'callback';
  status: number;
  title: string;
  detail?: string;
  type?: string;
  instance?: string;
  requestId?: string;
  issues?: Problem['issues'];
  knownTypes?: string[];
  /** From Retry-After: when the api expects a retry to succeed. */
  retryAfterSeconds?: number;
  /** With `callback`: the value the caller's callback threw, as it threw it. */
  cause?: unknown;
}

export type Result<T> = { data: T; error?: undefined } | { data?: undefined; error: ClientError };

export function networkError(cause: unknown): ClientError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return { kind: 'network', status: 0, title: 'Network Error', detail };
}

/** A request that cannot be sent as asked (a body JSON cannot write, an invalid Date): no retry fixes it. */
export function invalidError(detail: string): ClientError {
  return { kind: 'invalid', status: 0, title: 'Invalid Request', detail };
}

/** The caller's callback threw: not the api's failure nor the network's, and no retry fixes it. */
export function callbackError(cause: unknown): ClientError {
  let detail: string;
  try {
    detail = cause instanceof Error ? cause.message : String(cause);
  } catch {
    // String() throws for an object without a prototype; `cause` still has it.
    detail = 'a value with no text';
  }
  return { kind: 'callback', status: 0, title: 'Callback Threw', detail, cause };
}

/** Why `signal` aborted: a timeout (AbortSignal.timeout) or the caller. */
export function abortError(signal: AbortSignal): ClientError {
  // By name: a DOMException from another realm (a worker, a test sandbox) fails instanceof.
  const reason = signal.reason as { name?: unknown } | undefined;
  const timedOut = reason?.name === 'TimeoutError';
  return timedOut ? { kind: 'timeout', status: 0, title: 'Timeout' } : { kind: 'aborted', status: 0, title: 'Aborted' };
}

/** The error of a response that is not 2xx; a body that is not problem+json still gives status and title. */
export async function problemError(response: Response): Promise<ClientError> {
  const retryAfter = Number(response.headers.get('retry-after') ?? NaN);
  const base: ClientError = {
    kind: 'problem',
    status: response.status,
    title: response.statusText || `HTTP ${response.status}`,
    ...(Number.isFinite(retryAfter) ? { retryAfterSeconds: retryAfter } : {}),
  };
  try {
    const body = (await response.json()) as Partial<Problem>;
    return { ...base, ...body, kind: 'problem', status: response.status };
  } catch {
    return base;
  }
}

/**
 * Answers that a retry may fix: the network, the api saying it is briefly unavailable (429, 503), or a
 * gateway in front of it that could not reach it or gave up waiting (502, 504): the api may still have
 * done the work, which an idempotent retry then answers.
 */
export const isTransient = (error: ClientError): boolean =>
  error.kind === 'network' || [429, 502, 503, 504].includes(error.status);
