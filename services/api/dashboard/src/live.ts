import { call } from './api.js';

export interface Follow {
  /** How the page learns of changes: 'stream' or 'polling'. */
  readonly mode: () => 'stream' | 'polling';
  stop(): void;
}

// Often enough to see a task move; each poll is one cached count and one page of the list.
const POLL_MS = 2000;
// Changes come in bursts (a batch of tasks finishing): one refresh per burst, and one more after the
// second for which the api reuses its counts, so the last change of a burst is shown. On a large table
// the api reuses them longer; the page says when they were counted.
const SETTLE_MS = 300;
const AGAIN_MS = 1500;
// After this many streams in a row closed on the page, polling takes over.
const STREAM_TRIES = 3;

/**
 * Calls `changed` after tasks in view may have changed. For one owner's tasks it follows the list
 * stream (GET /tasks/events) through the browser's EventSource and a stream token; an admin watching
 * every owner has no such stream (the api has no index for it), and gets polling, as does a page whose
 * streams keep closing (a proxy that buffers them).
 */
export function followChanges(owner: string | null, admin: boolean, changed: () => void): Follow {
  let mode: 'stream' | 'polling' = 'stream';
  let stopped = false;
  let source: EventSource | null = null;
  let pollTimer: ReturnType<typeof setInterval> | undefined;
  let settleTimers: ReturnType<typeof setTimeout>[] = [];
  let failures = 0;

  const soon = (): void => {
    settleTimers.forEach(clearTimeout);
    settleTimers = [setTimeout(changed, SETTLE_MS), setTimeout(changed, AGAIN_MS)];
  };
  const poll = (): void => {
    mode = 'polling';
    pollTimer = setInterval(changed, POLL_MS);
  };
  const retry = (): void => {
    failures++;
    if (failures >= STREAM_TRIES) poll();
    else setTimeout(open, 1000 * failures);
  };

  async function open(): Promise<void> {
    if (stopped) return;
    try {
      const issued = await call<{ url: string }>('POST', '/tasks/stream-token');
      if (stopped) return;
      const url = new URL(issued.url, location.href);
      // An admin's list stream names the owner it follows; anyone else's follows their own. The page
      // reads the tasks itself and needs only to hear of changes, not every task's current state.
      if (admin && owner) url.searchParams.set('owner', owner);
      url.searchParams.set('current', 'false');
      source = new EventSource(url);
      source.addEventListener('ready', () => {
        failures = 0;
        soon();
      });
      source.addEventListener('task', soon);
      // EventSource reconnects by itself after a cut; closed means refused, such as its token expiring.
      source.onerror = () => {
        if (source?.readyState !== EventSource.CLOSED) return;
        source = null;
        retry();
      };
    } catch {
      retry();
    }
  }

  if (owner === null) poll();
  else void open();
  return {
    mode: () => mode,
    stop() {
      stopped = true;
      source?.close();
      clearInterval(pollTimer);
      settleTimers.forEach(clearTimeout);
    },
  };
}
