import {
  amqpNames,
  amqpUrls,
  bestEffortSettings,
  connectAmqp,
  createDb,
  createLogger,
  createPool,
  exitOnSignal,
  loadConfig,
  redactUrl,
  startHealthServer,
  toError,
} from '@taskbox/shared';
import { createListener } from './listener';
import { createRelayMetrics } from './metrics';
import { setRelaySession } from './outbox-sql';
import { createPublisher } from './publisher';
import { createReconciler } from './reconciler';
import { createRelayLoop } from './relay-loop';
import { createRetention } from './retention';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('relay', config);
  const pool = createPool(config.DATABASE_URL, logger, {
    max: 4,
    statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
    onConnect: bestEffortSettings(setRelaySession, logger),
  });
  const db = createDb(pool);
  const metrics = createRelayMetrics(db);
  const publisher = createPublisher(amqpNames(config.AMQP_PREFIX), config.RELAY_CONFIRM_TIMEOUT_MS, logger);
  const loop = createRelayLoop({
    db,
    publisher,
    logger,
    metrics,
    batchSize: config.RELAY_BATCH_SIZE,
    pollMs: config.RELAY_POLL_MS,
    // Longer than a whole confirm round trip, so a live relay never loses its rows to another.
    leaseMs: config.RELAY_CONFIRM_TIMEOUT_MS * 3,
  });
  const amqp = await connectAmqp(amqpUrls(config), logger, async (model, rebuild) => {
    await publisher.setup(model, rebuild);
    loop.wake();
  });
  const reconciler = createReconciler({
    db,
    publisher,
    logger,
    metrics,
    afterMs: config.REPUBLISH_AFTER_MS,
    wake: () => loop.wake(),
  });
  const listener = createListener(config.DATABASE_URL, logger, () => loop.wake());
  const retention = createRetention(
    db,
    {
      outboxMs: config.OUTBOX_RETENTION_MS,
      attemptsMs: config.ATTEMPT_RETENTION_MS,
      intervalMs: config.RETENTION_INTERVAL_MS,
    },
    logger,
  );
  const health = await startHealthServer(
    config.HEALTH_PORT ?? 3001,
    async () => ({
      postgres: await pool.query('SELECT 1').then(
        () => true,
        () => false,
      ),
      rabbitmq: publisher.ready(),
    }),
    metrics.registry,
    logger,
  );

  listener.start();
  loop.start();
  retention.start();
  reconciler.start();
  logger.info('relay started', {
    database: redactUrl(config.DATABASE_URL),
    batchSize: config.RELAY_BATCH_SIZE,
    pollMs: config.RELAY_POLL_MS,
  });

  exitOnSignal(logger, config.SHUTDOWN_TIMEOUT_MS, async () => {
    await reconciler.stop();
    await retention.stop();
    await listener.stop();
    await loop.stop();
    await amqp.close().catch(() => undefined);
    await health.stop();
    await db.destroy();
  });
}

main().catch((err: unknown) => {
  console.error(`relay failed to start: ${toError(err).message}`);
  process.exit(1);
});
