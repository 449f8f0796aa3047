import { randomUUID } from 'node:crypto';
import { Router, type Request, type Response } from 'express';
import { z } from 'zod';
import {
  requestHash as hashRequest,
  type Db,
  type TaskSchedule,
  type Inserted,
  type Logger,
  type TaskInsert,
  type TaskNotifier,
  type TaskRow,
  findJsonIssue,
  mayHaveCommitted,
  withTimeout,
} from '@taskbox/shared';
import { findTaskType, taskTypeNames, type TaskType } from '@taskbox/tasks';
import { decodeCursor, encodeCursor } from '../cursor';
import { jsonBody } from '../json-body';
import type { HeldRequests } from '../held-requests';
import { createLongPolls, type LongPollAnswer, type LongPolls } from '../long-poll';
import { allowOnly, HttpProblem } from '../problem';
import { createTaskSchema, getQuerySchema, idSchema, listQuerySchema, taskBodySchemas } from '../schemas';
import type { TaskEvents } from '../task-events';
import { traceparentOf } from '../trace-context';
import { countsQuerySchema } from '../admin-schemas';
import type { countTasks } from '../bulk-sql';
import { cancelTask } from '../cancel-sql';
import { findTask, findTaskByIdempotencyKey, findTimeline, createTaskInserter, listTasks } from '../task-sql';
import { retryTask } from '../retry-sql';
import { parseSchedule, refuseLongPast, type ScheduleLimits } from '../schedule';
import { toTaskView } from '../task-view';
import { actor, listOwner, viewer, type Viewer } from '../viewer';

const idempotencyKeySchema = z.string().min(1).max(200);

export interface TasksDeps {
  db: Db;
  taskNotifier: TaskNotifier;
  events: TaskEvents;
  logger: Logger;
  held: HeldRequests;
  /** Counts by type and status: one owner's, or (null) every owner's; reused for a moment (app.ts). */
  counts: (owner: string | null) => Promise<Counts>;
  schedule: ScheduleLimits;
  /** Whether POST /tasks takes a payload its type calls a demonstration fault (DEMO_FAULTS). */
  demoFaults: boolean;
}

export function invalid(title: string, error: z.ZodError): HttpProblem {
  const issues = error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
  return new HttpProblem(422, title, issues.map((i) => `${i.path || '(body)'}: ${i.message}`).join('; '), { issues });
}

export function parseId(req: Request): string {
  const parsed = idSchema.safeParse(req.params.id);
  if (!parsed.success) throw new HttpProblem(400, 'Invalid Task Id', 'the task id must be a UUID');
  // As Postgres writes it, so that waiters and NOTIFY payloads (task-events.ts) name a task one way.
  return parsed.data.toLowerCase();
}

export function badQuery(error: z.ZodError): HttpProblem {
  return new HttpProblem(400, 'Invalid Query', error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
}

type Handler = (req: Request, res: Response) => Promise<void>;

type Counts = { counts: Awaited<ReturnType<typeof countTasks>>; at: Date };

interface CreateRequest {
  type: TaskType;
  payload: unknown;
  maxAttempts: number;
  timeoutMs: number;
  schedule: TaskSchedule;
  idempotencyKey: string | null;
  requestHash: string | null;
}

/** Validates POST /tasks: media type, storable JSON, the envelope, the type's payload, the schedule, the key. */
function parseCreateRequest(req: Request, limits: ScheduleLimits, demoFaults: boolean): CreateRequest {
  const sent = jsonBody(req, 'the task');
  // Before any schema: z.json() recurses per level and would overflow the stack on a deep body.
  const issue = findJsonIssue(sent);
  if (issue)
    throw new HttpProblem(422, 'Invalid Task', `${issue.path || '(body)'}: ${issue.message}`, { issues: [issue] });
  const body = createTaskSchema.safeParse(sent);
  if (!body.success) throw invalid('Invalid Task', body.error);
  const definition = findTaskType(body.data.type);
  if (!definition) {
    const detail = `unknown task type "${body.data.type}"`;
    throw new HttpProblem(422, 'Unknown Task Type', detail, { knownTypes: taskTypeNames });
  }
  const type = definition.name;
  const typed = taskBodySchemas[type].safeParse(sent);
  if (!typed.success) throw invalid('Invalid Payload', typed.error);
  const { payload } = typed.data;
  if (!demoFaults && definition.demoFault?.(payload)) {
    const detail = `this payload makes a "${type}" task misbehave on purpose, a demonstration this api does not take (DEMO_FAULTS)`;
    throw new HttpProblem(422, 'Demonstration Fault Refused', detail);
  }
  const maxAttempts = body.data.maxAttempts ?? definition.maxAttempts;
  const schedule = parseSchedule(typed.data, limits);
  const idempotencyKey = parseIdempotencyKey(req);
  const { timeoutMs } = body.data;
  const hash = idempotencyKey ? hashRequest({ type, payload, maxAttempts, timeoutMs, schedule }) : null;
  return {
    type,
    payload,
    maxAttempts,
    timeoutMs: timeoutMs ?? definition.timeoutMs,
    schedule,
    idempotencyKey,
    requestHash: hash,
  };
}

function parseIdempotencyKey(req: Request): string | null {
  const rawKey = req.get('idempotency-key');
  const keyParse = rawKey === undefined ? undefined : idempotencyKeySchema.safeParse(rawKey);
  if (keyParse && !keyParse.success) {
    throw new HttpProblem(400, 'Invalid Idempotency-Key', 'the Idempotency-Key header must be 1 to 200 characters');
  }
  return keyParse?.data ?? null;
}

/** A replay of an earlier request with the same key: its task, unchanged, or 409 for another request. */
function answerReplay(res: Response, row: TaskRow | undefined, requestHash: string | null): void {
  if (!row) throw new Error('the task of a used idempotency key vanished');
  if (row.request_hash !== requestHash) {
    throw new HttpProblem(409, 'Idempotency-Key Reused', 'this Idempotency-Key was used with a different request');
  }
  // The first answer's status, as the Idempotency-Key draft has it; the header tells a replay apart.
  res.status(202).setHeader('Idempotent-Replayed', 'true');
  res.location(`/tasks/${row.id}`).json(toTaskView(row));
}

function createTask(deps: TasksDeps, insertTask: (insert: TaskInsert) => Promise<Inserted>): Handler {
  const { db, logger } = deps;
  return async (req, res) => {
    const parsed = parseCreateRequest(req, deps.schedule, deps.demoFaults);
    const { type, payload, maxAttempts, timeoutMs, schedule, idempotencyKey, requestHash } = parsed;
    const owner = viewer(res).owner;
    const earlier = () => findTaskByIdempotencyKey(db, owner, idempotencyKey as string);
    try {
      refuseLongPast(schedule, deps.schedule);
    } catch (problem) {
      // Accepted while its runAt was ahead: a replay since then still answers the task.
      const row = idempotencyKey ? await earlier() : undefined;
      if (row?.request_hash !== requestHash) throw problem;
      return answerReplay(res, row, requestHash);
    }
    const correlationId = res.locals.requestId as string;
    const task = {
      id: randomUUID(),
      type,
      payload,
      maxAttempts,
      timeoutMs,
      schedule,
      owner,
      idempotencyKey,
      requestHash,
    };
    let inserted: Inserted;
    try {
      inserted = await insertTask({ task, context: { correlationId, traceparent: traceparentOf(req) } });
    } catch (err) {
      // Its commit may have gone through before the connection broke: the id is this request's, so look,
      // for a second at most (a server that hangs is answered 503 as before).
      const lookup = () =>
        withTimeout(findTask(db, viewer(res), task.id), 1000, 'the lost insert').catch(() => undefined);
      const row = mayHaveCommitted(err) ? await lookup() : undefined;
      if (!row) throw err;
      logger.warn("task accepted: the insert's answer was lost, but it committed", { taskId: task.id, correlationId });
      res.status(202).location(`/tasks/${row.id}`).json(toTaskView(row));
      return;
    }
    // Nothing inserted: the key was used before by this owner.
    if (!inserted) return answerReplay(res, await earlier(), requestHash);
    const runAt = inserted.task.run_at?.toISOString();
    logger.info('task accepted', { taskId: task.id, messageId: inserted.messageId, type, correlationId, runAt });
    res.status(202).location(`/tasks/${inserted.task.id}`).json(toTaskView(inserted.task));
  };
}

function listTasksHandler({ db }: TasksDeps): Handler {
  return async (req, res) => {
    const query = listQuerySchema.safeParse(req.query);
    if (!query.success) throw badQuery(query.error);
    const { owner, limit, cursor, ...filter } = query.data;
    const rows = await listTasks(db, {
      ...filter,
      owner: listOwner(viewer(res), owner),
      limit: limit + 1,
      after: cursor ? decodeCursor(cursor) : undefined,
    });
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    const next = rows.length > limit && last ? encodeCursor(last) : null;
    res.json({ items: page.map((r) => toTaskView(r)), next });
  };
}

function countsHandler({ counts }: TasksDeps): Handler {
  return async (req, res) => {
    const query = countsQuerySchema.safeParse(req.query);
    if (!query.success) throw badQuery(query.error);
    const counted = await counts(listOwner(viewer(res), query.data.owner));
    res.json({ counts: counted.counts, countedAt: counted.at.toISOString() });
  };
}

async function readNow(db: Db, who: Viewer, id: string): Promise<LongPollAnswer | undefined> {
  const row = await findTask(db, who, id);
  return row && { row, timeline: await findTimeline(db, id) };
}

function getTask({ db }: TasksDeps, longPolls: LongPolls): Handler {
  return async (req, res) => {
    const id = parseId(req);
    const query = getQuerySchema.safeParse(req.query);
    if (!query.success) throw badQuery(query.error);
    const { wait, after } = query.data;
    // A client that goes away ends its wait, so an abandoned long poll holds nothing.
    const gone = new AbortController();
    res.once('close', () => gone.abort());
    const answer = wait
      ? await longPolls.wait(viewer(res), id, { waitMs: wait * 1000, after }, gone.signal)
      : await readNow(db, viewer(res), id);
    if (gone.signal.aborted) return;
    if (!answer) throw new HttpProblem(404, 'Task Not Found', `no task ${id}`);
    res.json(toTaskView(answer.row, answer.timeline));
  };
}

function cancel({ db, taskNotifier, logger }: TasksDeps): Handler {
  return async (req, res) => {
    const id = parseId(req);
    const who = viewer(res);
    const before = await cancelTask(db, who, id);
    if (!before) throw new HttpProblem(404, 'Task Not Found', `no task ${id}`);
    if (before !== 'pending' && before !== 'processing') {
      throw new HttpProblem(409, 'Task Already Finished', `task ${id} is ${before} and cannot be cancelled`);
    }
    // Both change the view (cancelled, or cancelRequested): long polls and streams hear of it now.
    taskNotifier.changed(id);
    const row = await findTask(db, who, id);
    if (!row) throw new Error(`task ${id} vanished after cancel`);
    logger.info(before === 'pending' ? 'task cancelled' : 'task cancel requested', {
      taskId: id,
      correlationId: row.correlation_id,
      ...actor(res, row.owner),
    });
    res.status(before === 'pending' ? 200 : 202).json(toTaskView(row));
  };
}

function retry({ db, taskNotifier, logger }: TasksDeps): Handler {
  return async (req, res) => {
    const id = parseId(req);
    const key = parseIdempotencyKey(req);
    const who = viewer(res);
    const outcome = await retryTask(db, who, id, key, { traceparent: traceparentOf(req) });
    if (outcome.kind === 'not found') throw new HttpProblem(404, 'Task Not Found', `no task ${id}`);
    if (outcome.kind === 'refused') {
      const detail = `task ${id} is ${outcome.status}; only a failed or cancelled task can be retried`;
      throw new HttpProblem(409, 'Task Not Retryable', detail);
    }
    if (outcome.kind === 'retried') {
      taskNotifier.changed(id);
      const { attempt, messageId, correlationId } = outcome;
      logger.info('task retried', { taskId: id, messageId, correlationId, attempt, ...actor(res, outcome.owner) });
    } else res.setHeader('Idempotent-Replayed', 'true');
    const row = await findTask(db, who, id);
    if (!row) throw new Error(`task ${id} vanished after retry`);
    res.status(202).location(`/tasks/${id}`).json(toTaskView(row));
  };
}

export function tasksRouter(deps: TasksDeps): Router {
  const router = Router();
  router
    .route('/')
    .post(createTask(deps, createTaskInserter(deps.db)))
    .get(listTasksHandler(deps))
    .all(allowOnly('GET', 'POST'));
  router.route('/counts').get(countsHandler(deps)).all(allowOnly('GET'));
  router
    .route('/:id')
    .get(getTask(deps, createLongPolls(deps.events, deps.held)))
    .all(allowOnly('GET'));
  router.route('/:id/cancel').post(cancel(deps)).all(allowOnly('POST'));
  router.route('/:id/retry').post(retry(deps)).all(allowOnly('POST'));
  return router;
}
