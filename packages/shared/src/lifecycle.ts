import { errorJson, isError, toError } from './errors';
import type { Logger } from './logger';

/**
 * A long-lived part of a service: the relay loop, the consumer, a listener, a periodic job, the health
 * server. `stop` may run twice, or before `start`, and resolves once the part holds nothing.
 */
export interface Service {
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** A part that is open from the moment it is made (a pool, a notifier): it only needs closing, once. */
export function resource(close: () => Promise<void>): Service {
  let closed: Promise<void> | null = null;
  return { start: async () => undefined, stop: () => (closed ??= close()) };
}

/**
 * A part whose start waits until `ready` answers true, asking every `intervalMs`: the parts listed after
 * it start only then. `onWait` runs once if the first answer is no. stop() ends the wait, and the start
 * rejects.
 */
export function gate(ready: () => Promise<boolean>, intervalMs: number, onWait: () => void): Service {
  const stopped = new AbortController();
  return {
    async start() {
      for (let first = true; ; first = false) {
        const open = await ready();
        // Thrown, so that startAll starts nothing after it.
        if (stopped.signal.aborted) throw new Error('stopped while waiting to start');
        if (open) return;
        if (first) onWait();
        await sleep(intervalMs, stopped.signal);
      }
    },
    stop: async () => stopped.abort(),
  };
}

/**
 * Starts the parts in order; a main.ts lists them so that each one's dependencies come first. Once
 * `stopping` answers true it starts no more of them.
 */
export async function startAll(parts: readonly Service[], stopping: () => boolean = () => false): Promise<void> {
  for (const part of parts) {
    if (stopping()) return;
    await part.start();
  }
}

/**
 * Stops the parts in reverse order (each before what it depends on). A part that fails to stop is
 * logged and the others still stop. Resolves false when they did not all stop within `deadlineMs`.
 */
export async function stopAll(parts: readonly Service[], deadlineMs: number, logger: Logger): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), deadlineMs);
    timer.unref();
  });
  const stopping = (async () => {
    let clean = true;
    for (const part of [...parts].reverse()) {
      await part.stop().catch((err: unknown) => {
        clean = false;
        logger.error('a part failed to stop', { error: toError(err).message });
      });
    }
    return clean;
  })();
  try {
    return await Promise.race([stopping, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * What a service does on SIGTERM or SIGINT: the first signal runs `stop` and answers the exit code, 0
 * when it stopped cleanly in time; a second signal answers 1 at once. main.ts wires it to the process.
 */
export function onShutdownSignal(logger: Logger, stop: () => Promise<boolean>): (signal: string) => Promise<number> {
  let stopping = false;
  return async (signal) => {
    if (stopping) {
      logger.warn('second signal; exiting now', { signal });
      return 1;
    }
    stopping = true;
    logger.info('shutting down', { signal });
    const clean = await stop().catch((err: unknown) => {
      logger.error('shutdown failed', { error: toError(err).message });
      return false;
    });
    if (clean) logger.info('stopped');
    else logger.error('shutdown deadline passed or a part failed; exiting with work unfinished');
    return clean ? 0 : 1;
  };
}

/**
 * What every main.ts does with its parts: wires SIGTERM and SIGINT to stop them (onShutdownSignal) and
 * exit with its code, then starts them and calls `started`. The signals are wired first, so that a signal
 * during a long start (the worker waiting at its gate for a migration, while the all-in-one's api already
 * serves) drains what has started instead of killing the process. Resolves to the shutdown from inside
 * (the worker's, after too many abandoned runs), which exits 1 once drained; after a signal it does
 * nothing, since a second call to the shutdown would count as a second signal and exit before the drain.
 */
export async function serve(
  parts: readonly Service[],
  { logger, deadlineMs, started }: { logger: Logger; deadlineMs: number; started: () => void },
): Promise<(why: string) => void> {
  const shutdown = onShutdownSignal(logger, () => stopAll(parts, deadlineMs, logger));
  let stopping = false;
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      stopping = true;
      void shutdown(signal).then((code) => process.exit(code));
    });
  }
  // A throw no code catches (a handler's stray timer or promise): Node would exit at once, with a bare
  // stack on stderr and every run in flight left to its lease. Said in the log, then drained, exit 1.
  for (const [event, what] of [
    ['uncaughtException', 'uncaught exception'],
    ['unhandledRejection', 'unhandled rejection'],
  ] as const) {
    process.on(event, (err: unknown) => {
      logger.error(`${what}; the process drains and exits`, { error: errorJson(err).message, stack: stackOf(err) });
      if (stopping) return;
      stopping = true;
      void shutdown(what).then(() => process.exit(1));
    });
  }
  try {
    await startAll(parts, () => stopping);
  } catch (err) {
    // A part stopped while it started (the gate) rejects its start: the shutdown under way exits.
    if (stopping) return () => undefined;
    throw err;
  }
  if (!stopping) started();
  return (why) => {
    if (stopping) return;
    stopping = true;
    void shutdown(why).then(() => process.exit(1));
  };
}

/** Where `err` was thrown, when it can be read. */
function stackOf(err: unknown): string | undefined {
  try {
    return isError(err) ? err.stack : undefined;
  } catch {
    return undefined;
  }
}

/** `promise`, or a rejection naming `what` when it has not settled within `ms`: a broker that never answers. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
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

/**
 * `promise`, or undefined as soon as `signal` aborts. Not Promise.race with a promise that stands for
 * the abort: each race adds a reaction to that promise, kept (with the race's result) until it
 * settles, so racing one that lives long (a run's abort, the api's stop, a connection's end) at every
 * step holds a little more at every step.
 */
export function unlessAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T | undefined> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => resolve(undefined);
    // Settled or not, `promise` is handled: a rejection after the abort is not an unhandled one.
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    if (signal.aborted) resolve(undefined);
    else signal.addEventListener('abort', onAbort, { once: true });
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

/**
 * Runs `run` every `intervalMs`, never two at once (the next run is scheduled when one ends). `run`
 * gets a signal that aborts on stop, to cut a long batch loop short. The timer does not keep the
 * process alive.
 */
export function createPeriodic(intervalMs: number, run: (signal: AbortSignal) => Promise<void>): Service {
  const stopping = new AbortController();
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;

  function schedule(): void {
    if (stopping.signal.aborted) return;
    timer = setTimeout(() => {
      // `run` handles its own errors; the catch only keeps a slip from crashing the process.
      running = run(stopping.signal)
        .catch(() => undefined)
        .finally(schedule);
    }, intervalMs);
    timer.unref();
  }

  return {
    async start() {
      if (!timer && !stopping.signal.aborted) schedule();
    },
    async stop() {
      stopping.abort();
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}
