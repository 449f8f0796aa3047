import type { ChannelModel } from 'amqplib';
import type pg from 'pg';
import { amqpTopology, type TypeRoute } from './amqp-topology';
import { amqpUrls, type Config } from './config';
import type { Db } from './db';
import {
  checkDatabase,
  checkLongProcessing,
  checkLongTransactions,
  checkMigrations,
  checkNames,
  checkOutboxBacklog,
  checkPendingPublished,
  checkPendingUnpublished,
  checkRefused,
  checkRepublished,
  checkUnroutable,
  closeBroker,
  connectBroker,
  type CheckResult,
} from './doctor-checks';
import { checkConsumers, checkDeadLetters, checkNoHandler, checkRetiredQueues, checkTopology } from './doctor-queues';
import { isStatementTimeout, toError } from './errors';

export type DoctorConfig = Pick<
  Config,
  | 'DATABASE_URL'
  | 'AMQP_URL'
  | 'AMQP_URLS'
  | 'AMQP_PREFIX'
  | 'DOCTOR_PENDING_MS'
  | 'DOCTOR_PROCESSING_MS'
  | 'REPUBLISH_AFTER_MS'
>;

type Step =
  | { name: string; needs: 'database'; run(db: Db): Promise<CheckResult> }
  | { name: string; needs: 'broker'; run(broker: ChannelModel): Promise<CheckResult> };

/** The checks after "database reachable" and "broker reachable", in the order a task travels. */
function steps(
  config: DoctorConfig,
  types: readonly TypeRoute[],
  retired: readonly string[],
): { schema: Step[]; flow: Step[] } {
  const topology = amqpTopology(config.AMQP_PREFIX, types, retired);
  const pendingMs = config.DOCTOR_PENDING_MS;
  const onDb = (name: string, run: (db: Db) => Promise<CheckResult>): Step => ({ name, needs: 'database', run });
  const onBroker = (name: string, run: (b: ChannelModel) => Promise<CheckResult>): Step => ({
    name,
    needs: 'broker',
    run,
  });
  return {
    schema: [
      onDb(checkNames.migrations, checkMigrations),
      onDb(checkNames.longTransactions, (db) => checkLongTransactions(db, pendingMs)),
    ],
    flow: [
      onBroker(checkNames.topology, (b) => checkTopology(b, topology)),
      onBroker(checkNames.consumers, (b) => checkConsumers(b, topology)),
      onDb(checkNames.backlog, (db) => checkOutboxBacklog(db, pendingMs)),
      onDb(checkNames.pendingUnpublished, (db) => checkPendingUnpublished(db, pendingMs)),
      onDb(checkNames.unroutable, checkUnroutable),
      onDb(checkNames.refused, (db) => checkRefused(db, pendingMs)),
      onDb(checkNames.pendingPublished, (db) => checkPendingPublished(db, pendingMs, config.REPUBLISH_AFTER_MS)),
      onDb(checkNames.republished, checkRepublished),
      onDb(checkNames.processing, (db) => checkLongProcessing(db, config.DOCTOR_PROCESSING_MS)),
      onDb(checkNames.noHandler, checkNoHandler),
      onBroker(checkNames.deadLetters, (b) => checkDeadLetters(b, topology)),
      onBroker(checkNames.retiredQueues, (b) => checkRetiredQueues(b, topology)),
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
    const hint = isStatementTimeout(err)
      ? `the check ran past DB_STATEMENT_TIMEOUT_MS: a table it reads is locked (see "${checkNames.longTransactions}") or the server is busy`
      : 'the check itself failed';
    return { name: step.name, status: 'fail', detail: toError(err).message, hint };
  }
}

/**
 * Every check of the chain a task takes, in order, for `npm run doctor` and the dashboard. The broker
 * is reached through a connection of its own, opened for this run and closed after it: the api has no
 * other AMQP connection, and a run is rare enough (a person asking) that a connect per run is cheap.
 * `types` are the registered task types (taskTypeList of @taskbox/tasks): the queues to check are theirs;
 * `retired` the queues they moved off (retiredQueues), checked for messages left behind.
 */
export async function runDoctor(
  config: DoctorConfig,
  pool: pg.Pool,
  db: Db,
  types: readonly TypeRoute[],
  retired: readonly string[] = [],
): Promise<CheckResult[]> {
  const results = [await checkDatabase(pool, config.DATABASE_URL)];
  const reachedDb = results[0]?.status === 'ok' ? db : null;
  const { schema, flow } = steps(config, types, retired);
  for (const step of schema) results.push(await runStep(step, reachedDb, null));
  const broker = await connectBroker(amqpUrls(config));
  try {
    results.push(broker.check);
    for (const step of flow) results.push(await runStep(step, reachedDb, broker.model));
  } finally {
    await closeBroker(broker.model);
  }
  return results;
}
