import { toError, type Db, type Logger } from '@taskbox/shared';
import { renewLeases } from './task-sql';

/** Why a run's signal aborted: the api asked, the worker is stopping, or the run lost its lease. */
export type AbortReason = 'cancelled' | 'shutdown' | 'lost';

export interface Leases {
  /** A live run: its lease is renewed until unregister; the signal aborts with an AbortReason. */
  register(taskId: string, attempt: number): AbortSignal;
  unregister(taskId: string, attempt: number): void;
  abortAll(reason: AbortReason): void;
  start(): void;
  stop(): void;
}

interface Run {
  taskId: string;
  attempt: number;
  controller: AbortController;
  renewedAt: number;
}

/**
 * Renews the leases of this worker's live runs every leaseMs / 3 in one UPDATE, turns a cancellation
 * requested through the api into an abort of the running handler, and fences runs that lost their
 * lease: a run the renewal no longer finds (the task was resumed or finished elsewhere), or whose
 * lease went unrenewed for 2/3 of its length (Postgres unreachable, so another worker may take over
 * once it expires), is aborted with 'lost'. So a live run is stopped before another can start, and
 * the handler of one task does not run twice at the same time.
 */
export function createLeases(db: Db, leaseMs: number, logger: Logger): Leases {
  const runs = new Map<string, Run>();
  const key = (taskId: string, attempt: number): string => `${taskId}:${attempt}`;
  let timer: NodeJS.Timeout | null = null;
  let failing = false;

  async function heartbeat(): Promise<void> {
    const live = [...runs.values()];
    try {
      const renewed = new Map((await renewLeases(db, live, leaseMs)).map((r) => [key(r.id, r.attempt), r]));
      if (failing) logger.info('lease renewal works again');
      failing = false;
      for (const run of live) {
        const row = renewed.get(key(run.taskId, run.attempt));
        if (!row) run.controller.abort('lost' satisfies AbortReason);
        else if (row.cancel_requested) run.controller.abort('cancelled' satisfies AbortReason);
        else run.renewedAt = Date.now();
      }
    } catch (err) {
      if (!failing) logger.warn('could not renew leases', { runs: live.length, error: toError(err).message });
      failing = true;
      const fence = Date.now() - (leaseMs * 2) / 3;
      for (const run of live) if (run.renewedAt < fence) run.controller.abort('lost' satisfies AbortReason);
    }
  }

  return {
    register(taskId, attempt) {
      const controller = new AbortController();
      runs.set(key(taskId, attempt), { taskId, attempt, controller, renewedAt: Date.now() });
      return controller.signal;
    },
    unregister(taskId, attempt) {
      runs.delete(key(taskId, attempt));
    },
    abortAll(reason) {
      for (const r of runs.values()) r.controller.abort(reason);
    },
    start() {
      timer ??= setInterval(() => void heartbeat(), Math.max(50, Math.floor(leaseMs / 3)));
    },
    stop() {
      if (timer) clearInterval(timer);
      timer = null;
    },
  };
}
