import type { Db } from '@taskbox/shared';
import { HttpProblem } from './problem';
import type { TaskRead } from './task-events';
import { findTimeline } from './task-sql';

export interface LongPollLimits {
  /** Long polls and streams held at once in this process, all owners together; beyond it 503. */
  max: number;
  /** ... for one owner; beyond it 429, so one caller cannot take every slot. */
  maxPerOwner: number;
}

export type Timeline = Awaited<ReturnType<typeof findTimeline>>;

/** What long polls and streams share: one set of caps, and one timeline read per shared task read. */
export interface HeldRequests {
  /** Takes a slot for `owner` or throws the 429/503 problem; answers the release. */
  admit(owner: string, kind: HeldKind): () => void;
  /** How many of `kind` are held now (a gauge). */
  count(kind: HeldKind): number;
  /** The timeline read after `read`, shared by every request that answers from that read. */
  timelineAfter(read: TaskRead, id: string): Promise<Timeline>;
}

export type HeldKind = 'long poll' | 'stream';

// A slot frees whenever a waiting poll answers, and one answers at the latest after its 30 s wait.
const RETRY_AFTER_SECONDS = 5;

const advice: Record<HeldKind, string> = {
  'long poll': 'retry later, or GET without wait',
  stream: 'retry later, or close a stream you no longer read',
};

function tooMany(status: 429 | 503, kind: HeldKind, detail: string): HttpProblem {
  const title = kind === 'stream' ? 'Too Many Streams' : 'Too Many Long Polls';
  return new HttpProblem(status, title, `${detail}; ${advice[kind]}`, {}, RETRY_AFTER_SECONDS);
}

/**
 * Long polls and streams hold a socket each and are woken by the same fan-out, so they count against
 * the same caps: a page that streams and a page that polls cost this process the same.
 */
export function createHeldRequests(db: Db, limits: LongPollLimits): HeldRequests {
  const perOwner = new Map<string, number>();
  const perKind: Record<HeldKind, number> = { 'long poll': 0, stream: 0 };
  let total = 0;
  // Keyed by the read: a timeline read started after that read ended is never older than it.
  const timelines = new WeakMap<TaskRead, Promise<Timeline>>();

  return {
    admit(owner, kind) {
      const mine = perOwner.get(owner) ?? 0;
      if (mine >= limits.maxPerOwner) {
        throw tooMany(429, kind, `you hold ${mine} long polls and streams, the most one caller may`);
      }
      if (total >= limits.max) throw tooMany(503, kind, 'this server holds as many long polls and streams as it may');
      perOwner.set(owner, mine + 1);
      total++;
      perKind[kind]++;
      let held = true;
      return () => {
        if (!held) return;
        held = false;
        total--;
        perKind[kind]--;
        const left = (perOwner.get(owner) ?? 1) - 1;
        if (left > 0) perOwner.set(owner, left);
        else perOwner.delete(owner);
      };
    },
    count: (kind) => perKind[kind],
    timelineAfter(read, id) {
      let timeline = timelines.get(read);
      if (!timeline) {
        timeline = findTimeline(db, id);
        timelines.set(read, timeline);
      }
      return timeline;
    },
  };
}
