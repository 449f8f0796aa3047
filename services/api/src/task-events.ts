import {
  OUTBOX_CHANNEL,
  TASK_CHANNEL,
  createPgListener,
  toError,
  type Logger,
  type Service,
  type TaskRow,
} from '@taskbox/shared';
import type { Viewer } from './viewer';
import type { WatcherRegistration } from './watcher-registration';

/** Reads one task as `viewer` may see it; undefined when there is none for them. */
export type TaskReader = (viewer: Viewer, id: string) => Promise<TaskRow | undefined>;

/** One read of a task. The same object reaches every watcher it answers, so they can share what follows. */
export interface TaskRead {
  readonly row: TaskRow | undefined;
}

/** A registration for changes to one task, made BEFORE the watcher's first read, so no change slips between. */
export interface TaskWatch {
  /**
   * The watcher's own read, with its owner check, after this process is registered as waiting. Every
   * shared read it gets later started after this one ended.
   */
  first(viewer: Viewer): Promise<TaskRead>;
  /**
   * The next shared read after a change to the task; null when `ms` pass, `signal` aborts or the events
   * stop first. Rejects when that read failed.
   */
  next(ms: number, signal: AbortSignal): Promise<TaskRead | null>;
  close(): void;
}

export interface TaskEvents extends Service {
  /** Stops listening and releases every waiting request (they answer with the latest view they have). */
  stop(): Promise<void>;
  /** True once stop() was called: a watcher whose next() answered null should end. */
  stopped(): boolean;
  watch(taskId: string): TaskWatch;
  /**
   * Calls `wake` whenever any task may have changed (a NOTIFY on the task or outbox channel, a
   * reconnect, a resync) and at stop; answers the unsubscribe. For readers that cannot name their tasks.
   */
  onAnyChange(wake: () => void): () => void;
  /**
   * Registers this process as waiting on task changes (watcher-registration.ts), before a reader's first
   * read; call the release when it stops waiting. watch() does this itself.
   */
  hold(): Promise<() => void>;
  /** How many requests are watching now (a gauge for tests and metrics). */
  waiting(): number;
}

type Outcome = { read: TaskRead } | { error: unknown };

interface Watcher {
  /** Shared reads numbered above this started after the watcher's first read ended; null until then. */
  freshAfter: number | null;
  /** The task's change count when the watcher registered, to tell whether its first read may have missed one. */
  changesSeen: number;
  outcome: Outcome | null;
  wake: (() => void) | null;
  release: (() => void) | null;
}

interface Group {
  taskId: string;
  /** The task's owner, known once a first read found it; shared reads need it. */
  owner: string | null;
  watchers: Set<Watcher>;
  changes: number;
  reading: boolean;
  readAgain: boolean;
}

function nextOutcome(watcher: Watcher, ms: number, signal: AbortSignal, stopped: () => boolean) {
  return new Promise<TaskRead | null>((resolve, reject) => {
    const timer = setTimeout(take, ms);
    signal.addEventListener('abort', take, { once: true });
    watcher.wake = take;
    if (watcher.outcome || stopped() || signal.aborted) take();
    function take(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', take);
      watcher.wake = null;
      const outcome = watcher.outcome;
      watcher.outcome = null;
      if (outcome && 'error' in outcome) reject(outcome.error);
      else resolve(outcome?.read ?? null);
    }
  });
}

export interface TaskEventsOptions {
  /**
   * NOTIFYs are sent after commits and can fail (notify.ts): every watched task is read again this
   * often, so a stream never waits for good on a change it was not told about; null turns it off.
   */
  resyncMs: number | null;
}

const defaultOptions: TaskEventsOptions = { resyncMs: 30_000 };

/**
 * Fans out "task changed" NOTIFYs (sent by the worker and the api after their commits, see
 * createTaskNotifier) to the long-polling requests of this process: one LISTEN connection per process,
 * however many requests wait, and ONE read of a task per change, however many requests watch it. A
 * waiting request holds a socket but no database connection. At most one shared read per task runs at
 * a time; changes announced during it are covered by one more read right after it.
 */
export function createTaskEvents(
  url: string,
  logger: Logger,
  readTask: TaskReader,
  registration: WatcherRegistration,
  { resyncMs }: TaskEventsOptions = defaultOptions,
): TaskEvents {
  const state: EventsState = {
    groups: new Map(),
    readTask,
    hold: () => registration.hold(),
    reads: 0,
    waiting: 0,
    stopped: false,
  };
  const anyChange = new Set<() => void>();
  const wakeAll = (): void => anyChange.forEach((wake) => wake());
  const resync = (): void => {
    state.groups.forEach((group) => changed(state, group));
    wakeAll();
  };
  let resyncTimer: NodeJS.Timeout | null = null;

  const listener = createPgListener({
    url,
    // The outbox channel announces new tasks (the api's insert notifies it), which list streams show.
    channel: [TASK_CHANNEL, OUTBOX_CHANNEL],
    logger,
    onNotify(payload, channel) {
      if (channel === TASK_CHANNEL) {
        for (const id of payload.split(',')) {
          const group = state.groups.get(id);
          if (group) changed(state, group);
        }
      }
      wakeAll();
    },
    // NOTIFYs sent while the connection was down are lost: read every watched task again.
    onConnect: resync,
  });

  return {
    async start() {
      if (resyncMs !== null) resyncTimer ??= setInterval(resync, resyncMs).unref();
      await listener.start();
    },
    async stop() {
      state.stopped = true;
      if (resyncTimer) clearInterval(resyncTimer);
      for (const group of state.groups.values()) for (const watcher of group.watchers) watcher.wake?.();
      wakeAll();
      await listener.stop();
      await registration.stop().catch((err: unknown) => {
        logger.warn('could not remove this process from task_watchers; its row lapses', {
          error: toError(err).message,
        });
      });
    },
    stopped: () => state.stopped,
    watch: (taskId) => watch(state, taskId),
    onAnyChange(wake) {
      anyChange.add(wake);
      return () => anyChange.delete(wake);
    },
    waiting: () => state.waiting,
    hold: state.hold,
  };
}

interface EventsState {
  /** The watched tasks, by id. */
  groups: Map<string, Group>;
  readTask: TaskReader;
  hold: () => Promise<() => void>;
  /** Shared reads started so far: numbers them, so a watcher takes only those after its own first read. */
  reads: number;
  waiting: number;
  stopped: boolean;
}

function changed(state: EventsState, group: Group): void {
  group.changes++;
  readShared(state, group);
}

function readShared(state: EventsState, group: Group): void {
  // Without an owner no watcher has finished its first read; each asks for a read when it does.
  if (group.owner === null) return;
  if (group.reading) {
    group.readAgain = true;
    return;
  }
  group.reading = true;
  group.readAgain = false;
  const number = ++state.reads;
  const deliver = (outcome: Outcome): void => {
    for (const watcher of group.watchers) {
      if (watcher.freshAfter === null || number <= watcher.freshAfter) continue;
      // A failed read does not replace a state the watcher has not taken yet: it would wait for the
      // next change (or resync) to get it again.
      if ('error' in outcome && watcher.outcome && 'read' in watcher.outcome) continue;
      watcher.outcome = outcome;
      watcher.wake?.();
    }
  };
  // As the task's own owner: every watcher passed its own check in its first read.
  state
    .readTask({ owner: group.owner, admin: false }, group.taskId)
    .then(
      (row) => deliver({ read: { row } }),
      (error: unknown) => deliver({ error }),
    )
    .finally(() => {
      group.reading = false;
      if (group.readAgain && group.watchers.size > 0) readShared(state, group);
    });
}

function groupOf(state: EventsState, taskId: string): Group {
  const existing = state.groups.get(taskId);
  if (existing) return existing;
  const group: Group = { taskId, owner: null, watchers: new Set(), changes: 0, reading: false, readAgain: false };
  state.groups.set(taskId, group);
  return group;
}

function watch(state: EventsState, taskId: string): TaskWatch {
  const group = groupOf(state, taskId);
  const watcher: Watcher = { freshAfter: null, changesSeen: group.changes, outcome: null, wake: null, release: null };
  group.watchers.add(watcher);
  state.waiting++;
  return {
    async first(viewer) {
      const release = await state.hold();
      // Closed while registering: nothing holds the registration for it any more.
      if (!group.watchers.has(watcher)) release();
      else watcher.release = release;
      const row = await state.readTask(viewer, taskId);
      // A shared read already running may have started before this read: only later ones are fresh.
      watcher.freshAfter = state.reads;
      if (row) {
        group.owner ??= row.owner;
        if (group.changes !== watcher.changesSeen) readShared(state, group);
      }
      return { row };
    },
    next: (ms, signal) => nextOutcome(watcher, ms, signal, () => state.stopped),
    close() {
      if (!group.watchers.delete(watcher)) return;
      watcher.release?.();
      state.waiting--;
      if (group.watchers.size === 0 && state.groups.get(taskId) === group) state.groups.delete(taskId);
      watcher.wake?.();
    },
  };
}
