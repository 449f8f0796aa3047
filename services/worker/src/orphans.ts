import { errorJson, type Logger } from '@taskbox/shared';
import type { WorkerMetrics } from './metrics';

/** Runs given up on (run-handler.ts) that have not returned yet. */
export interface Orphans {
  adopt(run: Promise<unknown>, logger: Logger): void;
}

/**
 * Counts abandoned runs until they return (worker_abandoned_runs, and worker_abandoned_runs_total).
 * Each one still holds whatever it holds (memory, sockets, a connection of its own), and the worker
 * cannot take that back. When `max` are still going at once, `onOverflow` runs, once: main.ts stops
 * consuming, drains the runs in flight and exits 1, so that the supervisor (compose, Kubernetes)
 * starts a clean process; exiting is the only way to end an orphan.
 */
export function createOrphans(max: number, metrics: WorkerMetrics, onOverflow: () => void): Orphans {
  let live = 0;
  let overflowed = false;
  return {
    adopt(run, logger) {
      live++;
      metrics.abandonedRuns.inc();
      metrics.abandonedRunsLive.set(live);
      logger.error('run abandoned: it ignored its abort signal past the grace; it goes on in the background', {
        abandonedRuns: live,
        max,
      });
      void run
        .then(
          () => logger.warn('an abandoned run returned; its result is discarded'),
          (err: unknown) =>
            logger.warn('an abandoned run failed; its error is discarded', { error: errorJson(err).message }),
        )
        .finally(() => metrics.abandonedRunsLive.set(--live));
      if (live >= max && !overflowed) {
        overflowed = true;
        logger.error('too many abandoned runs still going; the worker stops and exits so that it is restarted', {
          abandonedRuns: live,
        });
        onOverflow();
      }
    },
  };
}
