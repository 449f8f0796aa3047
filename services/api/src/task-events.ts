import { TASK_CHANNEL, createPgListener, type Logger } from '@taskbox/shared';

/** A registration for changes to one task; register BEFORE reading the row, so no change slips between. */
export interface TaskWatch {
  /** Resolves at once if a change was announced since the last reset, else on the next one, after `ms`, or on abort. */
  next(ms: number, signal: AbortSignal): Promise<void>;
  /** Forget announced changes; call right before re-reading the row. */
  reset(): void;
  close(): void;
}

export interface TaskEvents {
  start(): void;
  /** Stops listening and releases every waiting request (they answer with the current view). */
  stop(): Promise<void>;
  watch(taskId: string): TaskWatch;
  /** How many requests are waiting now (a gauge for tests and metrics). */
  waiting(): number;
}

/**
 * Fans out "task changed" NOTIFYs (sent by the worker and the api after their commits, see
 * createTaskNotifier) to the long-polling requests of this process: one LISTEN connection per
 * process, however many requests wait. A waiting request holds a socket but no database connection.
 */
export function createTaskEvents(url: string, logger: Logger): TaskEvents {
  const watchers = new Map<string, Set<() => void>>();
  let stopped = false;
  const wakeAll = (): void => {
    for (const set of watchers.values()) for (const wake of set) wake();
  };
  const listener = createPgListener({
    url,
    channel: TASK_CHANNEL,
    logger,
    onNotify(payload) {
      for (const id of payload.split(',')) for (const wake of watchers.get(id) ?? []) wake();
    },
    // NOTIFYs sent while the connection was down are lost: every waiter re-reads its task.
    onConnect: wakeAll,
  });

  function watch(taskId: string): TaskWatch {
    let changed = stopped;
    let resolveNext: (() => void) | null = null;
    const wake = (): void => {
      changed = true;
      resolveNext?.();
    };
    const set = watchers.get(taskId) ?? new Set();
    watchers.set(taskId, set.add(wake));
    return {
      next(ms, signal) {
        if (changed || signal.aborted) return Promise.resolve();
        return new Promise((resolve) => {
          const done = (): void => {
            clearTimeout(timer);
            signal.removeEventListener('abort', done);
            resolveNext = null;
            resolve();
          };
          const timer = setTimeout(done, ms);
          signal.addEventListener('abort', done, { once: true });
          resolveNext = done;
        });
      },
      reset() {
        changed = stopped;
      },
      close() {
        set.delete(wake);
        if (set.size === 0 && watchers.get(taskId) === set) watchers.delete(taskId);
        resolveNext?.();
      },
    };
  }

  return {
    start: () => listener.start(),
    async stop() {
      stopped = true;
      wakeAll();
      await listener.stop();
    },
    watch,
    waiting: () => [...watchers.values()].reduce((n, set) => n + set.size, 0),
  };
}
