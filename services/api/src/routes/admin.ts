import { Router, type Request, type Response } from 'express';
import {
  amqpTopology,
  amqpUrls,
  closeBroker,
  connectBroker,
  outboxBacklog,
  redriveDeadLetters,
  RedriveInterrupted,
  wakeRelays,
  type Db,
  type DoctorConfig,
  type Logger,
  type RedriveReport,
  type TaskNotifier,
  type TaskStatus,
} from '@taskbox/shared';
import { taskTypeList } from '@taskbox/tasks';
import { bulkRequestSchema, redriveRequestSchema } from '../admin-schemas';
import { bulkAct, bulkStatuses, type BulkAction } from '../bulk-sql';
import { allowOnly, HttpProblem } from '../problem';
import type { SystemChecks } from '../system-checks';
import { traceparentOf } from '../trace-context';
import { actor, requireAdmin, viewer } from '../viewer';
import { jsonBody } from '../json-body';
import { invalid } from './tasks';

export interface AdminSettings {
  /** The broker and the doctor's thresholds: re-drives and checks connect per call. */
  doctor: DoctorConfig;
  /** BULK_ACTION_MAX: the most tasks one bulk call acts on. */
  bulkMax: number;
}

export interface AdminDeps {
  db: Db;
  taskNotifier: TaskNotifier;
  logger: Logger;
  settings: AdminSettings;
  checks: SystemChecks;
}

type Handler = (req: Request, res: Response) => Promise<void>;

// As a single retry or cancel logs them: a running task is only asked to stop.
const logMessage = (action: BulkAction, status: TaskStatus): string =>
  action === 'retry' ? 'task retried' : status === 'processing' ? 'task cancel requested' : 'task cancelled';

function bulk({ db, taskNotifier, logger, settings }: AdminDeps, action: BulkAction): Handler {
  return async (req, res) => {
    const body = bulkRequestSchema.safeParse(jsonBody(req, 'the filter'));
    if (!body.success) throw invalid('Invalid Bulk Request', body.error);
    const { filter, dryRun, limit = settings.bulkMax } = body.data;
    if (limit > settings.bulkMax) {
      throw new HttpProblem(422, 'Invalid Bulk Request', `limit: at most ${settings.bulkMax} (BULK_ACTION_MAX)`);
    }
    const statuses = bulkStatuses[action];
    if (filter.status && !statuses.includes(filter.status)) {
      const detail = `filter.status: ${action} applies to ${statuses.join(' or ')} tasks`;
      throw new HttpProblem(422, 'Invalid Bulk Request', detail);
    }
    const who = viewer(res);
    const context = { traceparent: traceparentOf(req) };
    const { matched, acted } = await bulkAct(db, action, filter, { limit, dryRun, by: who.owner, context });
    if (acted.length > 0) taskNotifier.changed(...acted.map((t) => t.id));
    for (const task of acted) {
      logger.info(logMessage(action, task.status), {
        taskId: task.id,
        messageId: task.messageId,
        correlationId: task.correlation_id,
        bulk: true,
        ...actor(res, task.owner),
      });
    }
    logger.info(`bulk ${action}`, { by: who.owner, admin: true, filter, dryRun, matched, acted: acted.length });
    res.json({ action, dryRun, matched, acted: acted.length, limit });
  };
}

/**
 * Re-drives the dead letters over a broker connection of its own, opened for this call: the api keeps
 * no AMQP connection, and a re-drive is rare (an operator asks).
 */
function redrive({ db, logger, settings }: AdminDeps): Handler {
  return async (req, res) => {
    const body = redriveRequestSchema.safeParse(jsonBody(req, 'the re-drive request'));
    if (!body.success) throw invalid('Invalid Re-drive Request', body.error);
    const { dryRun, limit } = body.data;
    const broker = await connectBroker(amqpUrls(settings.doctor));
    if (!broker.model) {
      throw new HttpProblem(503, 'Broker Unavailable', `${broker.check.detail}; retry shortly`, {}, 5);
    }
    let report: RedriveReport;
    try {
      const topology = amqpTopology(settings.doctor.AMQP_PREFIX, taskTypeList);
      report = await redriveDeadLetters(db, broker.model, topology, { dryRun, limit }, logger);
    } catch (err) {
      if (err instanceof RedriveInterrupted) throw new HttpProblem(503, 'Broker Unavailable', err.message, {}, 5);
      throw err;
    } finally {
      await closeBroker(broker.model);
    }
    if (report.republished > 0 && !dryRun) await wakeRelays(db);
    logger.info('dead letters re-driven', { by: viewer(res).owner, admin: true, dryRun, limit, ...report });
    res.json({ dryRun, ...report });
  };
}

function status({ db, checks }: AdminDeps): Handler {
  return async (_req, res) => {
    const [outbox, checked] = await Promise.all([outboxBacklog(db), checks.run()]);
    res.json({ outbox, checks: checked.results, checkedAt: checked.at.toISOString() });
  };
}

/** The admin endpoints: bulk retry and cancel, the dead-letter re-drive, the doctor's checks. 403 for others. */
export function adminRouter(deps: AdminDeps): Router {
  const router = Router();
  router.use((_req, res, next) => {
    requireAdmin(viewer(res));
    next();
  });
  router.route('/tasks/retry').post(bulk(deps, 'retry')).all(allowOnly('POST'));
  router.route('/tasks/cancel').post(bulk(deps, 'cancel')).all(allowOnly('POST'));
  router.route('/dead-letters/redrive').post(redrive(deps)).all(allowOnly('POST'));
  router.route('/status').get(status(deps)).all(allowOnly('GET'));
  return router;
}
