import { performance } from 'node:perf_hooks';
import { toError, type Db, type Logger, type Service } from '@taskbox/shared';
import { holdLeases, renewLeases } from './lease-sql';

/**
 * Why a run's signal aborted: the api asked, the worker is stopping, the run lost its lease, or it ran
 * past its time limit (the task's timeoutMs).
 */
export type AbortReason = 'cancelled' | 'shutdown' | 'lost' | 'timeout';

export interface Leases extends Service {
  /**
   * A live run: its lease is renewed until unregister; the signal aborts with an AbortReason, and
   * with 'timeout' once `timeoutMs` have passed. `leaseFrom` is a leaseClock() reading taken before the
   * statement that set the lease was sent. `log` carries the run's ids (task, message, correlation).
   */
  register(taskId: string, attempt: number, leaseFrom: number, timeoutMs: number, log: Logger): AbortSignal;
  /**
   * The run's handler has returned and its outcome is being written: its lease is still extended (holdLeases),
   * but never waited for, and the run is no longer fenced or timed.
   */
  recording(taskId: string, attempt: number): void;
  unregister(taskId: string, attempt: number): void;
  /** Aborts every live run with `reason`, and each run registered from now on at once. */
  abortAll(reason: AbortReason): void;
}

/**
 * The clock of lease stamps: monotonic, so that a step of the wall clock (NTP) neither fences every
 * run at once nor keeps a run alive past its lease. Postgres measures the lease on its own clock; only
 * elapsed times are compared, and both clocks advance at the same rate.
 */
export const leaseClock = (): number => performance.now();

interface Run {
  taskId: string;
  attempt: number;
  controller: AbortController;
  /** When the statement behind the last lease Postgres granted was sent: the lease runs to at least this + lease. */
  renewedAt: number;
  deadline: NodeJS.Timeout;
  log: Logger;
  /** Set by recording(). */
  recording: boolean;
}

/**
 * Renews the leases of this worker's live runs in one UPDATE, turns a cancellation requested through
 * the api into an abort of the running handler, and fences runs that may have lost their lease, so
 * that a run is stopped before another worker can start the task (a sweeper resumes it only once its
 * lease expired in Postgres).
 *
 * THE FENCE, with L the lease: every tick (L / 6) aborts with 'lost' each run whose last granted lease
 * was sent more than L / 2 ago, whether or not the renewal sent before has come back. A renewal that
 * hangs (a half-open connection: no answer, no error) therefore fences as surely as one that fails.
 * Stamps are taken before the statement is sent, because Postgres starts the lease at its now(), which
 * is later; only a renewal that came back advances them. The abort comes by L / 2 + L / 6 after the
 * last grant, leaving L / 3 before the lease can expire for timer lag and for the handler to stop.
 * While a renewal is in flight a tick only fences: piling up renewals behind a hung one would take a
 * connection each, and a renewal that never returns leaves every later run on this worker to be
 * fenced (the safe side) until it returns or fails. A renewal may take up to about L / 3 before its
 * runs are fenced needlessly.
 * A run the renewal no longer finds (the task was resumed or finished elsewhere) is aborted at once.
 */
export function createLeases(db: Db, leaseMs: number, logger: Logger): Leases {
  const state: LeasesState = {
    db,
    leaseMs,
    logger,
    runs: new Map(),
    fenceMs: leaseMs / 2,
    timer: null,
    renewing: false,
    failing: false,
    closing: null,
  };
  return {
    register: (taskId, attempt, leaseFrom, timeoutMs, log) =>
      register(state, { taskId, attempt, leaseFrom, timeoutMs, log }),
    recording(taskId, attempt) {
      const run = state.runs.get(runKey(taskId, attempt));
      if (!run) return;
      clearTimeout(run.deadline);
      run.recording = true;
    },
    unregister(taskId, attempt) {
      const run = state.runs.get(runKey(taskId, attempt));
      if (run) clearTimeout(run.deadline);
      state.runs.delete(runKey(taskId, attempt));
    },
    abortAll(reason) {
      state.closing = reason;
      for (const r of state.runs.values()) r.controller.abort(reason);
    },
    async start() {
      state.timer ??= setInterval(() => tick(state), Math.floor(leaseMs / 6));
    },
    async stop() {
      if (state.timer) clearInterval(state.timer);
      state.timer = null;
    },
  };
}

interface LeasesState {
  db: Db;
  leaseMs: number;
  logger: Logger;
  /** The live runs, by runKey. */
  runs: Map<string, Run>;
  fenceMs: number;
  timer: NodeJS.Timeout | null;
  renewing: boolean;
  failing: boolean;
  /** Set by abortAll: a start that returns after it (a slow Postgres) is told at once. */
  closing: AbortReason | null;
}

const runKey = (taskId: string, attempt: number): string => `${taskId}:${attempt}`;

function register(
  state: LeasesState,
  {
    taskId,
    attempt,
    leaseFrom,
    timeoutMs,
    log,
  }: { taskId: string; attempt: number; leaseFrom: number; timeoutMs: number; log: Logger },
): AbortSignal {
  const controller = new AbortController();
  // Counted from here, after the start committed: time spent waiting for Postgres is not the run's.
  const deadline = setTimeout(() => controller.abort('timeout' satisfies AbortReason), timeoutMs).unref();
  const run = { taskId, attempt, controller, renewedAt: leaseFrom, deadline, log, recording: false };
  state.runs.set(runKey(taskId, attempt), run);
  if (state.closing) controller.abort(state.closing);
  // A start whose answer came back late may have a lease that is already past the fence.
  fence(state, run, leaseClock());
  return run.controller.signal;
}

function fence(state: LeasesState, run: Run, now: number): void {
  if (run.recording || run.controller.signal.aborted || now - run.renewedAt <= state.fenceMs) return;
  run.log.warn('lease not renewed in time; aborting the run', {
    attempt: run.attempt,
    sinceRenewalMs: Math.round(now - run.renewedAt),
  });
  run.controller.abort('lost' satisfies AbortReason);
}

async function renew(state: LeasesState): Promise<void> {
  const runs = [...state.runs.values()];
  const live = runs.filter((r) => !r.recording);
  const sentAt = leaseClock();
  state.renewing = true;
  try {
    await holdLeases(
      state.db,
      runs.filter((r) => r.recording),
      state.leaseMs,
    );
    const renewed = new Map(
      (await renewLeases(state.db, live, state.leaseMs)).map((r) => [runKey(r.id, r.attempt), r]),
    );
    if (state.failing) state.logger.info('lease renewal works again');
    state.failing = false;
    for (const run of live) {
      const row = renewed.get(runKey(run.taskId, run.attempt));
      if (!row) run.controller.abort('lost' satisfies AbortReason);
      else if (row.cancel_requested) run.controller.abort('cancelled' satisfies AbortReason);
      else run.renewedAt = sentAt;
    }
  } catch (err) {
    if (!state.failing) state.logger.warn('could not renew leases', { runs: live.length, error: toError(err).message });
    state.failing = true;
  } finally {
    state.renewing = false;
  }
}

function tick(state: LeasesState): void {
  const now = leaseClock();
  for (const run of state.runs.values()) fence(state, run, now);
  if (!state.renewing) void renew(state);
}
