import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { cachedLoader, outboxBacklog, type Db } from '@taskbox/shared';

export interface RelayMetrics {
  registry: Registry;
  published: Counter;
  publishFailures: Counter;
  batchSize: Histogram;
  confirmSeconds: Histogram;
  republished: Counter<'queue' | 'state'>;
  reconcilerFailures: Counter;
}

/**
 * `queues`: the queues' names, each of whose series starts at zero. `processMetrics`: Node's own (CPU,
 * memory, event loop), off where another part of the process has them.
 */
export function createRelayMetrics(db: Db, queues: string[], { processMetrics = true } = {}): RelayMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ service: 'relay' });
  if (processMetrics) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  // Read on scrape rather than on every drain: one cheap count per scrape, nothing on the hot path. A
  // scrape collects every metric at once, so both gauges await the same read: set from each other's
  // collect, one of them was exported before its value was read, and showed the previous scrape's.
  // Postgres down: the last values stand, and the rest of the scrape still answers (/readyz says why).
  const backlog = cachedLoader(0, () => outboxBacklog(db).catch(() => null));
  const gauges = [
    ['outbox_backlog', 'Unpublished outbox rows', 'count'],
    [
      'outbox_oldest_unpublished_age_seconds',
      'Seconds the oldest due, unpublished outbox row has waited',
      'oldestAgeSeconds',
    ],
  ] as const;
  for (const [name, help, field] of gauges) {
    new Gauge({
      name,
      help,
      registers,
      async collect() {
        const b = await backlog('outbox');
        if (b) this.set(b[field]);
      },
    });
  }
  const metrics: RelayMetrics = {
    registry,
    published: new Counter({ name: 'relay_published_total', help: 'Messages confirmed by the broker', registers }),
    publishFailures: new Counter({
      name: 'relay_publish_failures_total',
      help: 'Messages not confirmed (nacked, returned, timed out, channel closed)',
      registers,
    }),
    batchSize: new Histogram({
      name: 'relay_batch_size',
      help: 'Rows per claimed batch',
      buckets: [1, 5, 10, 25, 50, 100, 200, 500, 1000],
      registers,
    }),
    republished: new Counter({
      name: 'tasks_republished_total',
      help: 'Stranded pending tasks the reconciler republished, by queue; state: caught-up (nothing old waits in it) or backlog',
      labelNames: ['queue', 'state'] as const,
      registers,
    }),
    reconcilerFailures: new Counter({
      name: 'relay_reconciler_failures_total',
      help: 'Reconciler passes that failed: while they do, no stranded task is republished',
      registers,
    }),
    confirmSeconds: new Histogram({
      name: 'relay_confirm_seconds',
      help: 'Time from publishing a batch to its last confirm',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
      registers,
    }),
  };
  // Every series from the start, so that an alert on the first republish sees it rise from zero.
  for (const queue of queues) {
    for (const state of ['caught-up', 'backlog']) metrics.republished.inc({ queue, state }, 0);
  }
  return metrics;
}
