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
  wait(viewer: Viewer, id: string, poll: LongPoll, signal: AbortSignal): Promise<LongPollAnswer | undefined>;
}

export interface LongPoll {
  waitMs: number;
  /** The version the client has (GET ?after=), as the version column writes it. */
  after?: string | undefined;
}

// What a long poll watches without `after`: the fields a progress display shows (status, step, progress).
const changeKey = (row: TaskRow): string => JSON.stringify([row.status, row.current_step, row.progress]);

/**
 * Answers when the task differs from what the client has, when the task is terminal (it will not change
 * again), or at `waitMs` with the latest read. What the client has is its version (`after`): a change
 * committed since the client's last answer answers at once. Without it, the request's own first read,
 * compared by status, step and progress. Woken by NOTIFY, never by polling the row; the deadline also
 * covers a NOTIFY that was lost.
 */
async function waitForChange(events: TaskEvents, viewer: Viewer, id: string, poll: LongPoll, signal: AbortSignal) {
  const deadline = Date.now() + poll.waitMs;
  const watch = events.watch(id);
  try {
    let read: TaskRead = await watch.first(viewer);
    const initial = read.row && changeKey(read.row);
    const { after } = poll;
    const unchanged = (row: TaskRow): boolean =>
      after === undefined ? changeKey(row) === initial : String(row.version) === after;
    while (read.row && !terminalStatuses.includes(read.row.status) && unchanged(read.row)) {
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
    async wait(viewer, id, poll, signal) {
      const release = held.admit(viewer.owner, 'long poll');
      // The slot is for waiting: it frees before the timeline read, when the poll has its answer.
      const read = await waitForChange(events, viewer, id, poll, signal).finally(release);
      // A client that went away gets no answer: skip its timeline read, or many leaving at once (a proxy
      // restarting) would queue a burst of reads in front of every other request.
      if (!read.row || signal.aborted) return undefined;
      return { row: read.row, timeline: await held.timelineAfter(read, id) };
    },
  };
}
