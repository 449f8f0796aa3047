import { acceptedOrReplayed, idempotencyKeyParam, idParam, json, problem, type JsonObject } from './openapi-parts';

/** What operators use: retry, who the caller is, and the admin endpoints. */
export function operatorPaths(common: Record<string, JsonObject>): JsonObject {
  return {
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
