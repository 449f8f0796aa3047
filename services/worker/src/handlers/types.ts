import type { Logger, TaskPayload, TaskType } from '@taskbox/shared';

export interface HandlerContext<P> {
  taskId: string;
  payload: P;
  attempt: number;
  logger: Logger;
  /** Aborted when the task is cancelled or the worker shuts down; check it in long loops. */
  signal: AbortSignal;
  step(name: string): Promise<void>;
  progress(fraction: number): Promise<void>;
}

export interface TaskHandler<T extends TaskType = TaskType> {
  type: T;
  run(ctx: HandlerContext<TaskPayload<T>>): Promise<unknown>;
}

/** Rejects with the signal's reason when it aborts; handlers use it to stop waiting. */
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
