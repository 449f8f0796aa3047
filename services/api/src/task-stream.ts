import { isTerminal, toError, type Logger, type TaskRow } from '@taskbox/shared';
import type { EventStream } from './event-stream';
import type { HeldRequests } from './held-requests';
import type { TaskEvents, TaskRead, TaskWatch } from './task-events';
import { toTaskView } from './task-view';
import type { Viewer } from './viewer';

export interface TaskStreamDeps {
  events: TaskEvents;
  held: HeldRequests;
  logger: Logger;
}

/** What opening a task's stream found before any byte was sent: the route answers 404 or 204 for these. */
export type TaskStreamStart = 'not found' | 'already seen';

// A stream waits on changes, not on a clock: the writer's heartbeat keeps it alive meanwhile.
const WAIT_MS = 3_600_000;

/** `Last-Event-ID` of a task stream is a version; anything else is treated as absent. */
export function parseVersion(header: string | undefined): number | undefined {
  return header && /^\d{1,15}$/.test(header) ? Number(header) : undefined;
}

/** Sends the read's state with its timeline; false when the timeline could not be read (logged). */
async function sendRead(deps: TaskStreamDeps, stream: EventStream, row: TaskRow, read: TaskRead): Promise<boolean> {
  try {
    const timeline = await deps.held.timelineAfter(read, row.id);
    stream.send('task', { id: String(row.version), event: 'task', data: toTaskView(row, timeline) });
    return true;
  } catch (err) {
    deps.logger.warn('task stream read failed; waiting for the next change', {
      taskId: row.id,
      error: toError(err).message,
    });
    return false;
  }
}

/**
 * Sends each state newer than the client's, from the shared reads of the task's watch, until the task
 * is terminal, the client leaves or the api stops. A failed read is skipped: the next change or resync
 * reads again, and the stream stays open rather than push every client into reconnecting at once.
 */
async function follow(deps: TaskStreamDeps, stream: EventStream, watch: TaskWatch, first: TaskRead, seen: number) {
  let read: TaskRead | null = first;
  for (;;) {
    if (read) {
      // Gone: deleted by retention, which only takes finished tasks, so its terminal state was sent.
      if (!read.row) return;
      if (Number(read.row.version) > seen && (await sendRead(deps, stream, read.row, read))) {
        seen = Number(read.row.version);
      }
      // Ended even when that send failed: the client reconnects, and its first event is the terminal state.
      if (isTerminal(read.row.status)) return;
    }
    if (stream.closed.aborted || deps.events.stopped()) return;
    read = await watch.next(WAIT_MS, stream.closed).catch((err: unknown) => {
      const error = toError(err).message;
      deps.logger.warn('task stream read failed; waiting for the next change', { taskId: first.row?.id, error });
      return null;
    });
  }
}

/**
 * One task's stream for `viewer`: the current state first (unless `lastSeen` says the client has it),
 * then every newer state, and the end after the terminal one. Answers what prevented it from opening.
 * `res` is only touched once the task is known, so a 404 is a plain problem response.
 */
export async function streamTask(
  deps: TaskStreamDeps,
  open: () => EventStream,
  viewer: Viewer,
  id: string,
  lastSeen: number | undefined,
): Promise<TaskStreamStart | undefined> {
  const watch = deps.events.watch(id);
  try {
    const first = await watch.first(viewer);
    if (!first.row) return 'not found';
    const seen = lastSeen ?? 0;
    if (Number(first.row.version) <= seen && isTerminal(first.row.status)) return 'already seen';
    const stream = open();
    await follow(deps, stream, watch, first, seen);
    stream.end();
    return undefined;
  } finally {
    watch.close();
  }
}
