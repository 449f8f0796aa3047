import type { z } from 'zod';
import type { BackoffPolicy } from './lifecycle';
import type { Logger } from './logger';

/** The queue a task type uses unless its definition names another. */
export const DEFAULT_QUEUE = 'tasks';

/** What a task type's `run` gets for one attempt. */
export interface TaskContext<P> {
  taskId: string;
  payload: P;
  attempt: number;
  logger: Logger;
  /**
   * Aborted when the task is cancelled, its time is up (timeoutMs), or the worker shuts down; pass it to
   * every call that takes one, and check it in long loops. A run that ignores it is given up on after
   * the worker's grace (README, "Timeouts").
   */
  signal: AbortSignal;
  step(name: string): Promise<void>;
  progress(fraction: number): Promise<void>;
}

/**
 * A task type, defined in one file: its name, what its payload must look like, its defaults, and the
 * code that runs it. The api reads only the schema and defaults; the worker calls `run`.
 */
export interface TaskTypeDefinition<N extends string = string, P = unknown, R = unknown> {
  name: N;
  /** Checked by the api (422 at the door) and again by the worker before `run`. */
  payload: z.ZodType<P>;
  /** The RabbitMQ queue its messages go to (DEFAULT_QUEUE unless the type needs its own). */
  queue: string;
  /** Attempts when the request does not say. */
  maxAttempts: number;
  /** One attempt's time limit when the request does not say (TASK_OPTION_LIMITS). */
  timeoutMs: number;
  /** The wait before each retry; without it, the worker's RETRY_BASE_MS and RETRY_MAX_MS. */
  backoff?: BackoffPolicy;
  /** What `run` must return; the worker checks it, and a mismatch fails the task (PermanentError). */
  result?: z.ZodType<R>;
  /**
   * Whether a payload makes the run misbehave on purpose, as a demonstration (a sleep that ignores its
   * signal): the api refuses it unless DEMO_FAULTS is on, which it is not in production.
   */
  demoFault?(payload: P): boolean;
  run(ctx: TaskContext<P>): Promise<R>;
}

/** The bounds of a task's options, for the api (422 beyond them), enqueueTask and the definitions. */
export const TASK_OPTION_LIMITS = {
  maxAttempts: { min: 1, max: 100 },
  /** From 100 ms (tests, fast calls) to a day: longer work belongs in steps of its own. */
  timeoutMs: { min: 100, max: 86_400_000 },
} as const;

/** A type's default time limit: generous, because the cost of a limit too short is a retry loop. */
export const DEFAULT_TIMEOUT_MS = 3_600_000;

/** Thrown by `run` (or by the worker) for what retrying cannot fix: the task fails without further attempts. */
export class PermanentError extends Error {
  override name = 'PermanentError';
}

type Defaulted = 'queue' | 'maxAttempts' | 'timeoutMs';

/** Fills in the defaults a definition leaves out; throws at load time for a default out of bounds. */
export function defineTaskType<N extends string, P, R>(
  definition: Omit<TaskTypeDefinition<N, P, R>, Defaulted> & Partial<Pick<TaskTypeDefinition<N, P, R>, Defaulted>>,
): TaskTypeDefinition<N, P, R> {
  const defined = { queue: DEFAULT_QUEUE, maxAttempts: 3, timeoutMs: DEFAULT_TIMEOUT_MS, ...definition };
  for (const key of ['maxAttempts', 'timeoutMs'] as const) {
    const { min, max } = TASK_OPTION_LIMITS[key];
    const value = defined[key];
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new Error(`task type "${defined.name}": ${key} must be an integer from ${min} to ${max}`);
    }
  }
  const { backoff } = defined;
  if (backoff && !(backoff.baseMs > 0 && backoff.maxMs >= backoff.baseMs)) {
    throw new Error(`task type "${defined.name}": backoff needs 0 < baseMs <= maxMs`);
  }
  return defined;
}

/** Rejects with the signal's reason when it aborts; `run` uses it to stop waiting. */
export function abortable<T>(signal: AbortSignal, work: (onAbort: (fn: () => void) => void) => Promise<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason as Error);
    const cleanups: (() => void)[] = [];
    const onAbort = (): void => {
      cleanups.forEach((fn) => fn());
      reject(signal.reason as Error);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    work((fn) => cleanups.push(fn))
      .then(resolve, reject)
      .finally(() => signal.removeEventListener('abort', onAbort));
  });
}
