import { z } from 'zod';

/** Any JSON value. One instance, so the OpenAPI document names it once and refers to it everywhere. */
export const jsonValueSchema = z.json();

/** The AMQP message body. The payload itself stays in Postgres. `attempt` fits the attempts column (int4). */
export const taskMessageSchema = z
  .object({ taskId: z.guid(), type: z.string().min(1), attempt: z.number().int().positive().max(2_147_483_647) })
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
