import { ApiError, call, token, type Me } from './api.js';
import { byId, refreshing, showMessage } from './dom.js';
import { followChanges, type Follow } from './live.js';
import { refreshCounts, refreshSystem, setUpRedrive } from './overview.js';
import { createTaskList, type TaskList } from './task-list.js';
import { openTaskPage, type TaskPage } from './task-page.js';

// The doctor's checks are reused by the api for a few seconds; this polls them a little less often.
const SYSTEM_POLL_MS = 10_000;

const views = ['sign-in-view', 'overview-view', 'task-view'] as const;

function show(view: (typeof views)[number]): void {
  for (const v of views) byId(v).hidden = v !== view;
}

/** The signed-in dashboard: overview and list on #/, a task on #/tasks/{id}. */
function start(me: Me): void {
  byId('who').textContent = me.admin ? `${me.owner} (admin)` : me.owner;
  byId('sign-out').hidden = false;
  for (const el of document.querySelectorAll<HTMLElement>('.admin-only')) el.hidden = !me.admin;
  let follow: Follow | null = null;
  let followed: string | null | undefined;
  const list: TaskList = createTaskList(me, () => {
    followScope();
    refresh();
  });
  function refresh(): void {
    // The task page follows its own task; the overview catches up when it is shown again.
    if (byId('overview-view').hidden) return;
    refreshing(
      'overview',
      Promise.all([refreshCounts(list.owner()), list.refresh()]).then(
        () => (byId('live-mode').textContent = follow?.mode() === 'stream' ? 'live' : 'polling'),
      ),
    );
  }
  // One owner's tasks are followed over a stream, every owner's by polling (live.ts).
  function followScope(): void {
    if (follow && list.owner() === followed) return;
    follow?.stop();
    followed = list.owner();
    follow = followChanges(followed, me.admin, refresh);
  }
  followScope();
  if (me.admin) {
    const system = (): void => refreshing('system', refreshSystem());
    setUpRedrive(system);
    system();
    setInterval(system, SYSTEM_POLL_MS);
  }
  let page: TaskPage | null = null;
  const route = (): void => {
    page?.close();
    page = null;
    const id = /^#\/tasks\/([0-9a-f-]{36})$/.exec(location.hash)?.[1];
    show(id ? 'task-view' : 'overview-view');
    if (id) page = openTaskPage(id);
    else refresh();
  };
  addEventListener('hashchange', route);
  route();
}

async function signIn(): Promise<void> {
  try {
    start(await call<Me>('GET', '/me'));
  } catch (err) {
    token.clear();
    show('sign-in-view');
    if (err instanceof ApiError && err.status === 401) showMessage('That token was not accepted.');
    else showMessage(String(err));
  }
}

byId('sign-in').addEventListener('submit', (event) => {
  event.preventDefault();
  token.set(byId<HTMLInputElement>('token').value.trim());
  showMessage('');
  void signIn();
});
byId('sign-out').addEventListener('click', () => {
  token.clear();
  // A fresh page: no timer, stream or listener of the last session survives.
  location.replace(location.pathname);
});

if (token.get() === undefined) show('sign-in-view');
else void signIn();
