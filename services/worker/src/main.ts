import { setMaxListeners } from 'node:events';
import {
  amqpNames,
  amqpUrls,
  bestEffortSettings,
  connectAmqp,
  createDb,
  createLogger,
  createOutboxNotifier,
  createPool,
  createTaskNotifier,
  exitOnSignal,
  loadConfig,
  redactUrl,
  startHealthServer,
  toError,
} from '@taskbox/shared';
import { createConsumer } from './consumer';
import { createLeases } from './leases';
import { createWorkerMetrics } from './metrics';
import { createSweeper } from './sweeper';
import { createAttemptWrites, setWorkerSession } from './task-sql';

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
  const notifier = createOutboxNotifier(pool, logger);
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
      notifier,
      taskNotifier,
      metrics,
      leaseMs: config.WORKER_LEASE_MS,
      retryBaseMs: config.RETRY_BASE_MS,
      retryMaxMs: config.RETRY_MAX_MS,
      stopping: stopController.signal,
    },
    logger,
  );
  const sweeper = createSweeper(
    db,
    Math.max(250, Math.floor(config.WORKER_LEASE_MS / 2)),
    notifier,
    taskNotifier,
    logger,
  );
  const amqp = await connectAmqp(amqpUrls(config), logger, consumer.setup);
  const health = await startHealthServer(
    config.HEALTH_PORT ?? 3002,
    async () => ({
      postgres: await pool.query('SELECT 1').then(
        () => true,
        () => false,
      ),
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
    await notifier.stop();
    await taskNotifier.stop();
    await health.stop();
    await db.destroy();
  });
}

main().catch((err: unknown) => {
  console.error(`worker failed to start: ${toError(err).message}`);
  process.exit(1);
});
