import { PermanentError, toError, type Logger, type TaskContext } from '@taskbox/shared';
import type { AnyTaskType } from '@taskbox/tasks';
import type { Orphans } from './orphans';

/** How an attempt that ran past its time limit is recorded (error.name on the task and the attempt). */
export class TimeoutError extends Error {
  override name = 'TimeoutError';
}

/** Thrown by runHandler for a run given up on; the caller records the attempt from the abort reason. */
export class RunAbandoned extends Error {
  override name = 'RunAbandoned';
}

export interface RunLimits {
  /** How long a run may go on after its signal aborted (WORKER_TIMEOUT_GRACE_MS). */
  graceMs: number;
  /** The largest result stored, as JSON (WORKER_RESULT_MAX_BYTES). */
  resultMaxBytes: number;
  orphans: Orphans;
  logger: Logger;
}

/**
 * Calls the type's `run` and answers its result as JSON text, checked against the type's result schema
 * and size.
 *
 * THE GRACE. Once the run's signal aborts (a timeout, a cancel, the shutdown, a lost lease), `run` has
 * `graceMs` to return. A run that ignores its signal has not: JavaScript cannot stop a promise, so the
 * run is handed to `orphans` and left to finish in the background, and this rejects with RunAbandoned,
 * which lets the caller record the attempt and settle the delivery, freeing its slot. Whatever the
 * orphan does later is discarded: its progress writes and the finish are fenced by attempt number, and
 * nobody awaits its result. A synchronous loop that never yields blocks the whole process instead; no
 * timer fires then, and the lease fence (leases.ts) hands the task to another worker.
 */
export async function runHandler(
  definition: AnyTaskType,
  ctx: TaskContext<unknown>,
  limits: RunLimits,
): Promise<string> {
  const run = startRun(definition, ctx);
  const value = await settleWithin(run, ctx.signal, limits.graceMs);
  if (value === abandoned) {
    limits.orphans.adopt(run, limits.logger);
    throw new RunAbandoned(
      `the run did not return within ${limits.graceMs} ms of its signal (${String(ctx.signal.reason)})`,
    );
  }
  return resultJson(checkResult(definition, value), limits.resultMaxBytes);
}

/**
 * `run(ctx)` as a promise of the worker's own, rejected with an Error, whatever the handler returns (a
 * thenable whose `then` misbehaves) or throws (a string, a Proxy): the worker's checks of what a run
 * threw (`instanceof`) throw on a Proxy, and an abandoned run is followed through its promise.
 */
function startRun(definition: AnyTaskType, ctx: TaskContext<unknown>): Promise<unknown> {
  try {
    return Promise.resolve(definition.run(ctx)).catch((err: unknown) => Promise.reject(toError(err)));
  } catch (err) {
    return Promise.reject(toError(err));
  }
}

const abandoned = Symbol('abandoned');

/** `run`'s outcome, or `abandoned` once `signal` has been aborted for `graceMs` without one. */
function settleWithin<T>(run: Promise<T>, signal: AbortSignal, graceMs: number): Promise<T | typeof abandoned> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort = (): void => undefined;
  const gaveUp = new Promise<typeof abandoned>((resolve) => {
    onAbort = () => (timer = setTimeout(() => resolve(abandoned), graceMs));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  return Promise.race([run, gaveUp]).finally(() => {
    clearTimeout(timer);
    signal.removeEventListener('abort', onAbort);
  });
}

/**
 * The value `run` returned, if the type declares what it returns and the value fits; otherwise a
 * PermanentError naming what does not fit: the same code would return the same value on a retry.
 */
export function checkResult(definition: AnyTaskType, value: unknown): unknown {
  if (!definition.result) return value;
  const parsed = definition.result.safeParse(value);
  if (parsed.success) return parsed.data;
  const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(result)'}: ${i.message}`).join('; ');
  throw new PermanentError(`the result of "${definition.name}" does not match its result schema: ${issues}`);
}

/**
 * The result as the JSON text the finish stores (undefined is null), or a PermanentError: when JSON
 * cannot write it (a BigInt, a cycle), or when the text is larger than `maxBytes`. A result of a hundred
 * megabytes would be sent to Postgres again and again, each time until the statement timeout, holding
 * the slot and the finishes batched with it, and then served whole by every GET of the task. A text
 * Postgres refuses (a NUL character) is left to the finish, which fails the task with Postgres's reason.
 */
export function resultJson(value: unknown, maxBytes: number): string {
  let text: string;
  try {
    // A function, a symbol, a toJSON answering undefined: JSON writes nothing, stored as null.
    text = JSON.stringify(value) ?? 'null';
  } catch (err) {
    throw new PermanentError(`the result is not JSON: ${toError(err).message}`);
  }
  const bytes = Buffer.byteLength(text);
  if (bytes <= maxBytes) return text;
  throw new PermanentError(
    `the result is ${bytes} bytes of JSON, over WORKER_RESULT_MAX_BYTES (${maxBytes}): ` +
      'store a large output elsewhere and return where it is',
  );
}
