import { terminalStatuses, type TaskRow } from '@taskbox/shared';
import type { HeldRequests, Timeline } from './held-requests';
import type { TaskEvents, TaskRead } from './task-events';
import type { Viewer } from './viewer';

export interface LongPollAnswer {
  row: TaskRow;
  timeline: Timeline;
}

export interface LongPolls {
  /**
   * Waits for a change to the task (see waitForChange); undefined when `viewer` may not see it, or when
   * `signal` aborted (the client went away).
   */
  wait(viewer: Viewer, id: string, waitMs: number, signal: AbortSignal): Promise<LongPollAnswer | undefined>;
}

// What a long poll watches: the fields a progress display shows (status, step, progress).
const changeKey = (row: TaskRow): string => JSON.stringify([row.status, row.current_step, row.progress]);

/**
 * Answers when the task's status, step or progress differs from the request's first read, when the
 * task is terminal (it will not change again), or at `waitMs` with the latest read. Woken by NOTIFY,
 * never by polling the row; the deadline also covers a NOTIFY that was lost.
 */
async function waitForChange(events: TaskEvents, viewer: Viewer, id: string, waitMs: number, signal: AbortSignal) {
  const deadline = Date.now() + waitMs;
  const watch = events.watch(id);
  try {
    let read: TaskRead = await watch.first(viewer);
    const initial = read.row && changeKey(read.row);
    while (read.row && !terminalStatuses.includes(read.row.status) && changeKey(read.row) === initial) {
      const next = await watch.next(deadline - Date.now(), signal);
      if (!next) break;
      read = next;
    }
    return read;
  } finally {
    watch.close();
  }
}

/** Long polls within the held-request caps; the waiters that answer from one shared read share its timeline read. */
export function createLongPolls(events: TaskEvents, held: HeldRequests): LongPolls {
  return {
    async wait(viewer, id, waitMs, signal) {
      const release = held.admit(viewer.owner, 'long poll');
      // The slot is for waiting: it frees before the timeline read, when the poll has its answer.
      const read = await waitForChange(events, viewer, id, waitMs, signal).finally(release);
      // A client that went away gets no answer: skip its timeline read, or many leaving at once (a proxy
      // restarting) would queue a burst of reads in front of every other request.
      if (!read.row || signal.aborted) return undefined;
      return { row: read.row, timeline: await held.timelineAfter(read, id) };
    },
  };
}
