/**
 * The api's contract as TypeScript types, written out so the client needs no schema library at run
 * time. test/unit/client-types.test.ts fails when they drift from the zod schemas the api validates
 * and answers with (services/api/src/schemas.ts, task-view.ts), which also generate /openapi.json.
 */

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

export const taskStatuses = ['pending', 'processing', 'succeeded', 'failed', 'cancelled'] as const;
export type TaskStatus = (typeof taskStatuses)[number];

export interface TimelineEvent {
  event: 'created' | 'scheduled' | 'published' | 'started' | 'finished' | 'retried';
  at: string;
  attempt?: number;
  externalJobId?: string;
  outcome?: string;
  /** finished: the attempt's error; the name `Interrupted` is a worker's shutdown, not counted. */
  error?: { name: string; message: string };
  /** retried: 1 for the task's first retry, then 2, … */
  retry?: number;
  /** retried: the owner or admin who asked. */
  by?: string;
  /** scheduled: when the task is due. */
  runAt?: string;
}

export interface TaskView {
  id: string;
  type: string;
  status: TaskStatus;
  /** Whose task it is: the caller, unless the caller is an admin. */
  owner: string;
  payload: JsonValue;
  currentStep: string | null;
  /** 0 to 1, or null before the handler reports any. */
  progress: number | null;
  attempts: number;
  maxAttempts: number;
  /** When the task is due; null: as soon as possible. */
  runAt: string | null;
  /** One attempt's time limit in ms; null on tasks from before limits were stored (the type's default applies). */
  timeoutMs: number | null;
  externalJobId: string | null;
  result: JsonValue | null;
  error: JsonValue | null;
  correlationId: string | null;
  cancelRequested: boolean;
  createdAt: string;
  updatedAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  /** Counts the changes of this view: a higher version is a later state. */
  version: number;
  /** On GET /tasks/{id} and on a task's stream. */
  timeline?: TimelineEvent[];
}

export interface TaskList {
  items: TaskView[];
  /** The cursor of the next page; null on the last page. */
  next: string | null;
}

/** The body of POST /tasks. */
export interface NewTask {
  type: string;
  payload?: JsonValue;
  maxAttempts?: number;
  /** Run at this time (ISO 8601 with an offset), not before; not with delayMs. */
  runAt?: string;
  /** Run this many milliseconds after the api accepts the task; not with runAt. */
  delayMs?: number;
  /** One attempt's time limit in ms, 100 to 86400000; the type's default when absent. */
  timeoutMs?: number;
}

/** What createTask takes: a NewTask whose runAt may also be a Date. */
export type CreateTaskInput = Omit<NewTask, 'runAt'> & { runAt?: Date | string };

export interface StreamToken {
  token: string;
  expiresAt: string;
  /** The stream this token opens, token included, under the client's baseUrl: pass it to EventSource. */
  url: string;
}

/** An RFC 9457 problem, as the api sends it. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail?: string;
  instance: string;
  requestId?: string;
  issues?: { path: string; message: string }[];
  knownTypes?: string[];
}

export const isTerminal = (status: TaskStatus): boolean =>
  status === 'succeeded' || status === 'failed' || status === 'cancelled';
