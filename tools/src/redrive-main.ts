import { parseArgs } from 'node:util';
import {
  amqpTopology,
  amqpUrls,
  closeBroker,
  connectBroker,
  createDb,
  createLogger,
  createOutboxNotifier,
  createPool,
  loadConfig,
  redriveDeadLetters,
  redriveSummary,
  toError,
} from '@taskbox/shared';
import { taskTypeList } from '@taskbox/tasks';

const usage = 'usage: npm run redrive -- [--dry-run] [--limit N]   (N: most messages to look at, default 1000)';

/** `npm run redrive`: re-drives the dead-letter queues (redriveDeadLetters) and prints what it did. */
async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { 'dry-run': { type: 'boolean', default: false }, limit: { type: 'string', default: '1000' } },
  });
  const limit = Number(values.limit);
  if (!Number.isInteger(limit) || limit < 1) {
    console.error(usage);
    return 2;
  }
  const config = loadConfig(process.env);
  const logger = createLogger('redrive', config);
  const pool = createPool(config.DATABASE_URL, logger, { max: 2, statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS });
  const db = createDb(pool);
  const broker = await connectBroker(amqpUrls(config));
  try {
    if (!broker.model) throw new Error(`${broker.check.detail} (${broker.check.hint})`);
    const dryRun = values['dry-run'];
    const topology = amqpTopology(config.AMQP_PREFIX, taskTypeList);
    const report = await redriveDeadLetters(db, broker.model, topology, { dryRun, limit }, logger);
    // Wake the relay now rather than at its next poll.
    if (report.republished > 0 && !dryRun) {
      const notifier = createOutboxNotifier(pool, logger);
      notifier.poke();
      await notifier.stop();
    }
    process.stdout.write(`${redriveSummary(report, dryRun)}\n`);
    return 0;
  } finally {
    await closeBroker(broker.model);
    await db.destroy();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`redrive failed: ${toError(err).message}`);
    process.exit(1);
  },
);
