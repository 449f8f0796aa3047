import { listStreamQuerySchema, taskStreamQuerySchema } from './schemas';
import { header, idParam, json, problem, queryParameters, retryLater, type JsonObject } from './openapi-parts';

/** One response of a stream: its events are described in prose, which OpenAPI 3.1 has no schema for. */
function eventStream(description: string): JsonObject {
  const headers = {
    'Cache-Control': header('no-cache'),
    'X-Accel-Buffering': header('no: proxies must not buffer the stream'),
  };
  return { description, headers, content: { 'text/event-stream': { schema: { type: 'string' } } } };
}

const streamErrors = {
  '400': problem('invalid id or query'),
  '401': problem('no valid bearer token, or a stream token that is invalid, expired or for one task only'),
  '429': retryLater('you hold LONG_POLL_MAX_PER_OWNER long polls and streams already'),
  '503': retryLater('this process holds LONG_POLL_MAX long polls and streams already; or the database is down'),
};

/** The stream tokens (routes/streams.ts). */
export function streamTokenPaths(): JsonObject {
  return {
    '/tasks/{id}/stream-token': {
      post: {
        summary: "A short-lived token for this task's stream, for EventSource (which cannot send headers)",
        parameters: [idParam],
        responses: {
          '200': json('StreamToken', 'the token, and the stream URL with it'),
          '400': problem('invalid id'),
          '401': streamErrors['401'],
          '404': problem('no such task for you'),
          '503': retryLater('the database is unavailable'),
        },
      },
    },
    '/tasks/stream-token': {
      post: {
        summary: "A short-lived token for all of the caller's streams (GET /tasks/events and each task's)",
        responses: {
          '200': json('StreamToken', 'the token, and the list stream URL with it'),
          '401': streamErrors['401'],
        },
      },
    },
  };
}

/** The Server-Sent Events endpoints (routes/streams.ts). */
export function streamPaths(): JsonObject {
  const lastEventId = {
    name: 'Last-Event-ID',
    in: 'header',
    required: false,
    description: 'the id of the last event received; an EventSource sends it when it reconnects',
    schema: { type: 'string' },
  };
  const security = [{}, { bearer: [] }, { streamToken: [] }];
  return {
    '/tasks/{id}/events': {
      get: {
        summary: "Stream a task's states (Server-Sent Events) until its terminal state",
        description:
          'Each event is `event: task`, `id: <version>`, `data: <TaskView with timeline>`: the current state first (skipped when Last-Event-ID already has it), then every newer state; states committed in quick succession may arrive as the later one, the version tells. The stream ends after the terminal state. `retry:` once; a `: heartbeat` comment after STREAM_HEARTBEAT_MS without an event.',
        security,
        parameters: [idParam, ...queryParameters(taskStreamQuerySchema), lastEventId],
        responses: {
          '200': eventStream('the stream'),
          '204': { description: 'Last-Event-ID has the terminal state already: nothing more will come' },
          ...streamErrors,
          '404': problem('no such task for you, or a stream token for another task'),
        },
      },
    },
    '/tasks/events': {
      get: {
        summary: "Stream every change of the caller's tasks, filtered like GET /tasks",
        description:
          'First the current state: `event: current`, then `event: task` with the TaskView (no timeline) of every task that matches the filters, newest first, without an id (a client cut off before `ready` has no Last-Event-ID and gets it all again, after another `current`: drop what was sent before it); none with `current=false` or Last-Event-ID. Then `event: ready` with the first id; then `event: task` with the TaskView of each task that changed and matches the filters as it is now; with `status` pending or processing, a task that left that status is sent once in its new state (drop it from the view), including tasks that may have had it without this stream sending them (from GET /tasks, or while the client was away); a failed or cancelled task leaves only by a retry, which is not sent. Ids are watermarks: reconnect with Last-Event-ID to get every task changed since, some possibly again (compare `version`): a task that changed while the current state was sent comes again after `ready`.',
        security,
        parameters: [...queryParameters(listStreamQuerySchema), lastEventId],
        responses: {
          '200': eventStream('the stream'),
          ...streamErrors,
          '400': problem("invalid query; or an admin's stream that names no owner"),
          '403': problem('?owner= names another owner and the caller is not an admin'),
        },
      },
    },
  };
}
