import type { Response } from 'express';
import type { Logger } from '@taskbox/shared';

export interface StreamTiming {
  /** A comment (or resumeAt's id) after this long without a write, so proxies do not cut an idle stream. */
  heartbeatMs: number;
  /** Sent once as `retry:`: how long an EventSource waits before it reconnects. */
  retryMs: number;
}

export interface StreamBounds {
  /** Once this many bytes of events are queued, send() answers false: the sender waits for drained(). */
  maxQueuedBytes: number;
  /** A write blocked this long (the client takes nothing) ends the stream. */
  stallMs: number;
}

export interface StreamEvent {
  /** Absent: the client's last event id stays as it was (a list stream's current state, before `ready`). */
  id?: string;
  /** Without a type and data the block only moves the client's last event id (the SSE spec allows it). */
  event?: string;
  data?: unknown;
}

export interface EventStream {
  /**
   * Queues an event under `key`. While the client reads slower than events come, a newer event
   * replaces the unsent one with the same key: events are states, and only the latest is worth sending.
   * False once the queue holds maxQueuedBytes: a sender with many keys (a list stream) then sends no
   * more until drained(), so that the queue holds at most that and one more event.
   */
  send(key: string, event: StreamEvent): boolean;
  /**
   * The heartbeat becomes an id-only block with `id`, instead of a comment: a stream whose client is
   * sent nothing for a long time (a filter that rarely matches) still moves its last event id on, so a
   * reconnect resumes from there. A heartbeat is written only when the queue is empty, so `id` must
   * cover what was queued before this call, and no more.
   */
  resumeAt(id: string): void;
  /** Resolves once everything queued is written and the socket takes more, or the stream closed. */
  drained(): Promise<void>;
  /** Writes what is queued and ends the response. */
  end(): void;
  /** Aborts when the client went away or the stream ended. */
  readonly closed: AbortSignal;
}

function format({ id, event, data }: StreamEvent): string {
  const lines = id === undefined ? [] : [`id: ${id}`];
  if (event) lines.push(`event: ${event}`);
  // JSON.stringify escapes newlines, so the data fits on one line.
  if (data !== undefined) lines.push(`data: ${JSON.stringify(data)}`);
  return `${lines.join('\n')}\n\n`;
}

/**
 * Starts a text/event-stream response: headers that keep proxies from buffering or caching it, `retry:`
 * once, then events and heartbeat comments. A queued event is replaced by a newer one with its key, so
 * a stream with few keys (a task's) holds little however slow its client; a list stream has a key per
 * task, and its sender waits once the queue holds maxQueuedBytes (send answers false). A write blocked
 * for stallMs ends the stream, whose client reconnects from its last event id.
 */
export function openEventStream(
  res: Response,
  timing: StreamTiming,
  bounds: StreamBounds,
  logger: Logger,
): EventStream {
  const closed = new AbortController();
  const pending = new Map<string, { chunk: string; bytes: number }>();
  let queuedBytes = 0;
  let stall: NodeJS.Timeout | undefined;
  let drainWaiters: (() => void)[] = [];
  res.status(200);
  res.setHeader('Content-Type', 'text/event-stream; charset=utf-8');
  res.setHeader('Cache-Control', 'no-cache');
  res.setHeader('X-Accel-Buffering', 'no');
  res.flushHeaders();

  let beat = ': heartbeat\n\n';
  const heartbeat = setTimeout(function heartbeatTick() {
    // Nothing is queued unless the socket needs draining: send() and 'drain' write the queue whole.
    if (!res.writableNeedDrain) write(beat);
    heartbeat.refresh();
  }, timing.heartbeatMs);
  function write(chunk: string): void {
    res.write(chunk);
    heartbeat.refresh();
    // Heartbeats included: on a quiet stream they alone may fill the buffer of a client that stopped.
    if (res.writableNeedDrain && !stall) {
      stall = setTimeout(endStalled, bounds.stallMs);
    }
  }
  const settleDrained = (): void => {
    if (!closed.signal.aborted && (pending.size > 0 || res.writableNeedDrain)) return;
    const waiters = drainWaiters;
    drainWaiters = [];
    waiters.forEach((resolve) => resolve());
  };
  const flush = (): void => {
    for (const [key, { chunk, bytes }] of pending) {
      pending.delete(key);
      queuedBytes -= bytes;
      write(chunk);
      if (res.writableNeedDrain) return;
    }
    settleDrained();
  };
  const finish = (): void => {
    clearTimeout(heartbeat);
    clearTimeout(stall);
    pending.clear();
    queuedBytes = 0;
    closed.abort();
    settleDrained();
  };
  /** Ends a stream whose client took nothing for stallMs: it resumes from the last event it read. */
  function endStalled(): void {
    if (closed.signal.aborted) return;
    const { baseUrl, path } = res.req;
    const owner: unknown = res.locals.owner;
    logger.warn('stream ended: its client took nothing for STREAM_STALL_MS; it resumes from its last event id', {
      path: baseUrl + path,
      owner,
      queuedBytes,
      queuedEvents: pending.size,
    });
    finish();
    res.destroy();
  }
  res.on('drain', () => {
    clearTimeout(stall);
    stall = undefined;
    flush();
  });
  res.once('close', finish);
  // The client may have left during the reads before the stream opened: its 'close' has fired already.
  if (res.closed || !res.socket || res.socket.destroyed) finish();
  write(`retry: ${timing.retryMs}\n\n`);

  return {
    resumeAt(id) {
      beat = format({ id });
    },
    send(key, event) {
      if (closed.signal.aborted) return false;
      const chunk = format(event);
      // Re-inserted so the queue keeps the order of the latest updates (list-streams.ts relies on it).
      queuedBytes -= pending.get(key)?.bytes ?? 0;
      pending.delete(key);
      const bytes = Buffer.byteLength(chunk);
      pending.set(key, { chunk, bytes });
      queuedBytes += bytes;
      if (!res.writableNeedDrain) flush();
      return !closed.signal.aborted && queuedBytes < bounds.maxQueuedBytes;
    },
    drained() {
      return new Promise<void>((resolve) => {
        drainWaiters.push(resolve);
        settleDrained();
      });
    },
    end() {
      if (closed.signal.aborted) return;
      for (const { chunk } of pending.values()) res.write(chunk);
      finish();
      res.end();
    },
    closed: closed.signal,
  };
}
