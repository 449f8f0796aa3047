import { toError } from './errors';
import type { Logger } from './logger';

/**
 * Runs `stop` on the first SIGTERM or SIGINT and exits 0 when it finished within `timeoutMs`, 1 when
 * it did not or failed. A second signal exits at once. Called only from a service's main.ts.
 */
export function exitOnSignal(logger: Logger, timeoutMs: number, stop: () => Promise<void>): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn('second signal; exiting now', { signal });
      process.exit(1);
    }
    stopping = true;
    logger.info('shutting down', { signal, timeoutMs });
    const deadline = setTimeout(() => {
      logger.error('shutdown deadline passed; exiting with work unfinished', { timeoutMs });
      process.exit(1);
    }, timeoutMs);
    deadline.unref();
    stop().then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        logger.error('shutdown failed', { error: toError(err).message });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

export interface BackoffPolicy {
  baseMs: number;
  maxMs: number;
}

/** Waiting for Postgres or the broker to come back: try again soon, never wait long once it is back. */
export const UNAVAILABLE_BACKOFF: BackoffPolicy = { baseMs: 200, maxMs: 5000 };
/** An outbox row the broker did not take: each row waits its own delay, so one bad row does not spin. */
export const PUBLISH_RETRY_BACKOFF: BackoffPolicy = { baseMs: 500, maxMs: 10_000 };
/** A LISTEN connection lost: polling covers for it meanwhile, so it may wait longer between tries. */
export const LISTEN_BACKOFF: BackoffPolicy = { baseMs: 250, maxMs: 10_000 };

/** Exponential backoff with full jitter: a random delay in [0, min(max, base * 2^(n-1))]. */
export function backoffMs(attempt: number, policy: BackoffPolicy, random = Math.random): number {
  const ceiling = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling * random());
}

export interface Periodic {
  start(): void;
  /** Stops scheduling and waits for a run in progress. */
  stop(): Promise<void>;
}

/**
 * Runs `run` every `intervalMs`, never two at once (the next run is scheduled when one ends). `run`
 * gets a signal that aborts on stop, to cut a long batch loop short. The timer does not keep the
 * process alive.
 */
export function createPeriodic(intervalMs: number, run: (signal: AbortSignal) => Promise<void>): Periodic {
  const stopping = new AbortController();
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;

  function schedule(): void {
    if (stopping.signal.aborted) return;
    timer = setTimeout(() => {
      running = run(stopping.signal).finally(schedule);
    }, intervalMs);
    timer.unref();
  }

  return {
    start() {
      if (!timer && !stopping.signal.aborted) schedule();
    },
    async stop() {
      stopping.abort();
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}
