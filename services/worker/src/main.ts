import { setMaxListeners } from 'node:events';
import {
  amqpConnection,
  amqpTopology,
  amqpUrls,
  bestEffortSettings,
  consumedQueues,
  createDb,
  createHealthServer,
  createLogger,
  createOutboxNotifier,
  createPool,
  createTaskNotifier,
  loadConfig,
  onShutdownSignal,
  postgresReady,
  redactUrl,
  resource,
  startAll,
  stopAll,
  toError,
  type AmqpTopology,
  type Config,
  type ConsumedQueue,
  type Db,
  type Logger,
  type OutboxNotifier,
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
      orphans: createOrphans(config.WORKER_ABANDONED_RUNS_MAX, deps.metrics, stopAndExit),
      stopping: stopController.signal,
    },
    logger,
  );
}

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('worker', config);
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
  );
  const outboxNotifier = createOutboxNotifier(pool, logger);
  const taskNotifier = createTaskNotifier(pool, logger);
  const leases = createLeases(db, config.WORKER_LEASE_MS, logger);
  const exits = shutdownTriggers();
  const stopAndExit = exits.abandonedRuns;
  const consumer = consumerFor(
    { config, topology, queues, slots, db, leases, metrics, outboxNotifier, taskNotifier, stopAndExit },
    logger,
  );
  const health = createHealthServer(
    config.HEALTH_PORT ?? 3002,
    async () => ({ postgres: await postgresReady(pool), rabbitmq: consumer.ready() }),
    metrics.registry,
    logger,
  );
  // Started in this order, stopped in reverse: the consumer drains first, the pool closes last.
  const parts: Service[] = [
    resource(() => db.destroy()),
    health,
    resource(() => taskNotifier.stop()),
    resource(() => outboxNotifier.stop()),
    amqpConnection(amqpUrls(config), logger, consumer.setup),
    leases,
    createSweeper(db, Math.max(250, Math.floor(config.WORKER_LEASE_MS / 2)), outboxNotifier, taskNotifier, logger),
    consumer,
  ];
  await startAll(parts);
  logger.info('worker started', {
    database: redactUrl(config.DATABASE_URL),
    queues: Object.fromEntries(queues.map((q) => [q.route.name, q.prefetch])),
  });

  exits.wire(onShutdownSignal(logger, () => stopAll(parts, config.SHUTDOWN_TIMEOUT_MS, logger)));
}

/**
 * One shutdown for the signals and for too many abandoned runs (drain, then exit 1). A stop for abandoned
 * runs once a signal started the shutdown does nothing: calling shutdown again would count as a second
 * signal and exit before the drain.
 */
function shutdownTriggers() {
  let shutdown: ((why: string) => Promise<number>) | null = null;
  let stopping = false;
  return {
    abandonedRuns(): void {
      if (stopping || !shutdown) return;
      stopping = true;
      void shutdown('abandoned runs').then(() => process.exit(1));
    },
    wire(fn: (why: string) => Promise<number>): void {
      shutdown = fn;
      for (const signal of ['SIGTERM', 'SIGINT'] as const) {
        process.on(signal, () => {
          stopping = true;
          void fn(signal).then((code) => process.exit(code));
        });
      }
    },
  };
}

main().catch((err: unknown) => {
  console.error(`worker failed to start: ${toError(err).message}`);
  process.exit(1);
});
