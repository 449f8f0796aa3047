import { backoffMs, isTerminal, noHandlerError, PermanentError } from '@taskbox/shared';
import type {
  BackoffPolicy,
  Db,
  Logger,
  OutboxNotifier,
  TaskContext,
  TaskMessage,
  TaskNotifier,
} from '@taskbox/shared';
import { findTaskType, isTaskType, type AnyTaskType } from '@taskbox/tasks';
import { leaseClock, type AbortReason, type Leases } from './leases';
import type { WorkerMetrics } from './metrics';
import type { AttemptWrites } from './attempt-writes';
import { interruptAttempt, releaseLease } from './lease-sql';
import type { Orphans } from './orphans';
import { RunAbandoned, runHandler, TimeoutError } from './run-handler';
import type { AttemptOutcome } from './finish-sql';
import { recordOutcome } from './outcomes';
import { progressReporter } from './progress';
import { cancelLostRun, failTask, lockTask, renewOwnStart, startAttempt, type LockedTask } from './task-sql';

export type Decision =
  | { action: 'run' }
  | { action: 'resume' }
  | { action: 'skip'; reason: 'terminal' | 'stale' | 'running-elsewhere' }
  | { action: 'fail'; reason: 'attempts-exhausted' | 'unknown-type' }
  | { action: 'cancel' }
  | { action: 'dead-letter'; reason: 'unknown-task' | 'type-mismatch' };

/**
 * THE IDEMPOTENCY RULE. Decides what a delivery may do, from the locked task row alone.
 *
 * The task row is the inbox: each outbox row (one message id) asks for exactly one (task, attempt),
 * so "has this message been handled" is "has the task moved past that attempt", and no separate
 * inbox table (one more write per message, one more thing to clean up) is needed. Delivery tags are
 * never used: they are per channel and restart at 1.
 *
 * - terminal task: never run again (duplicates and late retries are acked and dropped);
 * - pending, message for an attempt already started: a duplicate of an old message, dropped;
 * - processing under this delivery's own external job id: its start committed but the answer was lost
 *   (a connection cut after the commit), so the retry of the same delivery resumes that start;
 * - processing with a live lease: another run owns it; dropped without running the handler, which
 *   is safe because if that run dies its lease expires and the run is resumed (by its own redelivery,
 *   or by the sweeper, which writes a new outbox row);
 * - processing with an expired lease: the run is dead; this delivery resumes it as a new attempt,
 *   ends it cancelled when a cancel was requested (as the sweeper would), or fails the task when the
 *   dead run was its last attempt;
 * - a type this worker does not know (and the message is not a duplicate): the task fails.
 */
export function decide(task: LockedTask | undefined, message: TaskMessage & { externalJobId: string }): Decision {
  if (!task) return { action: 'dead-letter', reason: 'unknown-task' };
  if (task.type !== message.type) return { action: 'dead-letter', reason: 'type-mismatch' };
  if (isTerminal(task.status)) {
    return { action: 'skip', reason: 'terminal' };
  }
  if (task.status === 'pending' && message.attempt <= task.attempts) return { action: 'skip', reason: 'stale' };
  if (task.status === 'processing' && task.external_job_id === message.externalJobId) {
    return task.cancel_requested ? { action: 'cancel' } : { action: 'resume' };
  }
  if (task.status === 'processing' && !task.lease_expired) return { action: 'skip', reason: 'running-elsewhere' };
  if (task.status === 'processing' && task.cancel_requested) return { action: 'cancel' };
  // After the duplicate checks: a worker older than the type (a rolling upgrade) drops a copy of a
  // message that a newer worker runs, rather than failing that worker's run.
  if (!isTaskType(task.type)) return { action: 'fail', reason: 'unknown-type' };
  if (task.status === 'pending') return { action: 'run' };
  return task.attempts >= task.max_attempts ? { action: 'fail', reason: 'attempts-exhausted' } : { action: 'run' };
}

export interface AttemptDeps {
  db: Db;
  /** Starts and finishes, batched across the deliveries in flight (createAttemptWrites). */
  writes: AttemptWrites;
  leases: Leases;
  outboxNotifier: OutboxNotifier;
  /** Told after each commit that changes a task, so long-polling api clients answer at once. */
  taskNotifier: TaskNotifier;
  metrics: WorkerMetrics;
  leaseMs: number;
  /** How long a failed attempt waits before its retry, unless its type names a backoff (RETRY_BASE_MS, RETRY_MAX_MS). */
  retry: BackoffPolicy;
  /** How long a run may go on after its signal aborted before it is abandoned (WORKER_TIMEOUT_GRACE_MS). */
  timeoutGraceMs: number;
  /** The largest result stored, as JSON (WORKER_RESULT_MAX_BYTES). */
  resultMaxBytes: number;
  orphans: Orphans;
  /** Aborted when the worker stops: recording a result stops retrying then. */
  stopping: AbortSignal;
}

/** A started attempt; `leaseFrom` (leaseClock) was read before the statement that set its lease was sent. */
export interface Started {
  action: 'started';
  task: LockedTask;
  attempt: number;
  leaseFrom: number;
}

export type DeliveryDecision = Decision | Started;

/**
 * The common case (a pending task's next attempt) in one statement; otherwise one transaction: lock the
 * task, decide, and (to run) mark it processing with the external job id. Each path reads leaseClock()
 * before it sends its first statement: Postgres starts the lease at that statement's now() or later.
 */
export async function beginAttempt(
  deps: AttemptDeps,
  message: TaskMessage,
  externalJobId: string,
): Promise<DeliveryDecision> {
  const pendingLeaseFrom = leaseClock();
  const startedPending = isTaskType(message.type)
    ? await deps.writes.startPending({ ...message, externalJobId })
    : undefined;
  const lockedFrom = leaseClock();
  const result: DeliveryDecision = startedPending
    ? { action: 'started', ...startedPending, leaseFrom: pendingLeaseFrom }
    : await deps.db.transaction().execute(async (tx): Promise<DeliveryDecision> => {
        const task = await lockTask(tx, message.taskId);
        const decision = decide(task, { ...message, externalJobId });
        if (!task || decision.action === 'dead-letter' || decision.action === 'skip') return decision;
        if (decision.action === 'resume') {
          await renewOwnStart(tx, task.id, deps.leaseMs);
          return { action: 'started', task, attempt: task.attempts, leaseFrom: lockedFrom };
        }
        if (decision.action === 'cancel') {
          await cancelLostRun(tx, task);
          return decision;
        }
        if (decision.action === 'fail') {
          const error =
            decision.reason === 'unknown-type'
              ? noHandlerError(task.type)
              : new Error('the last attempt stopped without finishing');
          await failTask(tx, task, error);
          return decision;
        }
        const attempt = await startAttempt(tx, task, externalJobId, deps.leaseMs);
        return { action: 'started', task, attempt, leaseFrom: lockedFrom };
      });
  if (result.action === 'started' || result.action === 'fail' || result.action === 'cancel') {
    deps.taskNotifier.changed(message.taskId);
  }
  // A dead run (its lease expired) that this delivery resumed or ended is a failed attempt, counted as
  // when the sweeper finds it first.
  if (result.action === 'started' && result.task.status === 'processing' && result.attempt > result.task.attempts)
    deps.metrics.failures.inc({ final: 'false' });
  if (result.action === 'fail' && result.reason === 'attempts-exhausted') deps.metrics.failures.inc({ final: 'true' });
  return result;
}

/**
 * What the consumer does with the delivery: 'recorded' (the outcome is committed): ack. 'abandoned'
 * (the run stopped unfinished: shutdown, a lost lease, an outcome that could not be written, or a task
 * no longer this run's): requeue, and the redelivery resumes the task or is absorbed.
 */
export type RunResult = 'recorded' | 'abandoned';

/**
 * Runs the handler and records its outcome. The run's lease is extended until the outcome is recorded,
 * not only while the handler runs: while the write is retried (Postgres slow or away), the sweeper must
 * not take the finished run for a dead one and run the task again (leases.recording).
 */
export async function runAttempt(deps: AttemptDeps, started: Started, logger: Logger): Promise<RunResult> {
  const { task, attempt } = started;
  // decide() let only registered types through to here.
  const definition = findTaskType(task.type);
  if (!definition) throw new Error(`no task type "${task.type}"`);
  const timeoutMs = task.timeout_ms ?? definition.timeoutMs;
  const signal = deps.leases.register(task.id, attempt, started.leaseFrom, timeoutMs, logger);
  try {
    const outcome = await runToOutcome(deps, started, { definition, timeoutMs, signal }, logger);
    if (typeof outcome === 'string') return outcome;
    deps.leases.recording(task.id, attempt);
    return await recordOutcome(deps, task.id, attempt, outcome, logger);
  } finally {
    deps.leases.unregister(task.id, attempt);
  }
}

/** The handler's outcome to record, or what the delivery does when there is none to record. */
async function runToOutcome(
  deps: AttemptDeps,
  { task, attempt }: Started,
  { definition, timeoutMs, signal }: { definition: AnyTaskType; timeoutMs: number; signal: AbortSignal },
  logger: Logger,
): Promise<AttemptOutcome | RunResult> {
  const endTimer = deps.metrics.handlerSeconds.startTimer({ type: definition.name });
  let outcome: AttemptOutcome;
  const payload = definition.payload.safeParse(task.payload);
  try {
    // Fenced at registration (the start's answer came back late): another worker may own the task.
    signal.throwIfAborted();
    // A payload that no longer fits its schema will not fit on a retry either: fail at once.
    if (!payload.success) throw new PermanentError(`invalid payload: ${payload.error.message}`);
    const ctx: TaskContext<unknown> = {
      taskId: task.id,
      payload: payload.data,
      attempt,
      logger,
      signal,
      ...progressReporter(deps.db, deps.taskNotifier, task.id, attempt, logger, signal),
    };
    // At debug: the task's one info line in the worker is its outcome; the start is in the row (started_at,
    // external_job_id) and the attempt's row.
    logger.debug('task started', { attempt, timeoutMs });
    const limits = { graceMs: deps.timeoutGraceMs, resultMaxBytes: deps.resultMaxBytes, orphans: deps.orphans, logger };
    outcome = { kind: 'succeeded', resultJson: await runHandler(definition, ctx, limits) };
  } catch (err) {
    const reason = signal.aborted ? (signal.reason as AbortReason) : null;
    if (reason === 'shutdown' || reason === 'lost') {
      // Not failed. At shutdown a run that stopped is interrupted: its next attempt is queued at once and
      // this one is not counted (interruptAttempt), so the message is settled. A run that ignored its
      // signal (RunAbandoned) goes on until the process exits: its lease stays, so no other worker starts
      // the task beside it, and the sweeper resumes it once the lease has run out. A lost lease is no
      // longer this run's to touch.
      if (reason === 'shutdown' && !(err instanceof RunAbandoned)) {
        if (await interruptAttempt(deps.db, task.id, attempt).catch(() => false)) {
          deps.taskNotifier.changed(task.id);
          deps.outboxNotifier.poke();
          logger.warn('task interrupted by the shutdown; its next attempt is queued, this one not counted', {
            attempt,
          });
          return 'recorded';
        }
        await releaseLease(deps.db, task.id, attempt).catch(() => undefined);
      }
      // A lost run's task may have been resumed, failed or cancelled by the sweeper meanwhile (its line
      // says which): this worker only says that it stopped.
      if (reason === 'lost')
        logger.warn("run stopped: its lease was lost, and the task is no longer this worker's", { attempt });
      else logger.warn('task abandoned (shutdown); it will be resumed', { attempt });
      return 'abandoned';
    }
    if (reason === 'cancelled') outcome = { kind: 'cancelled' };
    else {
      // Whatever the run threw once its time was up (the abort's reason, most often) is the timeout.
      const error = reason === 'timeout' ? new TimeoutError(`timeout: the attempt ran past ${timeoutMs} ms`) : err;
      const retry = attempt < task.max_attempts && !(error instanceof PermanentError);
      const retryInMs = retry ? backoffMs(attempt, definition.backoff ?? deps.retry) : null;
      outcome = { kind: 'failed', error, retryInMs };
    }
  }
  endTimer({ outcome: outcome.kind });
  return outcome;
}
