import { z } from 'zod';

/** Any JSON value. One instance, so the OpenAPI document names it once and refers to it everywhere. */
export const jsonValueSchema = z.json();

/**
 * Payload schemas of the built-in task types. The api validates with them (422 at the door) and the
 * worker parses with them again before running a handler, so both sides agree on one definition.
 */
export const taskPayloadSchemas = {
  echo: jsonValueSchema,
  sleep: z.object({ ms: z.number().int().min(0).max(3_600_000) }).strict(),
  flaky: z.object({ failTimes: z.number().int().min(0).max(100), message: z.string().max(200).optional() }).strict(),
} as const;

export type TaskType = keyof typeof taskPayloadSchemas;
export type TaskPayload<T extends TaskType> = z.infer<(typeof taskPayloadSchemas)[T]>;
export const taskTypes = Object.keys(taskPayloadSchemas) as TaskType[];

export function isTaskType(value: string): value is TaskType {
  return Object.hasOwn(taskPayloadSchemas, value);
}

/** The AMQP message body. The payload itself stays in Postgres. */
export const taskMessageSchema = z
  .object({ taskId: z.guid(), type: z.string().min(1), attempt: z.number().int().positive() })
  .strict();
export type TaskMessage = z.infer<typeof taskMessageSchema>;

/** An AMQP message body as a TaskMessage, or why it is not one. */
export function parseTaskMessage(
  content: Buffer,
): { ok: true; message: TaskMessage } | { ok: false; problem: 'unparseable' | 'invalid'; detail: string } {
  let body: unknown;
  try {
    body = JSON.parse(content.toString('utf8'));
  } catch {
    return { ok: false, problem: 'unparseable', detail: 'body is not JSON' };
  }
  const parsed = taskMessageSchema.safeParse(body);
  if (parsed.success) return { ok: true, message: parsed.data };
  const detail = parsed.error.issues.map((i) => `${i.path.join('.')} ${i.message}`).join('; ');
  return { ok: false, problem: 'invalid', detail };
}
