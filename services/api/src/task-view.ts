import { z } from 'zod';
import { jsonValueSchema, taskStatuses, type TaskRow } from '@taskbox/shared';
import type { findTimeline } from './task-sql';

const iso = z.iso.datetime({ offset: true });

/** What GET /tasks/{id} returns; also the source of the OpenAPI response schema. */
export const taskViewSchema = z.object({
  id: z.guid(),
  type: z.string(),
  status: z.enum(taskStatuses),
  owner: z.string().describe('whose task it is: the caller, unless the caller is an admin'),
  payload: jsonValueSchema,
  currentStep: z.string().nullable(),
  progress: z.number().min(0).max(1).nullable(),
  attempts: z.number().int(),
  maxAttempts: z.number().int(),
  runAt: iso
    .nullable()
    .describe('when the task is due (runAt, or its creation plus delayMs); null: as soon as possible'),
  timeoutMs: z
    .number()
    .int()
    .nullable()
    .describe("one attempt's time limit in ms; null on tasks from before limits were stored: the type's default"),
  externalJobId: z.string().nullable(),
  result: jsonValueSchema.nullable(),
  error: jsonValueSchema.nullable(),
  correlationId: z.string().nullable(),
  cancelRequested: z.boolean(),
  createdAt: iso,
  updatedAt: iso,
  startedAt: iso.nullable(),
  finishedAt: iso.nullable(),
  version: z
    .number()
    .int()
    .min(1)
    .describe('counts the changes of this view; a higher version is a later state (the event id of its stream)'),
  timeline: z
    .array(
      z.object({
        event: z.enum(['created', 'scheduled', 'published', 'started', 'finished', 'retried']),
        at: iso,
        attempt: z.number().int().optional(),
        externalJobId: z.string().optional(),
        outcome: z.string().optional(),
        error: z
          .object({ name: z.string(), message: z.string() })
          .optional()
          .describe("finished: the attempt's error; the name Interrupted is a worker's shutdown, not counted"),
        retry: z.number().int().optional().describe('retried: 1 for the first retry of the task, then 2, …'),
        by: z.string().optional().describe('retried: the owner or admin who asked'),
        runAt: iso.optional().describe('scheduled: when the task is due'),
      }),
    )
    .optional(),
});
export type TaskView = z.infer<typeof taskViewSchema>;

const isoOrNull = (d: Date | null): string | null => (d ? d.toISOString() : null);

export function toTaskView(row: TaskRow, timeline?: Awaited<ReturnType<typeof findTimeline>>): TaskView {
  const view: TaskView = {
    id: row.id,
    type: row.type,
    status: row.status,
    owner: row.owner,
    payload: row.payload as TaskView['payload'],
    currentStep: row.current_step,
    progress: row.progress,
    attempts: row.attempts,
    maxAttempts: row.max_attempts,
    runAt: isoOrNull(row.run_at),
    timeoutMs: row.timeout_ms,
    externalJobId: row.external_job_id,
    result: (row.result ?? null) as TaskView['result'],
    error: (row.error ?? null) as TaskView['error'],
    correlationId: row.correlation_id,
    cancelRequested: row.cancel_requested_at !== null,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
    startedAt: isoOrNull(row.started_at),
    finishedAt: isoOrNull(row.finished_at),
    version: Number(row.version),
  };
  if (timeline) view.timeline = toTimeline(row, timeline);
  return view;
}

/**
 * The timeline as of `row`. It is read after the row, in statements of their own, so it may hold what
 * happened since: an attempt that started or finished, a retry. Those are left out, or a view could say
 * `pending` with no attempt beside a timeline where one has started. The row's attempts bound the
 * attempts shown; a processing row's current attempt has not finished; a retry asked after the row's
 * last change is not in it (a retry sets both times to its transaction's now()).
 */
function toTimeline(row: TaskRow, timeline: Awaited<ReturnType<typeof findTimeline>>) {
  const attempts = timeline.attempts
    .filter((a) => a.attempt <= row.attempts)
    .map((a) => (row.status === 'processing' && a.attempt === row.attempts ? { ...a, finished_at: null } : a));
  const retries = timeline.retries.filter((r) => r.requested_at <= row.updated_at);
  const { messages } = timeline;
  const events: NonNullable<TaskView['timeline']> = [{ event: 'created', at: row.created_at.toISOString() }];
  // Only a run time after the creation was a schedule; a runAt within the past skew ran at once.
  if (row.run_at && row.run_at > row.created_at) {
    events.push({ event: 'scheduled', at: row.created_at.toISOString(), runAt: row.run_at.toISOString() });
  }
  for (const m of messages) {
    const attempt = (m.payload as { attempt?: number }).attempt;
    if (m.published_at) events.push({ event: 'published', at: m.published_at.toISOString(), attempt });
  }
  for (const a of attempts) {
    events.push({
      event: 'started',
      at: a.started_at.toISOString(),
      attempt: a.attempt,
      externalJobId: a.external_job_id,
    });
    if (a.finished_at) {
      const error = a.error as { name?: unknown; message?: unknown } | null;
      events.push({
        event: 'finished',
        at: a.finished_at.toISOString(),
        attempt: a.attempt,
        outcome: a.outcome ?? '',
        ...(typeof error?.name === 'string' && typeof error.message === 'string'
          ? { error: { name: error.name, message: error.message } }
          : {}),
      });
    }
  }
  for (const r of retries) {
    events.push({ event: 'retried', at: r.requested_at.toISOString(), retry: r.retry, by: r.requested_by });
  }
  return events.sort((x, y) => x.at.localeCompare(y.at));
}
