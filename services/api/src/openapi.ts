import { z } from 'zod';
import { jsonValueSchema, MAX_JSON_DEPTH } from '@taskbox/shared';
import { taskTypeNames } from '@taskbox/tasks';
import {
  createTaskRequestSchema,
  getQuerySchema,
  healthSchema,
  listQuerySchema,
  meSchema,
  problemSchema,
  readySchema,
  streamTokenSchema,
  taskBodySchemas,
  taskListSchema,
} from './schemas';
import {
  bulkRequestSchema,
  bulkResultSchema,
  countsSchema,
  redriveRequestSchema,
  redriveResultSchema,
  systemStatusSchema,
} from './admin-schemas';
import { taskViewSchema } from './task-view';
import { operatorPaths } from './openapi-operator';
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
import { streamPaths, streamTokenPaths } from './openapi-streams';

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
    [bulkRequestSchema, 'BulkRequest'],
    [redriveRequestSchema, 'RedriveRequest'],
    ...taskTypeNames.map((t): [z.ZodType, string] => [taskBodySchemas[t], bodyName(t)]),
  ]);
  const mapping = Object.fromEntries(taskTypeNames.map((t) => [t, `#/components/schemas/${bodyName(t)}`]));
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
      [countsSchema, 'Counts'],
      [bulkResultSchema, 'BulkResult'],
      [redriveResultSchema, 'RedriveResult'],
      [systemStatusSchema, 'SystemStatus'],
    ]),
  };
}

export function openApiDocument(): JsonObject {
  const common = {
    '400': problem('invalid id or query, malformed JSON, or no body where one is needed'),
    '401': problem('authentication is on and the bearer token is missing or invalid'),
    '503': retryLater('the database is unavailable, read-only, locked or overloaded; nothing was written'),
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
      ...taskPaths(common),
      ...operatorPaths(common),
      ...streamPaths(),
      ...streamTokenPaths(),
      ...probePaths(),
    },
  };
}

/** Creating, reading, listing and cancelling tasks. */
function taskPaths(common: Record<string, JsonObject>): JsonObject {
  const requestId = { name: 'X-Request-Id', in: 'header', required: false, schema: { type: 'string' } };
  return {
    '/tasks': {
      post: {
        summary: 'Create a task',
        parameters: [idempotencyKeyParam, requestId],
        requestBody: { required: true, content: { 'application/json': { schema: ref('CreateTask') } } },
        responses: {
          ...acceptedOrReplayed('accepted', 'a replay of an earlier request with the same Idempotency-Key'),
          ...common,
          '409': problem('the Idempotency-Key was used with a different body'),
          '413': problem('body larger than BODY_LIMIT'),
          '415': problem('body is not application/json'),
          '503': retryLater(
            'the database is unavailable, read-only, locked or overloaded, or too many inserts wait already; nothing was written',
          ),
          '422': problem(
            `unknown type, invalid payload, a NUL or unpaired surrogate in any string, a key named __proto__, JSON nested deeper than ${MAX_JSON_DEPTH}, ` +
              'or a schedule refused: runAt with delayMs, a runAt further back than SCHEDULE_PAST_SKEW_MS (unless the ' +
              'request replays a create accepted earlier), or a due time ' +
              'beyond SCHEDULE_MAX_AHEAD_MS',
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
        summary:
          'Get a task; with ?wait=SECONDS, long-poll until its status, step or progress changes (with &after=VERSION: until its version differs from that one)',
        parameters: [idParam, ...queryParameters(getQuerySchema)],
        responses: {
          '200': json('TaskView', 'the task'),
          ...common,
          '400': problem('id not UUID-shaped, or a bad wait or after'),
          '404': problem('no such task for you'),
          '429': retryLater('with wait: you have LONG_POLL_MAX_PER_OWNER long polls waiting already'),
          '503': retryLater('with wait: this process holds LONG_POLL_MAX long polls already; or the database is down'),
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
  };
}

/** Health, metrics and this document: no authentication. */
function probePaths(): JsonObject {
  return {
    '/healthz': { get: { summary: 'Alive', security: [], responses: { '200': json('Health', 'alive') } } },
    '/readyz': {
      get: {
        summary: 'Postgres reachable, with every migration of this build applied',
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
  };
}
