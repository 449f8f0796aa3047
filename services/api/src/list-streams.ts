import { setMaxListeners } from 'node:events';
import { toError, unlessAborted, type Db, type Logger, type TaskRow, type TaskStatus } from '@taskbox/shared';
import type { EventStream, StreamEvent } from './event-stream';
import type { TaskEvents } from './task-events';
import {
  currentHorizon,
  listTasks,
  tasksChangedBetween,
  tasksChangedSince,
  type ChangeCursor,
  type ChangedRow,
  type SnapshotEdge,
} from './task-sql';
import { toTaskView } from './task-view';

export interface ListFilter {
  owner: string;
  status?: TaskStatus;
  type?: string;
}

export interface ListStreams {
  /**
   * Sends `stream` an `event: current`, then the current state of every task of the filter, newest
   * first, a page at a time as its client reads. The events carry no id: a client cut off before the
   * stream's first id (`ready`) has no last event id, and its reconnect gets them all again, after a
   * `current` that tells it to drop what the cut one sent (a task sent as pending that has left that
   * status since is in neither the new current state nor the changes after it). False when the stream
   * closed, the api is stopping, or a read failed (the client reconnects).
   */
  current(filter: ListFilter, stream: EventStream): Promise<boolean>;
  /**
   * Sends `stream` every state of the filter's tasks changed at or after the watermark `since`, until
   * the stream closes or the api stops. The caller holds TaskEvents.hold() from before it read the
   * watermark, so that the worker's NOTIFYs reach it.
   */
  follow(filter: ListFilter, since: string, stream: EventStream): Promise<void>;
}

interface Subscriber {
  filter: ListFilter;
  /** Every change by a transaction below this watermark has been sent (or did not match). */
  since: string;
  /** What was sent of the tasks that a read from `since` returns again, to send each state once. */
  sent: Map<string, { version: number; xid: bigint }>;
  /** The tasks last sent outside the filter's status (see admit); not pruned by the watermark. */
  out: Set<string>;
  stream: EventStream;
  done(): void;
}

/** What a stream's catch-up sends to: the subscriber it becomes, before it has a watermark. */
type Recipient = Pick<Subscriber, 'filter' | 'out' | 'stream'>;

// The key of the block that moves the client's last event id; task ids are UUIDs, so it never clashes.
const WATERMARK_KEY = 'watermark';

// Tasks per read of a stream's catch-up: the stream sends them, and reads on once the client took them.
const CATCH_UP_PAGE = 500;

// Tasks a stream remembers having sent outside its filter; forgetting one only sends it again.
const OUT_MAX = 1000;

/**
 * Whether a task may have had the filter's status before this state, for the statuses a task leaves in
 * its course: every task starts pending, and only a run (attempts + 1) makes one processing. A finished
 * task leaves its status only by a retry, which the row does not tell apart from a first run: a stream
 * of failed tasks would send nearly every task, and a client counting failures would count them all.
 */
function mayHaveBeen(status: TaskStatus, row: TaskRow): boolean {
  if (status === 'processing') return row.attempts > 0;
  return status === 'pending';
}

/**
 * Whether the stream sends this state of a task: it matches the filter, or it is the task's first state
 * outside the filter's status since the stream last sent one inside, which the client drops from its
 * view. The stream cannot know which tasks the client holds (those from GET /tasks, those that passed
 * through the status between two reads, those a reconnect's catch-up reads again), so it sends any
 * task that may have been in it, once; `out` only spares the repeats.
 */
function admit({ owner, status, type }: ListFilter, out: Set<string>, row: TaskRow): boolean {
  if (row.owner !== owner || (type && row.type !== type)) return false;
  if (!status || row.status === status) {
    out.delete(row.id);
    return true;
  }
  if (out.has(row.id) || !mayHaveBeen(status, row)) return false;
  out.add(row.id);
  if (out.size > OUT_MAX) out.delete(out.values().next().value as string);
  return true;
}

/**
 * Event ids are watermarks. Each task event carries the watermark the subscriber had before the read,
 * and a last id-only block the new one: a client cut off mid-batch resumes from before the batch and
 * gets those tasks' latest states again, never a gap. The stream queues the latest update last, so the
 * new watermark always follows the events it covers. False, the watermark left as it was, when the
 * stream's queue is full (a read larger than its client takes at once): the stream then catches up alone.
 */
function deliver(sub: Subscriber, changed: ChangedRow[], horizon: string): boolean {
  const before = sub.since;
  let sent = 0;
  for (const row of changed) {
    const version = Number(row.version);
    if ((sub.sent.get(row.id)?.version ?? 0) >= version || !admit(sub.filter, sub.out, row)) continue;
    sub.sent.set(row.id, { version, xid: BigInt(row.changed_xid) });
    if (!sub.stream.send(row.id, { id: before, event: 'task', data: toTaskView(row) })) return false;
    sent++;
  }
  if (BigInt(horizon) > BigInt(before)) advance(sub, horizon);
  if (sent > 0) sub.stream.send(WATERMARK_KEY, { id: sub.since });
  return true;
}

/**
 * Moves the subscriber's watermark to `since`, forgetting what it was sent that a read from there never
 * returns, and moves its client's last event id there at the next heartbeat when nothing else is sent.
 */
function advance(sub: Subscriber, since: string): void {
  sub.since = since;
  // What the stream queued came from reads below `since`: a quiet stream's heartbeat may carry it.
  sub.stream.resumeAt(since);
  const floor = BigInt(since);
  for (const [id, entry] of sub.sent) if (entry.xid < floor) sub.sent.delete(id);
}

/**
 * The list streams of this process share one read per wake-up, for every owner at once, from the oldest
 * watermark among them (each joins once caught up, so that watermark is recent): a NOTIFY names tasks,
 * not owners, so each stream could not tell which changes are its own without a read of its own. At
 * most one read runs at a time, and one more follows it when anything changed meanwhile.
 */
export function createListStreams(db: Db, events: TaskEvents, logger: Logger): ListStreams {
  const subscribers = new Set<Subscriber>();
  let reading = false;
  let again = false;
  // The edge of the last read, and the subscribers that were delivered all of it: while every reader
  // is one of them, the next read takes only what that read could not see (tasksChangedSince).
  let last: { edge: SnapshotEdge | null; delivered: Set<Subscriber> } = { edge: null, delivered: new Set() };

  async function read(): Promise<void> {
    reading = true;
    again = false;
    // Only those subscribed before the read starts: a later one has a watermark the read may not cover.
    const readers = [...subscribers];
    const since = readers.map((s) => BigInt(s.since)).reduce((a, b) => (b < a ? b : a));
    const owners = [...new Set(readers.map((s) => s.filter.owner))];
    const after = readers.every((sub) => last.delivered.has(sub)) ? last.edge : null;
    try {
      const { horizon, edge, changed } = await tasksChangedSince(db, owners, String(since), after);
      const delivered = new Set<Subscriber>();
      for (const sub of readers) {
        if (!subscribers.has(sub)) continue;
        if (deliver(sub, changed, horizon)) delivered.add(sub);
        else void fallBehind(sub);
      }
      last = { edge, delivered };
    } catch (err) {
      // The next read reads from the watermarks: Postgres may be another server by then (a failover).
      last = { edge: null, delivered: new Set() };
      logger.warn('list stream read failed; reading again at the next change', { error: toError(err).message });
    } finally {
      reading = false;
      if (again) wake();
    }
  }

  /**
   * A stream whose client took less than a shared read gave it leaves the shared reads, catches up alone
   * from its watermark once its client has read what is queued (as a resume does), and joins again:
   * its queue stays bounded, and a burst does not end it (a failed read does: its client resumes).
   * What it was sent stays known above the new watermark: an open transaction may hold the watermark
   * back, and the next shared read then skips what this one sent instead of filling the queue with it
   * again.
   */
  async function fallBehind(sub: Subscriber): Promise<void> {
    subscribers.delete(sub);
    await drainedOrStopping(sub.stream);
    // A client that left while it was behind needs no catch-up.
    const since = over(sub.stream) ? null : await catchUp(sub, sub.since);
    // Closed while it caught up: its done() has run, and it must not join again.
    if (since === null || over(sub.stream)) return sub.done();
    advance(sub, since);
    subscribers.add(sub);
    wake();
  }

  // Aborted at the api's stop: a catch-up waiting for its client to read stops waiting.
  const stopping = new AbortController();
  // One listener a stream waiting for its client, up to LONG_POLL_MAX of them: not a leak to warn of.
  setMaxListeners(0, stopping.signal);
  const drainedOrStopping = (stream: EventStream) => unlessAborted(stream.drained(), stopping.signal);
  // A stream whose client left, or any stream once the api stops: nothing more is sent to it.
  const over = (stream: EventStream): boolean => stream.closed.aborted || events.stopped();

  /**
   * Sends a page's events in order, waiting as the stream asks within the page (a page of large tasks
   * would not fit its queue): false once the stream is over.
   */
  async function sendPage(stream: EventStream, page: [string, StreamEvent][]): Promise<boolean> {
    for (const [key, event] of page) {
      if (!stream.send(key, event)) await drainedOrStopping(stream);
      if (over(stream)) return false;
    }
    return true;
  }

  function wake(): void {
    if (events.stopped()) {
      stopping.abort();
      subscribers.forEach((sub) => sub.done());
    } else if (reading) again = true;
    else if (subscribers.size > 0) void read();
  }
  events.onAnyChange(wake);

  /**
   * A stream that resumes from an old watermark catches up alone, on its own owner's tasks, a page at a
   * time and as fast as its client reads, before it joins the shared reads: one client's old
   * Last-Event-ID must not make every stream's read (and the api's memory) as large as that owner's
   * history. It reads up to the watermark of its start, then again up to a newer one while a round took
   * more than a page, so that it joins with a recent watermark however slow its client. Its events carry
   * the watermark before their page, and after each page a block moves the client's last event id to
   * the page's last transaction: a client cut off mid-way resumes there, and gets the tasks of that
   * transaction again, never a gap. Answers the watermark it caught up to, or null when the stream
   * closed, the api is stopping, or a read failed (the client reconnects from its last event id).
   */
  async function catchUp(to: Recipient, from: string): Promise<string | null> {
    try {
      for (let since = from; ;) {
        const until = await currentHorizon(db);
        if (BigInt(since) >= BigInt(until)) return since;
        const pages = await round(to, since, until);
        if (pages === null) return null;
        since = until;
        if (pages === 1) return since;
      }
    } catch (err) {
      logger.warn('list stream catch-up failed; the client resumes from its last event id', {
        error: toError(err).message,
      });
      return null;
    }
  }

  /** One round of catchUp, from `since` to `until`: how many pages it took, or null if it must stop. */
  async function round(to: Recipient, since: string, until: string): Promise<number | null> {
    const { filter, stream } = to;
    let after: ChangeCursor | null = null;
    for (let pages = 1; ; pages++) {
      const page = await tasksChangedBetween(db, filter.owner, since, until, after, CATCH_UP_PAGE);
      if (over(stream)) return null;
      const mark = after?.xid ?? since;
      const sent = page
        .filter((row) => admit(filter, to.out, row))
        .map((row): [string, StreamEvent] => [row.id, { id: mark, event: 'task', data: toTaskView(row) }]);
      if (!(await sendPage(stream, sent))) return null;
      const last = page.at(-1);
      if (page.length < CATCH_UP_PAGE || !last) {
        stream.send(WATERMARK_KEY, { id: until });
        return pages;
      }
      after = { xid: last.changed_xid, id: last.id };
      stream.send(WATERMARK_KEY, { id: after.xid });
      await drainedOrStopping(stream);
      if (over(stream)) return null;
    }
  }

  return {
    async current(filter, stream) {
      stream.send('current', { event: 'current', data: {} });
      try {
        for (let after: { createdAt: string; id: string } | undefined; ;) {
          const page = await listTasks(db, { ...filter, limit: CATCH_UP_PAGE, after });
          const sent = page.map((row): [string, StreamEvent] => [row.id, { event: 'task', data: toTaskView(row) }]);
          if (!(await sendPage(stream, sent))) return false;
          const last = page.at(-1);
          if (page.length < CATCH_UP_PAGE || !last) return !over(stream);
          after = { createdAt: last.cursor_created_at, id: last.id };
          await drainedOrStopping(stream);
          if (over(stream)) return false;
        }
      } catch (err) {
        logger.warn('list stream read of the current state failed; the client starts again', {
          error: toError(err).message,
        });
        return false;
      }
    },
    async follow(filter, from, stream) {
      const out = new Set<string>();
      const since = await catchUp({ filter, out, stream }, from);
      if (since === null) return;
      return new Promise<void>((resolve) => {
        const sub: Subscriber = { filter, since, sent: new Map(), out, stream, done };
        function done(): void {
          subscribers.delete(sub);
          resolve();
        }
        // A client that left while its stream opened: an abort listener added now would never fire.
        if (stream.closed.aborted) return resolve();
        stream.closed.addEventListener('abort', done, { once: true });
        subscribers.add(sub);
        wake();
      });
    },
  };
}
