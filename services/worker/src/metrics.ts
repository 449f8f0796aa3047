import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { cachedLoader, countReuseMs, taskStatuses, type Db } from '@taskbox/shared';
import { countTasksByStatus } from './task-sql';

// Known label values, exported at zero from the start: a counter that appears only after its first
// dead letter or retry cannot be alerted on with rate() or increase().
const deliveryOutcomes = ['run', 'skip', 'fail', 'cancel', 'dead-letter'];
export const deadLetterCodes = [
  'unparseable',
  'invalid',
  'unknown-task',
  'type-mismatch',
  'unknown-type',
  'unhandled',
] as const;

export interface WorkerMetrics {
  registry: Registry;
  deliveries: Counter<'outcome' | 'queue'>;
  handlerSeconds: Histogram<'type' | 'outcome'>;
  failures: Counter<'final'>;
  deadLetters: Counter<'reason' | 'queue'>;
  abandonedRuns: Counter;
  abandonedRunsLive: Gauge;
}

// Counting the whole table on every scrape costs Postgres a scan each time, and every worker replica is
// scraped: a few seconds of staleness is fine for a gauge.
const COUNTS_FRESH_MS = 5000;

/**
 * `queues`: the names of the queues this worker consumes, whose series start at zero. `processMetrics`:
 * Node's own (CPU, memory, event loop), off where another part of the process has them.
 */
export function createWorkerMetrics(db: Db, queues: readonly string[], { processMetrics = true } = {}): WorkerMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ service: 'worker' });
  if (processMetrics) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  tasksByStatusGauge(db, registers);
  const metrics: WorkerMetrics = {
    registry,
    deliveries: new Counter({
      name: 'worker_deliveries_total',
      help: 'Deliveries by queue and by what the worker did with them',
      labelNames: ['outcome', 'queue'],
      registers,
    }),
    handlerSeconds: new Histogram({
      name: 'worker_handler_duration_seconds',
      help: 'Handler run time by task type and outcome',
      labelNames: ['type', 'outcome'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120],
      registers,
    }),
    failures: new Counter({
      name: 'worker_attempt_failures_total',
      help: 'Failed attempts; final="false" ones were scheduled for retry',
      labelNames: ['final'],
      registers,
    }),
    deadLetters: new Counter({
      name: 'worker_dead_letters_total',
      help: "Messages sent to their queue's dead-letter queue",
      labelNames: ['reason', 'queue'],
      registers,
    }),
    abandonedRuns: new Counter({
      name: 'worker_abandoned_runs_total',
      help: 'Runs given up on because they did not return within the grace after their signal aborted',
      registers,
    }),
    abandonedRunsLive: new Gauge({
      name: 'worker_abandoned_runs',
      help: 'Abandoned runs still going in the background (WORKER_ABANDONED_RUNS_MAX stops the worker)',
      registers,
    }),
  };
  startAtZero(metrics, queues);
  return metrics;
}

/** The tasks_by_status gauge, read from a count reused for COUNTS_FRESH_MS, or longer on a large table. */
function tasksByStatusGauge(db: Db, registers: Registry[]): void {
  const counts = cachedLoader(
    COUNTS_FRESH_MS,
    () => countTasksByStatus(db),
    (byStatus) => countReuseMs([...byStatus.values()].reduce((sum, n) => sum + n, 0)),
  );
  new Gauge({
    name: 'tasks_by_status',
    help: 'Tasks in the database by status',
    labelNames: ['status'],
    registers,
    async collect() {
      // Postgres down: the last counts stand, and the rest of the scrape still answers (/readyz says why).
      const byStatus = await counts('').catch(() => null);
      if (!byStatus) return;
      // Every status, zeros included, so a dashboard or alert never sees a series vanish.
      for (const status of taskStatuses) this.set({ status }, byStatus.get(status) ?? 0);
    },
  });
}

/** Every known label value of the counters at zero (see deliveryOutcomes). */
function startAtZero(metrics: WorkerMetrics, queues: readonly string[]): void {
  for (const queue of queues) {
    for (const outcome of deliveryOutcomes) metrics.deliveries.inc({ outcome, queue }, 0);
    for (const reason of deadLetterCodes) metrics.deadLetters.inc({ reason, queue }, 0);
  }
  for (const final of ['true', 'false']) metrics.failures.inc({ final }, 0);
}
