import { toError, type Db, type Logger } from '@taskbox/shared';
import { renewLeases } from './task-sql';

export interface Leases {
  /** A live run: its lease is renewed until unregister; the signal aborts on cancel or shutdown. */
  register(taskId: string, attempt: number): AbortSignal;
  /** Ends a run's lease renewal; a newer attempt of the same task in this worker keeps its own. */
  unregister(taskId: string, attempt: number): void;
  /** Aborts every live run with `reason` ('shutdown'). */
  abortAll(reason: string): void;
  size(): number;
  start(): void;
  stop(): void;
}

/**
 * Renews the leases of this worker's live runs every leaseMs / 3 in one UPDATE, and turns a
 * cancellation requested through the api into an abort of the running handler. A run whose lease
 * could not be renewed (Postgres away longer than the lease) may be resumed elsewhere; its result is
 * then discarded by finishAttempt's guard, so a task still reaches exactly one terminal state.
 */
export function createLeases(db: Db, leaseMs: number, logger: Logger): Leases {
  const runs = new Map<string, { attempt: number; controller: AbortController }>();
  let timer: NodeJS.Timeout | null = null;
  let failing = false;

  async function heartbeat(): Promise<void> {
    const live = [...runs.entries()].map(([taskId, r]) => ({ taskId, attempt: r.attempt }));
    try {
      const cancelled = await renewLeases(db, live, leaseMs);
      if (failing) logger.info('lease renewal works again');
      failing = false;
      for (const taskId of cancelled) runs.get(taskId)?.controller.abort('cancelled');
    } catch (err) {
      if (!failing) logger.warn('could not renew leases', { runs: live.length, error: toError(err).message });
      failing = true;
    }
  }

  return {
    register(taskId, attempt) {
      const controller = new AbortController();
      runs.set(taskId, { attempt, controller });
      return controller.signal;
    },
    unregister(taskId, attempt) {
      if (runs.get(taskId)?.attempt === attempt) runs.delete(taskId);
    },
    abortAll(reason) {
      for (const r of runs.values()) r.controller.abort(reason);
    },
    size: () => runs.size,
    start() {
      timer ??= setInterval(() => void heartbeat(), Math.max(50, Math.floor(leaseMs / 3)));
    },
    stop() {
      if (timer) clearInterval(timer);
      timer = null;
    },
  };
}
