import { z } from 'zod';
import { jsonValueSchema, taskTypes } from '@taskbox/shared';
import {
  createTaskRequestSchema,
  getQuerySchema,
  healthSchema,
  listQuerySchema,
  listStreamQuerySchema,
  meSchema,
  problemSchema,
  readySchema,
  streamTokenSchema,
  taskBodySchemas,
  taskListSchema,
  taskStreamQuerySchema,
} from './schemas';
import { MAX_JSON_DEPTH } from './json-guard';
import { taskViewSchema } from './task-view';

type JsonObject = Record<string, unknown>;

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const json = (name: string, description: string) => ({
  description,
  content: { 'application/json': { schema: ref(name) } },
});
const problem = (description: string) => ({
  description,
  content: { 'application/problem+json': { schema: ref('Problem') } },
});
const header = (description: string) => ({ description, schema: { type: 'string' } });
const retryLater = (description: string) => ({
  ...problem(description),
  headers: { 'Retry-After': { description: 'seconds', schema: { type: 'integer' } } },
});

type Io = 'input' | 'output';

/** JSON Schemas for OpenAPI components: one registry per direction, so shared parts get one $ref name. */
function generate(io: Io, entries: [z.ZodType, string][]): Record<string, JsonObject> {
  const registry = z.registry<{ id: string }>();
  for (const [schema, id] of entries) registry.add(schema, { id });
  const { schemas } = z.toJSONSchema(registry, { uri: (id) => `#/components/schemas/${id}`, io });
  const out: Record<string, JsonObject> = {};
  for (const [id, schema] of Object.entries(schemas)) {
    // $schema and $id belong to standalone documents; inside OpenAPI 3.1 components they would re-base refs.
    out[id] = Object.fromEntries(Object.entries(schema).filter(([key]) => key !== '$schema' && key !== '$id'));
  }
  return out;
}

/** Components generated from the very zod objects the routes parse with. */
function components(): Record<string, JsonObject> {
  const bodyName = (type: string) => `CreateTask_${type}`;
  const requests = generate('input', [
    [jsonValueSchema, 'JsonValue'],
    [createTaskRequestSchema, 'CreateTask'],
    ...taskTypes.map((t): [z.ZodType, string] => [taskBodySchemas[t], bodyName(t)]),
  ]);
  const mapping = Object.fromEntries(taskTypes.map((t) => [t, `#/components/schemas/${bodyName(t)}`]));
  return {
    ...requests,
    CreateTask: { ...requests.CreateTask, discriminator: { propertyName: 'type', mapping } },
    ...generate('output', [
      [jsonValueSchema, 'JsonValue'],
      [taskViewSchema, 'TaskView'],
      [taskListSchema, 'TaskList'],
      [problemSchema, 'Problem'],
      [healthSchema, 'Health'],
      [readySchema, 'Ready'],
      [streamTokenSchema, 'StreamToken'],
      [meSchema, 'Me'],
    ]),
  };
}

/** Query parameters, from the same zod objects that validate them. */
function queryParameters(schema: z.ZodObject): JsonObject[] {
  const { properties = {}, required = [] } = z.toJSONSchema(schema, { io: 'input' }) as {
    properties?: Record<string, JsonObject>;
    required?: string[];
  };
  return Object.entries(properties).map(([name, s]) => ({
    name,
    in: 'query',
    required: required.includes(name),
    schema: s,
  }));
}

const idParam = { name: 'id', in: 'path', required: true, schema: { type: 'string', format: 'uuid' } };

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
function streamTokenPaths(): JsonObject {
  return {
    '/tasks/{id}/stream-token': {
      post: {
        summary: "A short-lived token for this task's stream, for EventSource (which cannot send headers)",
        parameters: [idParam],
        responses: {
          '200': json('StreamToken', 'the token, and the stream URL with it'),
          '401': streamErrors['401'],
          '404': problem('no such task for you'),
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
function streamPaths(): JsonObject {
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
          'First `event: ready`; then `event: task` with the TaskView (no timeline) of each task that changed and matches the filters as it is now. Ids are watermarks: reconnect with Last-Event-ID to get every task changed since, some possibly again (compare `version`). For the tasks as they were before the stream, GET /tasks after `ready`.',
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

export function openApiDocument(): JsonObject {
  const requestId = { name: 'X-Request-Id', in: 'header', required: false, schema: { type: 'string' } };
  const common = {
    '400': problem('invalid id, query or malformed JSON'),
    '401': problem('authentication is on and the bearer token is missing or invalid'),
  };
  return {
    openapi: '3.1.0',
    info: { title: 'taskbox api', version: '0.1.0', description: 'Long-running tasks for a web frontend.' },
    components: {
      schemas: components(),
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          description: 'static token (owner = its name) or JWT with exp (owner = jwt:<sub>)',
        },
        streamToken: {
          type: 'apiKey',
          in: 'query',
          name: 'token',
          description: 'from POST /tasks/{id}/stream-token or POST /tasks/stream-token; streams only',
        },
      },
    },
    security: [{}, { bearer: [] }],
    paths: {
      '/tasks': {
        post: {
          summary: 'Create a task',
          parameters: [
            { name: 'Idempotency-Key', in: 'header', required: false, schema: { type: 'string', maxLength: 200 } },
            requestId,
          ],
          requestBody: { required: true, content: { 'application/json': { schema: ref('CreateTask') } } },
          responses: {
            '202': { ...json('TaskView', 'accepted'), headers: { Location: header('/tasks/{id}') } },
            '200': {
              ...json('TaskView', 'a replay of an earlier request with the same Idempotency-Key'),
              headers: { 'Idempotent-Replayed': header('true') },
            },
            ...common,
            '409': problem('the Idempotency-Key was used with a different body'),
            '413': problem('body larger than BODY_LIMIT'),
            '415': problem('body is not application/json'),
            '422': problem(
              `unknown type, invalid payload, a NUL or unpaired surrogate in any string, or JSON nested deeper than ${MAX_JSON_DEPTH}`,
            ),
          },
        },
        get: {
          summary: "List the caller's tasks (an admin: every owner's, or ?owner=), newest first (keyset pagination)",
          parameters: queryParameters(listQuerySchema),
          responses: {
            '200': json('TaskList', 'a page'),
            ...common,
            '403': problem('?owner= names another owner and the caller is not an admin'),
          },
        },
      },
      '/tasks/{id}': {
        get: {
          summary: 'Get a task; with ?wait=SECONDS, long-poll until its status, step or progress changes',
          parameters: [idParam, ...queryParameters(getQuerySchema)],
          responses: {
            '200': json('TaskView', 'the task'),
            ...common,
            '404': problem('no such task for you'),
            '429': retryLater('with wait: you have LONG_POLL_MAX_PER_OWNER long polls waiting already'),
            '503': retryLater(
              'with wait: this process holds LONG_POLL_MAX long polls already; or the database is down',
            ),
          },
        },
      },
      '/tasks/{id}/cancel': {
        post: {
          summary: 'Cancel a task',
          parameters: [idParam],
          responses: {
            '200': json('TaskView', 'was pending; now cancelled'),
            '202': json('TaskView', 'is processing; the running handler is being aborted'),
            ...common,
            '404': problem('no such task for you'),
            '409': problem('already finished'),
          },
        },
      },
      '/me': {
        get: {
          summary: 'Who the bearer token says the caller is, and whether an admin',
          responses: { '200': json('Me', 'the caller'), '401': common['401'] },
        },
      },
      ...streamPaths(),
      ...streamTokenPaths(),
      '/healthz': { get: { summary: 'Alive', security: [], responses: { '200': json('Health', 'alive') } } },
      '/readyz': {
        get: {
          summary: 'Postgres reachable',
          security: [],
          responses: { '200': json('Ready', 'ready'), '503': json('Ready', 'not ready') },
        },
      },
      '/metrics': {
        get: {
          summary: 'Prometheus metrics',
          security: [],
          responses: { '200': { description: 'text exposition format', content: { 'text/plain': {} } } },
        },
      },
      '/openapi.json': {
        get: { summary: 'This document', security: [], responses: { '200': { description: 'OpenAPI 3.1' } } },
      },
    },
  };
}
