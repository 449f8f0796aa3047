import { z } from 'zod';

/** Building blocks of the OpenAPI document (openapi.ts and the files of its paths). */

export type JsonObject = Record<string, unknown>;

export const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
export const json = (name: string, description: string) => ({
  description,
  content: { 'application/json': { schema: ref(name) } },
});
export const problem = (description: string) => ({
  description,
  content: { 'application/problem+json': { schema: ref('Problem') } },
});
export const header = (description: string) => ({ description, schema: { type: 'string' } });
export const retryLater = (description: string) => ({
  ...problem(description),
  headers: { 'Retry-After': { description: 'seconds', schema: { type: 'integer' } } },
});

/** Query parameters, from the same zod objects that validate them. */
export function queryParameters(schema: z.ZodObject): JsonObject[] {
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

export const idParam = { name: 'id', in: 'path', required: true, schema: { type: 'string', format: 'uuid' } };
export const idempotencyKeyParam = {
  name: 'Idempotency-Key',
  in: 'header',
  required: false,
  schema: { type: 'string', maxLength: 200 },
};

/**
 * A task accepted (202 with its Location); a replay of a request with the same Idempotency-Key answers
 * the same, with Idempotent-Replayed.
 */
export const acceptedOrReplayed = (accepted: string, replayed: string) => ({
  '202': {
    ...json('TaskView', `${accepted}; or ${replayed}, with Idempotent-Replayed: true`),
    headers: { Location: header('/tasks/{id}'), 'Idempotent-Replayed': header('true, on a replay') },
  },
});
