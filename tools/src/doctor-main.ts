import type { ChannelModel } from 'amqplib';
import {
  amqpNames,
  amqpUrls,
  createDb,
  createLogger,
  createPool,
  loadConfig,
  redactUrl,
  toError,
  type Config,
  type Db,
} from '@taskbox/shared';
import {
  checkConsumers,
  checkDatabase,
  checkDeadLetters,
  checkLongProcessing,
  checkMigrations,
  checkNames,
  checkOutboxBacklog,
  checkPendingPublished,
  checkPendingUnpublished,
  checkRepublished,
  checkTopology,
  connectBroker,
  type CheckResult,
} from './doctor';

type Step =
  | { name: string; needs: 'database'; run(db: Db): Promise<CheckResult> }
  | { name: string; needs: 'broker'; run(broker: ChannelModel): Promise<CheckResult> };

/** The checks after "database reachable" and "broker reachable", in the order a task travels. */
function steps(config: Config): { schema: Step[]; flow: Step[] } {
  const names = amqpNames(config.AMQP_PREFIX);
  const pendingMs = config.DOCTOR_PENDING_MS;
  const onDb = (name: string, run: (db: Db) => Promise<CheckResult>): Step => ({ name, needs: 'database', run });
  const onBroker = (name: string, run: (b: ChannelModel) => Promise<CheckResult>): Step => ({
    name,
    needs: 'broker',
    run,
  });
  return {
    schema: [onDb(checkNames.migrations, checkMigrations)],
    flow: [
      onBroker(checkNames.topology, (b) => checkTopology(b, names)),
      onBroker(checkNames.consumers, (b) => checkConsumers(b, names.queue)),
      onDb(checkNames.backlog, (db) => checkOutboxBacklog(db, pendingMs)),
      onDb(checkNames.pendingUnpublished, (db) => checkPendingUnpublished(db, pendingMs)),
      onDb(checkNames.pendingPublished, (db) => checkPendingPublished(db, pendingMs, config.REPUBLISH_AFTER_MS)),
      onDb(checkNames.republished, checkRepublished),
      onDb(checkNames.processing, (db) => checkLongProcessing(db, config.DOCTOR_PROCESSING_MS)),
      onBroker(checkNames.deadLetters, (b) => checkDeadLetters(b, names.deadQueue)),
    ],
  };
}

/** Runs one step; an unreachable dependency or a thrown error is a fail with a hint, never a crash. */
async function runStep(step: Step, db: Db | null, broker: ChannelModel | null): Promise<CheckResult> {
  const reached = step.needs === 'database' ? db : broker;
  if (!reached) {
    const first = step.needs === 'database' ? checkNames.database : checkNames.broker;
    return { name: step.name, status: 'fail', detail: 'not checked', hint: `fix "${first}" first` };
  }
  try {
    return step.needs === 'database' ? await step.run(reached as Db) : await step.run(reached as ChannelModel);
  } catch (err) {
    return { name: step.name, status: 'fail', detail: toError(err).message, hint: 'the check itself failed' };
  }
}

function print(results: CheckResult[]): void {
  const width = Math.max(...results.map((r) => r.name.length));
  for (const r of results) {
    const hint = r.status === 'ok' || !r.hint ? '' : `  → ${r.hint}`;
    process.stdout.write(`${r.status.padEnd(4)}  ${r.name.padEnd(width)}  ${r.detail}${hint}\n`);
  }
  const count = (s: CheckResult['status']): number => results.filter((r) => r.status === s).length;
  process.stdout.write(`\n${count('ok')} ok, ${count('warn')} warn, ${count('fail')} fail\n`);
}

async function main(): Promise<number> {
  const config = loadConfig(process.env);
  // Only pool errors would be logged; the findings go to stdout as the report.
  const logger = createLogger('doctor', { LOG_LEVEL: 'error', LOG_FORMAT: config.LOG_FORMAT });
  const prefix = config.AMQP_PREFIX ? ` (AMQP_PREFIX ${config.AMQP_PREFIX})` : '';
  const brokers = amqpUrls(config).map(redactUrl).join(', ');
  process.stdout.write(`taskbox doctor: ${redactUrl(config.DATABASE_URL)}, ${brokers}${prefix}\n\n`);

  const pool = createPool(config.DATABASE_URL, logger, {
    max: 2,
    connectionTimeoutMillis: 3000,
    statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
  });
  const results = [await checkDatabase(pool, config.DATABASE_URL)];
  const db = results[0]?.status === 'ok' ? createDb(pool) : null;
  const { schema, flow } = steps(config);
  for (const step of schema) results.push(await runStep(step, db, null));
  const broker = await connectBroker(amqpUrls(config));
  results.push(broker.check);
  for (const step of flow) results.push(await runStep(step, db, broker.model));

  print(results);
  await broker.model?.close().catch(() => undefined);
  await pool.end().catch(() => undefined);
  return results.some((r) => r.status === 'fail') ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`doctor failed: ${toError(err).message}`);
    process.exit(1);
  },
);
