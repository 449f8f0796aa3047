import type { z } from 'zod';
import type { Logger } from './logger';

/** The queue a task type uses unless its definition names another. */
export const DEFAULT_QUEUE = 'tasks';

/** What a task type's `run` gets for one attempt. */
export interface TaskContext<P> {
  taskId: string;
  payload: P;
  attempt: number;
  logger: Logger;
  /** Aborted when the task is cancelled or the worker shuts down; check it in long loops. */
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
  run(ctx: TaskContext<P>): Promise<R>;
}

/** Thrown by `run` (or by the worker) for what retrying cannot fix: the task fails without further attempts. */
export class PermanentError extends Error {
  override name = 'PermanentError';
}

/** Fills in the defaults a definition leaves out. */
export function defineTaskType<N extends string, P, R>(
  definition: Omit<TaskTypeDefinition<N, P, R>, 'queue' | 'maxAttempts'> &
    Partial<Pick<TaskTypeDefinition<N, P, R>, 'queue' | 'maxAttempts'>>,
): TaskTypeDefinition<N, P, R> {
  return { queue: DEFAULT_QUEUE, maxAttempts: 3, ...definition };
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
