import { abortError, invalidError, networkError, problemError, type Result } from './errors.js';

export interface ClientOptions {
  /** Where the api is: "https://api.example.com", or "" for the page's own origin in a browser. */
  baseUrl: string;
  /** A bearer token, or a function that gives the current one (asked before every request). */
  token?: string | (() => string | undefined | Promise<string | undefined>);
  /** Another fetch (a test double, a custom agent); the global one by default. */
  fetch?: typeof fetch;
}

export interface Http {
  baseUrl: string;
  fetch: typeof fetch;
  headers(extra?: Record<string, string>): Promise<Record<string, string>>;
}

export function createHttp(options: ClientOptions): Http {
  // Bound: a browser's fetch throws "Illegal invocation" when called as a method of another object.
  const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  return {
    baseUrl: options.baseUrl.replace(/\/$/, ''),
    fetch: fetchImpl,
    async headers(extra = {}) {
      const token = typeof options.token === 'function' ? await options.token() : options.token;
      return token ? { authorization: `Bearer ${token}`, ...extra } : { ...extra };
    },
  };
}

export interface RequestInit {
  method?: 'GET' | 'POST';
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/** One request: JSON in, JSON out, every failure as a value. */
export async function request<T>(http: Http, path: string, init: RequestInit = {}): Promise<Result<T>> {
  const { method = 'GET', body, signal } = init;
  const extra = body === undefined ? init.headers : { 'content-type': 'application/json', ...init.headers };
  let text: string | undefined;
  try {
    text = body === undefined ? undefined : JSON.stringify(body);
  } catch (err) {
    return {
      error: invalidError(`the body cannot be sent as JSON: ${err instanceof Error ? err.message : String(err)}`),
    };
  }
  let response: Response;
  try {
    response = await http.fetch(`${http.baseUrl}${path}`, {
      method,
      headers: await http.headers(extra),
      body: text,
      signal,
    });
  } catch (err) {
    return { error: signal?.aborted ? abortError(signal) : networkError(err) };
  }
  if (!response.ok) return { error: await problemError(response) };
  try {
    return { data: (await response.json()) as T };
  } catch (err) {
    return { error: signal?.aborted ? abortError(signal) : networkError(err) };
  }
}

/** Waits `ms`, or less when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted || ms <= 0) return resolve();
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
  });
}

/** Exponential backoff with jitter: none before the first failure, then growing up to 30 s. */
export function backoffMs(failures: number): number {
  if (failures <= 0) return 0;
  const ceiling = Math.min(30_000, 500 * 2 ** (failures - 1));
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}
