import { createClient, type TaskStatus, type TaskView } from './taskbox-client.js';

/** The bearer token lives in this tab's sessionStorage: gone when the tab closes, never sent to another origin. */
const TOKEN_KEY = 'taskbox.token';

export const token = {
  get: (): string | undefined => sessionStorage.getItem(TOKEN_KEY) ?? undefined,
  set: (value: string): void => sessionStorage.setItem(TOKEN_KEY, value),
  clear: (): void => sessionStorage.removeItem(TOKEN_KEY),
};

/** The typed client, for what it does best: following a task live (SSE, resume, long-poll fallback). */
export const client = createClient({ baseUrl: '', token: () => token.get() || undefined });

export interface Me {
  owner: string;
  admin: boolean;
}

export interface Count {
  type: string;
  status: TaskStatus;
  count: number;
}

export interface Counts {
  counts: Count[];
  /** When the count began; on a large table the api reuses a count for longer. */
  countedAt: string;
}

export interface Check {
  name: string;
  status: 'ok' | 'warn' | 'fail';
  detail: string;
  hint: string;
  count?: number;
}

export interface SystemStatus {
  outbox: { count: number; oldestAgeSeconds: number };
  checks: Check[];
  checkedAt: string;
}

export interface TaskPage {
  items: TaskView[];
  next: string | null;
}

export interface BulkFilter {
  owner?: string;
  type?: string;
  status?: TaskStatus;
  createdAfter?: string;
  createdBefore?: string;
  errorContains?: string;
}

export interface BulkResult {
  matched: number;
  acted: number;
  limit: number;
}

export interface RedriveResult {
  republished: number;
  dropped: Record<string, number>;
}

/** An answer that is not 2xx: the problem's title and detail. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail: string | undefined,
  ) {
    super(detail ? `${title}: ${detail}` : title);
  }
}

/** One JSON request with the signed-in token; throws ApiError for a problem answer. */
export async function call<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  const bearer = token.get();
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = (await res.json().catch(() => ({}))) as { title?: string; detail?: string };
  if (!res.ok) throw new ApiError(res.status, answer.title ?? res.statusText, answer.detail);
  return answer as T;
}

/** A query string of the given values, empty ones left out. */
export function query(values: Record<string, string | undefined | null>): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(values)) if (value) params.set(key, value);
  const text = params.toString();
  return text ? `?${text}` : '';
}
