import { isTerminal, type TaskView, type TimelineEvent } from './taskbox-client.js';
import { call, client } from './api.js';
import { byId, h, pretty, showMessage, when } from './dom.js';

/** The attempts a timeline records: when each started (with its external job id) and how it ended. */
function attemptRows(timeline: TimelineEvent[]): HTMLTableRowElement[] {
  const attempts = new Map<number, { started?: TimelineEvent; finished?: TimelineEvent }>();
  for (const e of timeline) {
    if (e.attempt === undefined || (e.event !== 'started' && e.event !== 'finished')) continue;
    const entry = attempts.get(e.attempt) ?? {};
    entry[e.event] = e;
    attempts.set(e.attempt, entry);
  }
  return [...attempts].map(([attempt, { started, finished }]) =>
    h(
      'tr',
      {},
      h('td', {}, String(attempt)),
      h('td', {}, h('code', {}, started?.externalJobId ?? '')),
      h('td', {}, when(started?.at)),
      h('td', {}, when(finished?.at)),
      h('td', {}, finished?.outcome ?? (started ? 'running' : '')),
    ),
  );
}

function timelineItem(e: TimelineEvent): HTMLLIElement {
  const detail = [
    e.attempt !== undefined ? `attempt ${e.attempt}` : '',
    e.outcome ?? '',
    e.externalJobId ? `job ${e.externalJobId}` : '',
    e.retry !== undefined ? `retry ${e.retry} by ${e.by ?? '?'}` : '',
    e.runAt ? `for ${when(e.runAt)}` : '',
  ].filter(Boolean);
  return h(
    'li',
    { 'data-event': e.event },
    h('time', { datetime: e.at }, when(e.at)),
    ` ${e.event}`,
    detail.length > 0 ? ` (${detail.join(', ')})` : '',
  );
}

function render(view: TaskView): void {
  byId('task-id').textContent = view.id;
  const status = byId('task-status');
  status.textContent = view.status;
  status.dataset.status = view.status;
  byId<HTMLButtonElement>('task-retry').disabled = view.status !== 'failed' && view.status !== 'cancelled';
  byId<HTMLButtonElement>('task-cancel').disabled = isTerminal(view.status) || view.cancelRequested;
  const facts: [string, string][] = [
    ['type', view.type],
    ['owner', view.owner],
    ['attempts', `${view.attempts} of ${view.maxAttempts}`],
    ['step', view.currentStep ?? '—'],
    ['progress', view.progress === null ? '—' : `${Math.round(view.progress * 100)} %`],
    ['created', when(view.createdAt)],
    ['runs at', view.runAt ? when(view.runAt) : 'as soon as possible'],
    ['started', when(view.startedAt) || '—'],
    ['finished', when(view.finishedAt) || '—'],
    ['external job id', view.externalJobId ?? '—'],
    ['correlation id', view.correlationId ?? '—'],
  ];
  byId('task-facts').replaceChildren(...facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  byId('task-payload').textContent = pretty(view.payload);
  byId('task-result').textContent = pretty(view.result);
  byId('task-error').textContent = pretty(view.error);
  if (view.timeline) {
    byId('task-attempts').replaceChildren(...attemptRows(view.timeline));
    byId('task-timeline').replaceChildren(...view.timeline.map(timelineItem));
  }
}

export interface TaskPage {
  close(): void;
}

// How often a page showing a terminal task asks whether it was retried.
const TERMINAL_POLL_MS = 5000;

/** Waits `ms`, or less when `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true });
  });
}

/**
 * Resolves once the task has a version after `version`, or once `signal` aborts. A terminal task changes
 * only by a retry, perhaps another operator's or a bulk one. Polls: the api answers a long poll on a
 * terminal task at once. Resolves too once the task is gone (retention) or the token no longer works.
 */
async function nextVersion(id: string, version: number, signal: AbortSignal): Promise<void> {
  while (!signal.aborted) {
    await pause(TERMINAL_POLL_MS, signal);
    const { data, error } = await client.getTask(id, { signal });
    // Gone or no longer allowed: the watch that follows says why, and stops.
    if ((data && data.version > version) || error?.status === 401 || error?.status === 404) return;
  }
}

/** One task, live: its stream (through the client) until it is terminal, then whatever retries it. */
export function openTaskPage(id: string): TaskPage {
  let watching = new AbortController();
  const watch = async (): Promise<void> => {
    watching.abort();
    watching = new AbortController();
    const { signal } = watching;
    while (!signal.aborted) {
      const done = await client.watchTask(id, render, { signal });
      if (done.error) {
        if (done.error.kind !== 'aborted') showMessage(`${done.error.title}: ${done.error.detail ?? ''}`);
        return;
      }
      await nextVersion(id, done.data.version, signal);
    }
  };
  const act = (action: 'retry' | 'cancel') => async (): Promise<void> => {
    // Off until the answer: a double click sends one request, not a second one refused with 409.
    const button = byId<HTMLButtonElement>(`task-${action}`);
    button.disabled = true;
    try {
      render(await call<TaskView>('POST', `/tasks/${id}/${action}`));
      showMessage('');
      // A retried task is live again; a cancelled one's stream brings its end.
      if (action === 'retry') void watch();
    } catch (err) {
      button.disabled = false;
      showMessage(String(err));
      // Refused, most often, because the task moved on since this page last heard (a 409): show it as it is.
      void watch();
    }
  };
  const retry = act('retry');
  const cancel = act('cancel');
  byId('task-retry').addEventListener('click', retry);
  byId('task-cancel').addEventListener('click', cancel);
  void watch();
  return {
    close() {
      watching.abort();
      byId('task-retry').removeEventListener('click', retry);
      byId('task-cancel').removeEventListener('click', cancel);
    },
  };
}
