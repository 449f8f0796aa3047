import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { sql } from 'kysely';
import { toError, type Db, type Logger } from '@taskbox/shared';
import { HttpProblem } from './problem';

/**
 * This api process's row in task_watchers, present and fresh while any of its requests waits on task
 * changes: the worker sends its "task changed" NOTIFYs only then (createTaskNotifier, notify.ts).
 */
export interface WatcherRegistration {
  /**
   * Resolves once the row is committed and fresh, BEFORE the waiter's first read of what it watches
   * (notify.ts says why that order means no change is missed). Call the release when the wait ends.
   */
  hold(): Promise<() => void>;
  /** Stops refreshing and deletes the row; a hold() after it is answered 503 and writes nothing. */
  stop(): Promise<void>;
}

export interface WatcherRegistrationOptions {
  /** How long a row stays fresh without a refresh; refreshed every third of it while held. */
  ttlMs: number;
}

interface RegistrationState {
  db: Db;
  logger: Logger;
  instance: string;
  ttlMs: number;
  holds: number;
  /** performance.now() before which the row is known fresh (its write was sent before this minus ttl). */
  freshUntil: number;
  writing: Promise<void> | null;
  timer: NodeJS.Timeout | null;
  stopped: boolean;
}

export function createWatcherRegistration(
  db: Db,
  logger: Logger,
  { ttlMs }: WatcherRegistrationOptions = { ttlMs: 60_000 },
): WatcherRegistration {
  const instance = `${os.hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  const state: RegistrationState = {
    db,
    logger,
    instance,
    ttlMs,
    holds: 0,
    freshUntil: 0,
    writing: null,
    timer: null,
    stopped: false,
  };
  return {
    async hold() {
      // A request let in while the api stops: a new row would outlive the process by its time to live.
      if (state.stopped) throw new HttpProblem(503, 'Service Unavailable', 'this server is stopping; retry');
      state.holds++;
      state.timer ??= setInterval(() => void refresh(state).catch(() => undefined), ttlMs / 3).unref();
      // Fresh for at least half its time to live: the timer renews it long before it lapses.
      if (performance.now() > state.freshUntil - ttlMs / 2) {
        await refresh(state).catch((err: unknown) => {
          release(state);
          throw err;
        });
      }
      let released = false;
      return () => {
        if (released) return;
        released = true;
        release(state);
      };
    },
    async stop() {
      state.stopped = true;
      if (state.timer) clearInterval(state.timer);
      state.timer = null;
      await state.writing?.catch(() => undefined);
      await db.deleteFrom('task_watchers').where('instance', '=', instance).execute();
    },
  };
}

/** The last hold released: the row is left to lapse (a waiter arriving soon finds it still fresh). */
function release(state: RegistrationState): void {
  state.holds--;
  if (state.holds > 0 || !state.timer) return;
  clearInterval(state.timer);
  state.timer = null;
}

/** Writes the row with a new lease; concurrent callers share one write. */
function refresh(state: RegistrationState): Promise<void> {
  state.writing ??= write(state).finally(() => (state.writing = null));
  return state.writing;
}

async function write(state: RegistrationState): Promise<void> {
  const sentAt = performance.now();
  try {
    // Also deletes the rows of processes that stopped without deleting theirs (killed, crashed); a
    // lapsed row silences no one, this only keeps the table from growing with every restart.
    await sql`
      WITH lapsed AS (DELETE FROM task_watchers WHERE until < now() - interval '1 hour')
      INSERT INTO task_watchers (instance, until) VALUES (${state.instance}, now() + ${state.ttlMs} * interval '1 millisecond')
      ON CONFLICT (instance) DO UPDATE SET until = excluded.until`.execute(state.db);
    // Postgres's now() is at or after sentAt, so the row lives at least until this on our clock.
    state.freshUntil = sentAt + state.ttlMs;
  } catch (err) {
    state.logger.warn('could not register this process as waiting for task changes', {
      error: toError(err).message,
    });
    throw err;
  }
}
