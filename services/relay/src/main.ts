import {
  amqpConnection,
  amqpTopology,
  amqpUrls,
  bestEffortSettings,
  createDb,
  createHealthServer,
  createLogger,
  createPool,
  loadConfig,
  onShutdownSignal,
  postgresReady,
  redactUrl,
  resource,
  startAll,
  stopAll,
  toError,
  type Config,
  type Logger,
  type Service,
} from '@taskbox/shared';
import { retiredQueues, taskTypeList } from '@taskbox/tasks';
import { createListener } from './listener';
import { createRelayMetrics } from './metrics';
import { setRelaySession } from './outbox-sql';
import { createPublisher } from './publisher';
import { createReconciler } from './reconciler';
import { createRelayLoop, type RelayLoopOptions } from './relay-loop';
import { createRetention, type RetentionOptions } from './retention';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('relay', config);
  const parts = createParts(config, logger);
  await startAll(parts);
  logger.info('relay started', {
    database: redactUrl(config.DATABASE_URL),
    batchSize: config.RELAY_BATCH_SIZE,
    pollMs: config.RELAY_POLL_MS,
  });

  const shutdown = onShutdownSignal(logger, () => stopAll(parts, config.SHUTDOWN_TIMEOUT_MS, logger));
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => void shutdown(signal).then((code) => process.exit(code)));
  }
}

function createParts(config: Config, logger: Logger): Service[] {
  const pool = createPool(config.DATABASE_URL, logger, {
    max: 4,
    statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
    onConnect: bestEffortSettings(setRelaySession, logger),
  });
  const db = createDb(pool);
  const metrics = createRelayMetrics(db);
  const topology = amqpTopology(config.AMQP_PREFIX, taskTypeList, retiredQueues);
  const publisher = createPublisher(topology, config.RELAY_CONFIRM_TIMEOUT_MS, logger);
  const loop = createRelayLoop({ db, publisher, logger, metrics, ...relayLoopSettings(config) });
  const reconciler = createReconciler({
    db,
    publisher,
    topology,
    logger,
    metrics,
    afterMs: config.REPUBLISH_AFTER_MS,
    wake: () => loop.wake(),
  });
  const health = createHealthServer(
    config.HEALTH_PORT ?? 3001,
    async () => ({ postgres: await postgresReady(pool), rabbitmq: publisher.ready() }),
    metrics.registry,
    logger,
  );
  // Started in this order, stopped in reverse: the periodic jobs and the loop first, the pool last.
  return [
    resource(() => db.destroy()),
    health,
    amqpConnection(amqpUrls(config), logger, async (model, rebuild) => {
      await publisher.setup(model, rebuild);
      loop.wake();
    }),
    loop,
    createListener(config.DATABASE_URL, logger, () => loop.wake()),
    createRetention(db, pool, retentionOptions(config), logger),
    reconciler,
  ];
}

function relayLoopSettings(config: Config): Pick<RelayLoopOptions, 'batchSize' | 'pollMs' | 'leaseMs'> {
  return {
    batchSize: config.RELAY_BATCH_SIZE,
    pollMs: config.RELAY_POLL_MS,
    // Longer than a whole confirm round trip, so a live relay never loses its rows to another.
    leaseMs: config.RELAY_CONFIRM_TIMEOUT_MS * 3,
  };
}

function retentionOptions(config: Config): RetentionOptions {
  return {
    outboxMs: config.OUTBOX_RETENTION_MS,
    attemptsMs: config.ATTEMPT_RETENTION_MS,
    tasksMs: config.TASK_RETENTION_MS,
    intervalMs: config.RETENTION_INTERVAL_MS,
  };
}

main().catch((err: unknown) => {
  console.error(`relay failed to start: ${toError(err).message}`);
  process.exit(1);
});
