import { setMaxListeners } from 'node:events';
import type { Registry } from 'prom-client';
import {
  amqpConnection,
  amqpTopology,
  amqpUrls,
  bestEffortSettings,
  consumedQueues,
  createDb,
  createOutboxNotifier,
  createPool,
  createTaskNotifier,
  gate,
  postgresReadiness,
  redactUrl,
  resource,
  type AmqpTopology,
  type Config,
  type ConsumedQueue,
  type Db,
  type Logger,
  type OutboxNotifier,
  type ReadinessCheck,
  type Service,
  type TaskNotifier,
} from '@taskbox/shared';
import { retiredQueues, taskTypeList } from '@taskbox/tasks';
import { createConsumer } from './consumer';
import { createLeases, type Leases } from './leases';
import { createWorkerMetrics, type WorkerMetrics } from './metrics';
import { createOrphans } from './orphans';
import { createSweeper } from './sweeper';
import { createAttemptWrites } from './attempt-writes';
import { setWorkerSession } from './task-sql';

/** The worker's parts, in start order, and what its health server reports; main.ts serves them. */
export interface WorkerParts {
  parts: Service[];
  ready: ReadinessCheck;
  registry: Registry;
  /** Logs "worker started", with the queues it consumes and their prefetch. */
  logStarted(): void;
}

export interface WorkerOptions {
  /** Stops the worker (too many abandoned runs): main drains it and exits 1. */
  stopAndExit: () => void;
  /** Off when the worker shares its process with services that report them. */
  processMetrics?: boolean;
}

export function workerParts(
  config: Config,
  logger: Logger,
  { stopAndExit, processMetrics = true }: WorkerOptions,
): WorkerParts {
  const topology = amqpTopology(config.AMQP_PREFIX, taskTypeList, retiredQueues);
  const queues = consumedQueues(topology, config.WORKER_QUEUES, config.WORKER_PREFETCH);
  // Deliveries in flight at most: the prefetch of every queue consumed.
  const slots = queues.reduce((sum, q) => sum + q.prefetch, 0);
  // Each delivery in flight uses at most one connection at a time; a few more for heartbeats and sweeps.
  const pool = createPool(config.DATABASE_URL, logger, {
    max: Math.min(slots, config.PG_POOL_SIZE) + 2,
    statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
    onConnect: bestEffortSettings(setWorkerSession, logger),
  });
  const db = createDb(pool);
  const metrics = createWorkerMetrics(
    db,
    queues.map((q) => q.route.name),
    { processMetrics },
  );
  const outboxNotifier = createOutboxNotifier(pool, logger);
  const taskNotifier = createTaskNotifier(pool, logger);
  const leases = createLeases(db, config.WORKER_LEASE_MS, logger);
  const consumer = consumerFor(
    { config, topology, queues, slots, db, leases, metrics, outboxNotifier, taskNotifier, stopAndExit },
    logger,
  );
  const postgresReady = postgresReadiness(pool, logger, { writes: true });
  // Started in this order, stopped in reverse: the consumer drains first, the pool closes last.
  const parts = [
    resource(() => db.destroy()),
    resource(() => taskNotifier.stop()),
    resource(() => outboxNotifier.stop()),
    // A worker of a newer build on a database not yet migrated for it would fail every write of a
    // task it took (a column it lacks), and record its attempts as lost: it takes none until then.
    gate(postgresReady, 1000, () =>
      logger.warn('not consuming until Postgres takes writes and has every migration of this build'),
    ),
    amqpConnection(amqpUrls(config), logger, consumer.setup),
    leases,
    createSweeper(
      db,
      Math.max(250, Math.floor(config.WORKER_LEASE_MS / 2)),
      { outboxNotifier, taskNotifier, metrics },
      logger,
    ),
    consumer,
  ];
  return {
    parts,
    ready: async () => ({ postgres: await postgresReady(), rabbitmq: consumer.ready() }),
    registry: metrics.registry,
    logStarted: () =>
      logger.info('worker started', {
        database: redactUrl(config.DATABASE_URL),
        queues: Object.fromEntries(queues.map((q) => [q.route.name, q.prefetch])),
      }),
  };
}

interface ConsumerParts {
  config: Config;
  topology: AmqpTopology;
  /** The queues this worker consumes, with their prefetch; `slots` is the sum. */
  queues: ConsumedQueue[];
  slots: number;
  db: Db;
  leases: Leases;
  metrics: WorkerMetrics;
  outboxNotifier: OutboxNotifier;
  taskNotifier: TaskNotifier;
  /** Stops the worker (too many abandoned runs): main drains it and exits 1. */
  stopAndExit: () => void;
}

function consumerFor(parts: ConsumerParts, logger: Logger) {
  const { config, topology, queues, slots, stopAndExit, ...deps } = parts;
  const stopController = new AbortController();
  // Every run waiting to retry recording its result listens on this signal: up to one per prefetch slot.
  setMaxListeners(slots + 10, stopController.signal);
  // Leave a margin under the shutdown deadline for abandoning runs and closing connections. At the
  // grace deadline the consumer abandons the runs still going, and stopController stops their retries
  // against a Postgres that is down, so that every run returns and its message is requeued.
  const graceMs = Math.floor(config.SHUTDOWN_TIMEOUT_MS * 0.7);
  return createConsumer(
    { topology, queues, graceMs, giveUp: () => stopController.abort() },
    {
      ...deps,
      writes: createAttemptWrites(deps.db, config.WORKER_LEASE_MS, slots),
      leaseMs: config.WORKER_LEASE_MS,
      retry: { baseMs: config.RETRY_BASE_MS, maxMs: config.RETRY_MAX_MS },
      timeoutGraceMs: config.WORKER_TIMEOUT_GRACE_MS,
      resultMaxBytes: config.WORKER_RESULT_MAX_BYTES,
      orphans: createOrphans(config.WORKER_ABANDONED_RUNS_MAX, deps.metrics, stopAndExit),
      stopping: stopController.signal,
    },
    logger,
  );
}
