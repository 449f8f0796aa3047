import { Router, type Request, type RequestHandler, type Response } from 'express';
import type { Db, Logger } from '@taskbox/shared';
import { authenticate, type AuthConfig } from '../auth';
import { openEventStream, type StreamBounds, type StreamTiming } from '../event-stream';
import type { HeldRequests } from '../held-requests';
import type { ListStreams } from '../list-streams';
import { allowOnly, HttpProblem } from '../problem';
import { listStreamQuerySchema, taskStreamQuerySchema } from '../schemas';
import type { StreamTokens } from '../stream-tokens';
import type { TaskEvents } from '../task-events';
import { parseVersion, streamTask } from '../task-stream';
import { currentHorizon, findTask } from '../task-sql';
import { listOwner, viewer } from '../viewer';
import { badQuery, parseId } from './tasks';

export interface StreamsDeps {
  db: Db;
  events: TaskEvents;
  lists: ListStreams;
  held: HeldRequests;
  tokens: StreamTokens;
  auth: AuthConfig;
  timing: StreamTiming;
  bounds: StreamBounds;
  logger: Logger;
}

type Handler = (req: Request, res: Response) => Promise<void>;

/**
 * A bearer header, or `?token=` from POST .../stream-token for EventSource. A task's token opens only
 * that task's stream (another task is 404, as if it did not exist); an owner's token opens every
 * stream of its owner. Invalid or expired: 401.
 */
function streamAuth(tokens: StreamTokens, bearer: RequestHandler): RequestHandler {
  return async (req, res, next) => {
    const token = req.query.token;
    if (token === undefined) return bearer(req, res, next);
    const scope = typeof token === 'string' && token.length <= 4096 ? await tokens.verify(token) : undefined;
    if (!scope) {
      const detail = 'the stream token is invalid or expired; POST .../stream-token for a new one';
      throw new HttpProblem(401, 'Invalid Stream Token', detail);
    }
    // A task's token names its id as parseId gives it, in lower case.
    const id = req.params.id;
    const task = typeof id === 'string' ? id.toLowerCase() : undefined;
    if (scope.task !== null && task === undefined) {
      throw new HttpProblem(401, 'Invalid Stream Token', "a task's stream token opens that task's stream only");
    }
    if (scope.task !== null && scope.task !== task) throw new HttpProblem(404, 'Task Not Found', `no task ${task}`);
    res.locals.owner = scope.owner;
    res.locals.admin = scope.admin;
    next();
  };
}

function taskStream(deps: StreamsDeps): Handler {
  return async (req, res) => {
    const id = parseId(req);
    const query = taskStreamQuerySchema.safeParse(req.query);
    if (!query.success) throw badQuery(query.error);
    const who = viewer(res);
    let release: (() => void) | undefined;
    try {
      const lastSeen = parseVersion(req.get('last-event-id'));
      // Admitted once the task is known: a task that is not yours is 404 whatever your streams.
      const open = () => {
        release = deps.held.admit(who.owner, 'stream');
        return openEventStream(res, deps.timing, deps.bounds, deps.logger);
      };
      const start = await streamTask(deps, open, who, id, lastSeen);
      if (start === 'not found') throw new HttpProblem(404, 'Task Not Found', `no task ${id}`);
      // The client has the terminal state: 204 is what stops an EventSource from reconnecting.
      if (start === 'already seen') res.status(204).end();
    } finally {
      release?.();
    }
  };
}

function listStream(deps: StreamsDeps): Handler {
  return async (req, res) => {
    const query = listStreamQuerySchema.safeParse(req.query);
    if (!query.success) throw badQuery(query.error);
    const { status, type } = query.data;
    const who = viewer(res);
    const owner = listOwner(who, query.data.owner);
    // Every owner's changes would be found by scanning the table at each wake-up: no index has them
    // by transaction alone (tasks_owner_changed starts with the owner).
    if (owner === null) throw new HttpProblem(400, 'Owner Required', "an admin's list stream names an owner (?owner=)");
    const release = deps.held.admit(who.owner, 'stream');
    let stopWaiting: (() => void) | undefined;
    try {
      // Registered as waiting before the stream's first read (TaskEvents.hold), and before it opens: a
      // database that cannot take the registration is answered with a problem, not a stream cut short.
      stopWaiting = await deps.events.hold();
      const horizon = await currentHorizon(deps.db);
      const last = req.get('last-event-id');
      // A watermark from the future (another database, a restore) cannot be trusted: start from now.
      const resumes = last !== undefined && /^\d{1,20}$/.test(last) && BigInt(last) <= BigInt(horizon);
      const since = resumes ? last : horizon;
      const stream = openEventStream(res, deps.timing, deps.bounds, deps.logger);
      const filter = { owner, status, type };
      // Read after the watermark: a task that changes meanwhile is sent again by follow, as it is then.
      if (!resumes && query.data.current !== 'false' && !(await deps.lists.current(filter, stream))) {
        stream.end();
        return;
      }
      stream.send('ready', { id: since, event: 'ready', data: {} });
      await deps.lists.follow(filter, since, stream);
      stream.end();
    } finally {
      stopWaiting?.();
      release();
    }
  };
}

function issueToken(deps: StreamsDeps, forTask: boolean): Handler {
  return async (req, res) => {
    const task = forTask ? parseId(req) : null;
    const who = viewer(res);
    if (task && !(await findTask(deps.db, who, task))) {
      throw new HttpProblem(404, 'Task Not Found', `no task ${task}`);
    }
    const { token, expiresAt } = await deps.tokens.issue({ ...who, task });
    const path = task ? `/tasks/${task}/events` : '/tasks/events';
    res.json({ token, expiresAt: expiresAt.toISOString(), url: `${path}?token=${encodeURIComponent(token)}` });
  };
}

/** Server-Sent Events and their tokens; mounted before the /tasks routes, which would take `events` for an id. */
export function streamsRouter(deps: StreamsDeps): Router {
  const bearer = authenticate(deps.auth);
  const router = Router();
  router.route('/events').get(streamAuth(deps.tokens, bearer), listStream(deps)).all(allowOnly('GET'));
  router.route('/:id/events').get(streamAuth(deps.tokens, bearer), taskStream(deps)).all(allowOnly('GET'));
  router.route('/stream-token').post(bearer, issueToken(deps, false)).all(allowOnly('POST'));
  router.route('/:id/stream-token').post(bearer, issueToken(deps, true)).all(allowOnly('POST'));
  return router;
}
