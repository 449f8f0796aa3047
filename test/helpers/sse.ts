import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { waitFor } from './wait';

export interface SseEvent {
  id: string | undefined;
  event: string | undefined;
  data: unknown;
}

export interface SseClient {
  status: number;
  headers: Headers;
  events: SseEvent[];
  comments: string[];
  /** The `retry:` values received. */
  retries: number[];
  /** Resolves when the server ended the stream (or the connection failed). */
  ended: Promise<void>;
  isEnded(): boolean;
  waitFor(what: string, match: (events: SseEvent[]) => boolean, timeoutMs?: number): Promise<void>;
  close(): void;
}

/** Opens a Server-Sent Events stream with fetch, as a script would, and records what arrives. */
export async function openSse(url: string, headers: Record<string, string> = {}): Promise<SseClient> {
  const abort = new AbortController();
  const res = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: abort.signal });
  const events: SseEvent[] = [];
  const comments: string[] = [];
  const retries: number[] = [];
  let ended = false;
  const parser = createParser({
    onEvent: (m: EventSourceMessage) => events.push({ id: m.id, event: m.event, data: JSON.parse(m.data) }),
    onComment: (c) => comments.push(c),
    onRetry: (ms) => retries.push(ms),
  });
  const reading = (async () => {
    if (!res.body) return;
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
        parser.feed(decoder.decode(chunk.value, { stream: true }));
      }
    } catch {
      // Aborted by close(), or the connection was cut: the test asserts on what arrived.
    } finally {
      ended = true;
    }
  })();
  return {
    status: res.status,
    headers: res.headers,
    events,
    comments,
    retries,
    ended: reading,
    isEnded: () => ended,
    async waitFor(what, match, timeoutMs = 20_000) {
      await waitFor(what, () => match(events), timeoutMs, 20);
    },
    close: () => abort.abort(),
  };
}
