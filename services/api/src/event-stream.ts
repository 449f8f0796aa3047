import type { Response } from 'express';

export interface StreamTiming {
  /** A comment line after this long without a write, so proxies do not cut an idle stream. */
  heartbeatMs: number;
  /** Sent once as `retry:`: how long an EventSource waits before it reconnects. */
  retryMs: number;
}

export interface StreamEvent {
  id: string;
  /** Without a type and data the block only moves the client's last event id (the SSE spec allows it). */
  event?: string;
  data?: unknown;
}

export interface EventStream {
  /**
   * Queues an event under `key`. While the client reads slower than events come, a newer event
   * replaces the unsent one with the same key: events are states, and only the latest is worth sending.
   */
  send(key: string, event: StreamEvent): void;
  /** Resolves once everything queued is written and the socket takes more, or the stream closed. */
  drained(): Promise<void>;
  /** Writes what is queued and ends the response. */
  end(): void;
  /** Aborts when the client went away or the stream ended. */
  readonly closed: AbortSignal;
}

function format({ id, event, data }: StreamEvent): string {
  const lines = [`id: ${id}`];
  if (event) lines.push(`event: ${event}`);
  // JSON.stringify escapes newlines, so the data fits on one line.
  if (data !== undefined) lines.push(`data: ${JSON.stringify(data)}`);
  return `${lines.join('\n')}\n\n`;
}

/**
 * Starts a text/event-stream response: headers that keep proxies from buffering or caching it, `retry:`
 * once, then events and heartbeat comments. Memory per stream is bounded by the number of keys, however
 * slow the client: a queued event is replaced, never appended.
 */
export function openEventStream(res: Response, timing: StreamTiming): EventStream {
  const closed = new AbortController();
  const pending = new Map<string, string>();
  let drainWaiters: (() => void)[] = [];
  res.status(200);
  res.setHeader('Content-Type', 'text/event-stream; charset=utf-8');
  res.setHeader('Cache-Control', 'no-cache');
  res.setHeader('X-Accel-Buffering', 'no');
  res.flushHeaders();

  const heartbeat = setTimeout(function beat() {
    if (!res.writableNeedDrain) res.write(': heartbeat\n\n');
    heartbeat.refresh();
  }, timing.heartbeatMs);
  const write = (chunk: string): void => {
    res.write(chunk);
    heartbeat.refresh();
  };
  const settleDrained = (): void => {
    if (!closed.signal.aborted && (pending.size > 0 || res.writableNeedDrain)) return;
    const waiters = drainWaiters;
    drainWaiters = [];
    waiters.forEach((resolve) => resolve());
  };
  const flush = (): void => {
    for (const [key, chunk] of pending) {
      pending.delete(key);
      write(chunk);
      if (res.writableNeedDrain) return;
    }
    settleDrained();
  };
  const finish = (): void => {
    clearTimeout(heartbeat);
    closed.abort();
    settleDrained();
  };
  res.on('drain', flush);
  res.once('close', finish);
  // The client may have left during the reads before the stream opened: its 'close' has fired already.
  if (res.closed || !res.socket || res.socket.destroyed) finish();
  write(`retry: ${timing.retryMs}\n\n`);

  return {
    send(key, event) {
      if (closed.signal.aborted) return;
      // Re-inserted so the queue keeps the order of the latest updates (list-streams.ts relies on it).
      pending.delete(key);
      pending.set(key, format(event));
      if (!res.writableNeedDrain) flush();
    },
    drained() {
      return new Promise<void>((resolve) => {
        drainWaiters.push(resolve);
        settleDrained();
      });
    },
    end() {
      if (closed.signal.aborted) return;
      for (const chunk of pending.values()) res.write(chunk);
      pending.clear();
      finish();
      res.end();
    },
    closed: closed.signal,
  };
}
