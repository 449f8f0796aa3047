import { abortError, invalidError, isTransient, type ClientError, type Result } from './errors.js';
import { backoffMs, createHttp, request, sleep, type ClientOptions, type Http } from './http.js';
import type { CreateTaskInput, NewTask, StreamToken, TaskList, TaskStatus, TaskView } from './types.js';
import { watchTask, type WatchOptions } from './watch.js';

export interface CreateOptions {
  /** Makes a repeated call answer the same task; one is drawn when absent, so the client's own retries are safe. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

/** As for a create: a repeated call with the same key answers the same retry, not a second one. */
export type RetryOptions = CreateOptions;

export interface ListFilter {
  status?: TaskStatus;
  type?: string;
  /** Created at or after this time: a Date, or an ISO string with an offset. */
  createdAfter?: Date | string;
  /** Created before this time. */
  createdBefore?: Date | string;
  /** Part of the error's name or message, in any case. */
  errorContains?: string;
  /** An admin's filter: this owner's tasks (without it, every owner's); others may name only themselves. */
  owner?: string;
  /** Tasks per page, 1 to 100. */
  limit?: number;
}

export interface WaitOptions {
  signal?: AbortSignal;
  /** Gives up after this long with a `timeout` error; the task itself goes on. */
  timeoutMs?: number;
}

export interface TaskboxClient {
  createTask(task: CreateTaskInput, options?: CreateOptions): Promise<Result<TaskView>>;
  getTask(id: string, options?: { signal?: AbortSignal }): Promise<Result<TaskView>>;
  /** Pages of the caller's tasks, newest first; an error ends the iteration as its last element. */
  listTasks(filter?: ListFilter, options?: { signal?: AbortSignal }): AsyncIterable<Result<TaskList>>;
  cancelTask(id: string, options?: { signal?: AbortSignal }): Promise<Result<TaskView>>;
  /** Puts a failed or cancelled task back to pending for another run; a 409 problem from any other status. */
  retryTask(id: string, options?: RetryOptions): Promise<Result<TaskView>>;
  /**
   * Calls `onChange` with each newer state until the terminal one, which it resolves with. An `onChange`
   * that throws ends the watch, its request closed: a `callback` error whose `cause` is what it threw.
   */
  watchTask(id: string, onChange: (view: TaskView) => void, options?: WatchOptions): Promise<Result<TaskView>>;
  /** The terminal state, without the states on the way. */
  waitForTask(id: string, options?: WaitOptions): Promise<Result<TaskView>>;
  /** A short-lived token for a browser's own EventSource (which cannot send headers); all streams without an id. */
  createStreamToken(id?: string, options?: { signal?: AbortSignal }): Promise<Result<StreamToken>>;
}

// Three tries: a blip of the network or a restart of the api, not an outage.
const POST_TRIES = 3;

function randomKey(): string {
  // getRandomValues, unlike randomUUID, also exists on pages served over plain http.
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function retryDelay(error: ClientError, tries: number): number {
  return error.retryAfterSeconds !== undefined ? Math.min(error.retryAfterSeconds, 10) * 1000 : backoffMs(tries);
}

/** A POST the api makes idempotent by its key: retried with the same key when a retry may fix it. */
async function postIdempotent(
  http: Http,
  path: string,
  body: unknown,
  { idempotencyKey = randomKey(), signal }: CreateOptions,
): Promise<Result<TaskView>> {
  for (let tries = 1; ; tries++) {
    const init = { method: 'POST' as const, body, headers: { 'idempotency-key': idempotencyKey }, signal };
    const answer = await request<TaskView>(http, path, init);
    if (!answer.error || !isTransient(answer.error) || tries >= POST_TRIES) return answer;
    await sleep(retryDelay(answer.error, tries), signal);
    if (signal?.aborted) return { error: abortError(signal) };
  }
}

/** The first of `fields` that is an invalid Date (toISOString would throw), as the error answered for it. */
function invalidDate(fields: object): ClientError | undefined {
  const [name] = Object.entries(fields).find(([, v]) => v instanceof Date && Number.isNaN(v.getTime())) ?? [];
  return name === undefined ? undefined : invalidError(`${name} is an invalid Date`);
}

// A task id as the api takes it (a UUID). Checked before a request: some other ids (`events`, `.`) are
// paths of other routes, which would answer for another task or for the list.
const TASK_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** `send` with the task's path, or the error of an id the api would refuse, with nothing sent. */
function onTask<T>(id: string, send: (path: string) => Promise<Result<T>>): Promise<Result<T>> {
  if (!TASK_ID.test(id)) return Promise.resolve({ error: invalidError('the task id must be a UUID') });
  return send(`/tasks/${id}`);
}

/** The client. Every method answers `{ data }` or `{ error }` and never throws for an HTTP or network failure. */
export function createClient(options: ClientOptions): TaskboxClient {
  const http = createHttp(options);
  const client: TaskboxClient = {
    createTask(task, createOptions = {}) {
      const invalid = invalidDate({ runAt: task.runAt });
      if (invalid) return Promise.resolve({ error: invalid });
      const body: NewTask = { ...task, runAt: task.runAt instanceof Date ? task.runAt.toISOString() : task.runAt };
      return postIdempotent(http, '/tasks', body, createOptions);
    },
    getTask: (id, { signal } = {}) => onTask(id, (path) => request<TaskView>(http, path, { signal })),
    async *listTasks(filter = {}, { signal } = {}) {
      const invalid = invalidDate(filter);
      if (invalid) {
        yield { error: invalid };
        return;
      }
      let cursor: string | null = null;
      do {
        const query = new URLSearchParams();
        for (const [key, value] of Object.entries({ ...filter, cursor })) {
          if (value !== undefined && value !== null) {
            query.set(key, value instanceof Date ? value.toISOString() : String(value));
          }
        }
        const page: Result<TaskList> = await request<TaskList>(http, `/tasks?${query}`, { signal });
        yield page;
        cursor = page.data?.next ?? null;
      } while (cursor);
    },
    cancelTask: (id, { signal } = {}) =>
      onTask(id, (path) => request<TaskView>(http, `${path}/cancel`, { method: 'POST', signal })),
    retryTask: (id, retryOptions = {}) =>
      onTask(id, (path) => postIdempotent(http, `${path}/retry`, undefined, retryOptions)),
    watchTask: (id, onChange, watchOptions) => onTask(id, () => watchTask(http, id, onChange, watchOptions)),
    waitForTask(id, { signal, timeoutMs } = {}) {
      const signals = [signal, timeoutMs === undefined ? undefined : AbortSignal.timeout(timeoutMs)];
      const combined = AbortSignal.any(signals.filter((s): s is AbortSignal => s !== undefined));
      return client.watchTask(id, () => undefined, { signal: combined });
    },
    createStreamToken: async (id, { signal } = {}) => {
      const post = (path: string) => request<StreamToken>(http, `${path}/stream-token`, { method: 'POST', signal });
      const answer = await (id === undefined ? post('/tasks') : onTask(id, post));
      // The api answers the stream's path: on a page served from another origin, EventSource would
      // resolve it against the page and send the token there.
      return answer.data ? { data: { ...answer.data, url: `${http.baseUrl}${answer.data.url}` } } : answer;
    },
  };
  return client;
}
