import type { Registry } from 'prom-client';
import {
  amqpConnection,
  amqpTopology,
  amqpUrls,
  bestEffortSettings,
  createDb,
  createPool,
  postgresReadiness,
  redactUrl,
  resource,
  type Config,
  type Logger,
  type ReadinessCheck,
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

/** The relay's parts, in start order, what its health server reports (main.ts serves them), and its start line. */
export interface RelayParts {
  parts: Service[];
  ready: ReadinessCheck;
  registry: Registry;
  logStarted(): void;
}

/** `processMetrics`: off when the relay shares its process with services that report them. */
export function relayParts(config: Config, logger: Logger, { processMetrics = true } = {}): RelayParts {
  const pool = createPool(config.DATABASE_URL, logger, {
    max: 4,
    statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
    onConnect: bestEffortSettings(setRelaySession, logger),
  });
  const db = createDb(pool);
  const topology = amqpTopology(config.AMQP_PREFIX, taskTypeList, retiredQueues);
  const metrics = createRelayMetrics(
    db,
    topology.queues.map((q) => q.name),
    { processMetrics },
  );
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
  // Started in this order, stopped in reverse: the periodic jobs and the loop first, the pool last.
  const parts = [
    resource(() => db.destroy()),
    amqpConnection(amqpUrls(config), logger, async (model, rebuild) => {
      await publisher.setup(model, rebuild);
      loop.wake();
    }),
    loop,
    createListener(config.DATABASE_URL, logger, () => loop.wake()),
    createRetention(db, pool, retentionOptions(config), logger),
    reconciler,
  ];
  const postgresReady = postgresReadiness(pool, logger, { writes: true });
  return {
    parts,
    // Postgres that answers but where drains fail (the outbox locked past the statement timeout) is not ready either.
    ready: async () => ({ postgres: (await postgresReady()) && loop.draining(), rabbitmq: publisher.ready() }),
    registry: metrics.registry,
    logStarted: () =>
      logger.info('relay started', {
        database: redactUrl(config.DATABASE_URL),
        batchSize: config.RELAY_BATCH_SIZE,
        pollMs: config.RELAY_POLL_MS,
      }),
  };
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
