import { terminalStatuses, type Db } from '@taskbox/shared';
import { HttpProblem } from './problem';
import type { TaskEvents, TaskRead } from './task-events';
import { findTimeline, type TaskRow } from './task-sql';

export interface LongPollLimits {
  /** Long polls waiting at once in this process, all owners together; beyond it 503. */
  max: number;
  /** ... for one owner; beyond it 429, so one caller cannot take every slot. */
  maxPerOwner: number;
}

type Timeline = Awaited<ReturnType<typeof findTimeline>>;

export interface LongPollAnswer {
  row: TaskRow;
  timeline: Timeline;
}

export interface LongPolls {
  /**
   * Waits for a change to the task (see waitForChange); undefined when it does not exist for `owner`,
   * or when `signal` aborted (the client went away).
   */
  wait(owner: string, id: string, waitMs: number, signal: AbortSignal): Promise<LongPollAnswer | undefined>;
}

// A slot frees whenever a waiting poll answers, and one answers at the latest after its 30 s wait.
const RETRY_AFTER_SECONDS = 5;

// What a long poll watches: the fields a progress display shows (status, step, progress).
const changeKey = (row: TaskRow): string => JSON.stringify([row.status, row.current_step, row.progress]);

/**
 * Answers when the task's status, step or progress differs from the request's first read, when the
 * task is terminal (it will not change again), or at `waitMs` with the latest read. Woken by NOTIFY,
 * never by polling the row; the deadline also covers a NOTIFY that was lost.
 */
async function waitForChange(events: TaskEvents, owner: string, id: string, waitMs: number, signal: AbortSignal) {
  const deadline = Date.now() + waitMs;
  const watch = events.watch(id);
  try {
    let read: TaskRead = await watch.first(owner);
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

/** Long polls with their caps; the waiters that answer from one shared read also share its timeline read. */
export function createLongPolls(db: Db, events: TaskEvents, limits: LongPollLimits): LongPolls {
  const perOwner = new Map<string, number>();
  let total = 0;
  // Keyed by the read: a timeline read started after that read ended is never older than it.
  const timelines = new WeakMap<TaskRead, Promise<Timeline>>();

  function admit(owner: string): () => void {
    const mine = perOwner.get(owner) ?? 0;
    if (mine >= limits.maxPerOwner) {
      const detail = `you have ${mine} long polls waiting, the most one caller may; retry later, or GET without wait`;
      throw new HttpProblem(429, 'Too Many Long Polls', detail, {}, RETRY_AFTER_SECONDS);
    }
    if (total >= limits.max) {
      const detail = 'this server holds as many long polls as it may; retry later, or GET without wait';
      throw new HttpProblem(503, 'Too Many Long Polls', detail, {}, RETRY_AFTER_SECONDS);
    }
    perOwner.set(owner, mine + 1);
    total++;
    return () => {
      total--;
      const left = (perOwner.get(owner) ?? 1) - 1;
      if (left > 0) perOwner.set(owner, left);
      else perOwner.delete(owner);
    };
  }

  function timelineAfter(read: TaskRead, id: string): Promise<Timeline> {
    let timeline = timelines.get(read);
    if (!timeline) {
      timeline = findTimeline(db, id);
      timelines.set(read, timeline);
    }
    return timeline;
  }

  return {
    async wait(owner, id, waitMs, signal) {
      const release = admit(owner);
      // The slot is for waiting: it frees before the timeline read, when the poll has its answer.
      const read = await waitForChange(events, owner, id, waitMs, signal).finally(release);
      // A client that went away gets no answer: skip its timeline read, or many leaving at once (a proxy
      // restarting) would queue a burst of reads in front of every other request.
      if (!read.row || signal.aborted) return undefined;
      return { row: read.row, timeline: await timelineAfter(read, id) };
    },
  };
}
