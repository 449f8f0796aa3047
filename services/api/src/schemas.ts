import { z } from 'zod';
import { isoInstant, isStorableText, TASK_OPTION_LIMITS, UNSTORABLE_TEXT } from '@taskbox/shared';
import { taskTypeList, type TaskType } from '@taskbox/tasks';
import { taskViewSchema } from './task-view';

/**
 * The zod schemas the routes validate with. openapi.ts generates the document from these same
 * objects, so the document cannot drift from what the api accepts and returns.
 */

const statusSchema = taskViewSchema.shape.status;
const { maxAttempts, timeoutMs } = TASK_OPTION_LIMITS;
const maxAttemptsSchema = z.number().int().min(maxAttempts.min).max(maxAttempts.max);
const timeoutMsSchema = z
  .number()
  .int()
  .min(timeoutMs.min)
  .max(timeoutMs.max)
  .describe("one attempt's time limit in ms (default: the type's); then its signal aborts, and after a grace it fails");
// Compared with a text column: Postgres would refuse a NUL in the parameter (SQLSTATE 22021).
const typeNameSchema = z.string().min(1).max(100).refine(isStorableText, UNSTORABLE_TEXT);

/** When the task is due (schedule.ts checks the pair and the limits). */
const scheduleFields = {
  runAt: isoInstant
    .optional()
    .describe(
      'run at this time (ISO 8601 with an offset), not before; not with delayMs; at most SCHEDULE_MAX_AHEAD_MS ahead',
    ),
  delayMs: z
    .number()
    .int()
    .min(0)
    .optional()
    .describe('run this many milliseconds after the api accepted the task; not with runAt'),
};

/** The envelope every task shares; checked first so an unknown type gets its own 422. */
export const createTaskSchema = z
  .object({
    type: typeNameSchema,
    payload: z.json().optional(),
    maxAttempts: maxAttemptsSchema.optional(),
    ...scheduleFields,
    timeoutMs: timeoutMsSchema.optional(),
  })
  .strict();

function taskBody(type: (typeof taskTypeList)[number]) {
  return z
    .object({
      type: z.literal(type.name),
      // prefault, not default: a missing payload is parsed as {} so a type that needs fields still says which.
      payload: (type.payload as z.ZodType<unknown>).prefault({}),
      maxAttempts: maxAttemptsSchema.optional(),
      ...scheduleFields,
      timeoutMs: timeoutMsSchema.optional(),
    })
    .strict();
}

/** Per task type: the whole request body, with that type's payload schema. */
export const taskBodySchemas = Object.fromEntries(taskTypeList.map((t) => [t.name, taskBody(t)])) as Record<
  TaskType,
  ReturnType<typeof taskBody>
>;

/** What POST /tasks accepts, one branch per task type (documented as oneOf with a discriminator). */
export const createTaskRequestSchema = z.discriminatedUnion(
  'type',
  Object.values(taskBodySchemas) as [ReturnType<typeof taskBody>, ...ReturnType<typeof taskBody>[]],
);

export const idSchema = z.guid();

const ownerParam = z
  .string()
  .min(1)
  .max(300)
  .refine(isStorableText, UNSTORABLE_TEXT)
  .optional()
  .describe("an admin's filter: this owner's tasks (without it, every owner's); others may name only themselves");

/** The filters GET /tasks and the bulk actions share (task-filter.ts). */
export const taskFilterFields = {
  status: statusSchema.optional(),
  type: typeNameSchema.optional(),
  createdAfter: isoInstant.optional().describe('created at or after this time'),
  createdBefore: isoInstant.optional().describe('created before this time'),
  errorContains: z
    .string()
    .min(1)
    .max(200)
    .refine(isStorableText, UNSTORABLE_TEXT)
    .optional()
    .describe("part of the error's name or message, in any case"),
};

export const listQuerySchema = z
  .object({
    ...taskFilterFields,
    owner: ownerParam,
    limit: z.coerce.number().int().min(1).max(100).default(20),
    cursor: z.string().max(200).optional(),
  })
  .strict();

/**
 * GET /tasks/{id}: `wait` long-polls up to 30 s (longer holds sockets that proxies cut anyway). `after` is
 * the version the client has: without it a change that committed between two polls would wait for the
 * next one. Digits as the version column writes them, compared as text (a bigint can pass 2^53).
 */
export const getQuerySchema = z.object({
  wait: z.coerce.number().gt(0).max(30).optional(),
  after: z
    .string()
    .regex(/^(0|[1-9][0-9]{0,18})$/, 'a task version: digits, as the view and the event ids give it')
    .optional()
    .describe(
      "with wait: the task's version the client has; answers at once when the task's version differs, else at the next change",
    ),
});

const tokenParam = z
  .string()
  .max(4096)
  .optional()
  .describe('a stream token (POST .../stream-token) instead of a bearer header');

/** GET /tasks/{id}/events. */
export const taskStreamQuerySchema = z.object({ token: tokenParam }).strict();

/** GET /tasks/events: the filters of GET /tasks, without paging. */
export const listStreamQuerySchema = z
  .object({
    status: statusSchema.optional(),
    type: typeNameSchema.optional(),
    owner: ownerParam.describe("an admin's stream follows the owner it names, and must name one"),
    current: z
      .enum(['true', 'false'])
      .optional()
      .describe('false: no current state first, only the changes after the stream opened'),
    token: tokenParam,
  })
  .strict();

export const streamTokenSchema = z.object({
  token: z.string(),
  expiresAt: z.iso.datetime({ offset: true }),
  url: z.string().describe('the stream this token opens, token included: pass it to EventSource'),
});

export const taskListSchema = z.object({
  items: z.array(taskViewSchema),
  next: z.string().nullable().describe('cursor of the next page; null on the last page'),
});

/** RFC 9457 problem details; loose because some problems carry extra members (issues, knownTypes). */
export const problemSchema = z.looseObject({
  type: z.string(),
  title: z.string(),
  status: z.number().int().min(400).max(599),
  detail: z.string().optional(),
  instance: z.string(),
  requestId: z.string().optional(),
  issues: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
  knownTypes: z.array(z.string()).optional(),
});

export const meSchema = z.object({
  owner: z.string().describe('the owner of the tasks this caller creates'),
  admin: z.boolean().describe("whether this caller may see and act on every owner's tasks"),
});

export const healthSchema = z.object({ status: z.literal('ok') });

export const readySchema = z.object({
  status: z.enum(['ready', 'not ready']),
  checks: z.object({ postgres: z.boolean() }),
});
