import { countsQuerySchema } from './admin-schemas';
import {
  acceptedOrReplayed,
  idempotencyKeyParam,
  idParam,
  json,
  problem,
  queryParameters,
  ref,
  retryLater,
  type JsonObject,
} from './openapi-parts';

const body = (name: string) => ({ required: true, content: { 'application/json': { schema: ref(name) } } });
const forbidden = problem('the caller is not an admin');
const notJson = problem('body is not application/json: nothing was done, not even a dry run');

/** The admin endpoints (routes/admin.ts): 403 for anyone else. */
function adminPaths(common: Record<string, JsonObject>): JsonObject {
  const bulk = (verb: string, statuses: string): JsonObject => ({
    post: {
      summary: `${verb} up to BULK_ACTION_MAX ${statuses} tasks that match the filter, oldest first; dryRun counts them`,
      requestBody: body('BulkRequest'),
      responses: {
        '200': json('BulkResult', 'how many matched, and how many this call acted on'),
        ...common,
        '403': forbidden,
        '415': notJson,
        '422': problem('an invalid filter, a status the action does not apply to, or a limit above BULK_ACTION_MAX'),
      },
    },
  });
  return {
    '/admin/tasks/retry': bulk('Retry', 'failed or cancelled'),
    '/admin/tasks/cancel': bulk('Cancel', 'pending or processing'),
    '/admin/dead-letters/redrive': {
      post: {
        summary:
          'Re-drive tasks.dead: a message whose task is pending or processing goes back through the outbox, the rest are dropped with a reason; each acked after its outcome committed',
        requestBody: body('RedriveRequest'),
        responses: {
          '200': json('RedriveResult', 'what was (or, on a dry run, would be) done'),
          ...common,
          '403': forbidden,
          '415': notJson,
          '422': problem('an invalid dryRun or limit'),
          '503': retryLater('no broker node answers, or the database is unavailable'),
        },
      },
    },
    '/admin/status': {
      get: {
        summary: "The outbox backlog and the doctor's checks with their hints (reused for a few seconds)",
        responses: {
          '200': json('SystemStatus', 'the checks, in the order a task travels'),
          ...common,
          '403': forbidden,
        },
      },
    },
  };
}

/** What operators use: retry, counts, who the caller is, and the admin endpoints. */
export function operatorPaths(common: Record<string, JsonObject>): JsonObject {
  return {
    ...adminPaths(common),
    '/tasks/counts': {
      get: {
        summary: "How many tasks of each type are in each status: the caller's (an admin: every owner's, or ?owner=)",
        parameters: queryParameters(countsQuerySchema),
        responses: {
          '200': json('Counts', 'one entry per type and status with tasks'),
          ...common,
          '403': problem('?owner= names another owner and the caller is not an admin'),
        },
      },
    },
    '/tasks/{id}/retry': {
      post: {
        summary:
          'Retry a failed or cancelled task: back to pending with a fresh budget of attempts (attempts go on counting; maxAttempts becomes attempts plus the budget) and a new outbox row, in one transaction',
        parameters: [idParam, idempotencyKeyParam],
        responses: {
          ...acceptedOrReplayed(
            'retried: pending again',
            "a replay: this task's retries used the Idempotency-Key already",
          ),
          ...common,
          '404': problem('no such task for you'),
          '409': problem('the task is pending, processing or succeeded'),
        },
      },
    },
    '/me': {
      get: {
        summary: 'Who the bearer token says the caller is, and whether an admin',
        responses: { '200': json('Me', 'the caller'), '401': common['401'] },
      },
    },
  };
}
