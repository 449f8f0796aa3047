import { setMaxListeners } from 'node:events';
import {
  amqpNames,
  bestEffortSettings,
  connectAmqp,
  createDb,
  createLogger,
  createOutboxNotifier,
  createPool,
  createTaskNotifier,
  exitOnSignal,
  loadConfig,
  postgresReady,
  redactUrl,
  startHealthServer,
  toError,
} from '@taskbox/shared';
import { createConsumer } from './consumer';
import { createLeases } from './leases';
import { createWorkerMetrics } from './metrics';
import { createSweeper } from './sweeper';
import { createAttemptWrites } from './attempt-writes';
import { setWorkerSession } from './task-sql';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('worker', config);
  // Each delivery in flight uses at most one connection at a time; a few more for heartbeats and sweeps.
  const pool = createPool(config.DATABASE_URL, logger, {
    max: Math.min(config.WORKER_PREFETCH, config.PG_POOL_SIZE) + 2,
    statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
    onConnect: bestEffortSettings(setWorkerSession, logger),
  });
  const db = createDb(pool);
  const metrics = createWorkerMetrics(db);
  const outboxNotifier = createOutboxNotifier(pool, logger);
  const taskNotifier = createTaskNotifier(pool, logger);
  const leases = createLeases(db, config.WORKER_LEASE_MS, logger);
  const stopController = new AbortController();
  // Every run waiting to retry recording its result listens on this signal: up to one per prefetch slot.
  setMaxListeners(config.WORKER_PREFETCH + 10, stopController.signal);
  const consumer = createConsumer(
    amqpNames(config.AMQP_PREFIX),
    config.WORKER_PREFETCH,
    {
      db,
      writes: createAttemptWrites(db, config.WORKER_LEASE_MS, config.WORKER_PREFETCH),
      leases,
      outboxNotifier,
      taskNotifier,
      metrics,
      leaseMs: config.WORKER_LEASE_MS,
      retry: { baseMs: config.RETRY_BASE_MS, maxMs: config.RETRY_MAX_MS },
      stopping: stopController.signal,
    },
    logger,
  );
  const sweeper = createSweeper(
    db,
    Math.max(250, Math.floor(config.WORKER_LEASE_MS / 2)),
    outboxNotifier,
    taskNotifier,
    logger,
  );
  const amqp = await connectAmqp(config.AMQP_URL, logger, consumer.setup);
  const health = await startHealthServer(
    config.HEALTH_PORT ?? 3002,
    async () => ({
      postgres: await postgresReady(pool),
      rabbitmq: consumer.ready(),
    }),
    metrics.registry,
    logger,
  );
  leases.start();
  sweeper.start();
  logger.info('worker started', { database: redactUrl(config.DATABASE_URL), prefetch: config.WORKER_PREFETCH });

  exitOnSignal(logger, config.SHUTDOWN_TIMEOUT_MS, async () => {
    // Leave a margin under the deadline for abandoning runs and closing connections. At the grace
    // deadline the consumer aborts the runs still going, and this stops retries against a Postgres
    // that is down, so that every run returns and its message is requeued.
    const graceMs = Math.floor(config.SHUTDOWN_TIMEOUT_MS * 0.7);
    const giveUp = setTimeout(() => stopController.abort(), graceMs);
    await consumer.stop(graceMs);
    clearTimeout(giveUp);
    stopController.abort();
    await sweeper.stop();
    leases.stop();
    await amqp.close().catch(() => undefined);
    await outboxNotifier.stop();
    await taskNotifier.stop();
    await health.stop();
    await db.destroy();
  });
}

main().catch((err: unknown) => {
  console.error(`worker failed to start: ${toError(err).message}`);
  process.exit(1);
});
