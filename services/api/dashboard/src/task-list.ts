import type { TaskView } from './taskbox-client.js';
import { call, query, type BulkFilter, type BulkResult, type Me, type TaskPage } from './api.js';
import { byId, errorLine, h, showMessage, when } from './dom.js';

const PAGE_SIZE = 20;

export interface TaskList {
  /** The owner the list shows: the caller's own, or for an admin the filter's (null: every owner). */
  owner(): string | null;
  /** Reads the current page again (after a change). */
  refresh(): Promise<void>;
}

const input = (id: string): string => byId<HTMLInputElement | HTMLSelectElement>(id).value.trim();
const instant = (id: string): string | undefined => (input(id) ? new Date(input(id)).toISOString() : undefined);

/** The filter form as the api takes it; the same filter lists tasks and picks a bulk action's tasks. */
function readFilter(me: Me): BulkFilter {
  return {
    owner: me.admin ? input('filter-owner') || undefined : undefined,
    type: input('filter-type') || undefined,
    status: (input('filter-status') || undefined) as BulkFilter['status'],
    createdAfter: instant('filter-after'),
    createdBefore: instant('filter-before'),
    errorContains: input('filter-error') || undefined,
  };
}

function row(task: TaskView, me: Me): HTMLTableRowElement {
  return h(
    'tr',
    { 'data-id': task.id, 'data-status': task.status },
    h('td', {}, h('a', { href: `#/tasks/${task.id}`, title: task.id }, task.id.slice(0, 8))),
    h('td', {}, task.type),
    h('td', {}, h('span', { class: 'status', 'data-status': task.status }, task.status)),
    h('td', {}, `${task.attempts}/${task.maxAttempts}`),
    me.admin ? h('td', {}, task.owner) : null,
    h('td', {}, when(task.createdAt)),
    h('td', { class: 'error' }, errorLine(task.error)),
  );
}

/** The filtered list with keyset paging (newer and older), and for admins the bulk actions on its filter. */
export function createTaskList(me: Me, filterChanged: () => void): TaskList {
  // The cursor of each page shown, first page first: "Newer" goes back one, "Older" adds the next.
  let cursors: (string | null)[] = [null];
  let next: string | null = null;
  let filter = readFilter(me);

  async function load(): Promise<void> {
    const cursor = cursors.at(-1) ?? null;
    const page = await call<TaskPage>('GET', `/tasks${query({ ...filter, limit: String(PAGE_SIZE), cursor })}`);
    next = page.next;
    byId('task-rows').replaceChildren(...page.items.map((t) => row(t, me)));
    byId('page-number').textContent = `page ${cursors.length}`;
    byId<HTMLButtonElement>('newer').disabled = cursors.length === 1;
    byId<HTMLButtonElement>('older').disabled = next === null;
  }
  const show = (): void => void load().catch((err: unknown) => showMessage(String(err)));

  byId('filters').addEventListener('submit', (event) => {
    event.preventDefault();
    filter = readFilter(me);
    cursors = [null];
    filterChanged();
  });
  byId('newer').addEventListener('click', () => {
    if (cursors.length > 1) cursors.pop();
    show();
  });
  byId('older').addEventListener('click', () => {
    if (next) cursors.push(next);
    show();
  });
  if (me.admin) setUpBulk(() => filter, filterChanged);
  return { owner: () => (me.admin ? (filter.owner ?? null) : me.owner), refresh: load };
}

/** Bulk retry and cancel on the list's filter: a dry run counts first, then Confirm acts. */
function setUpBulk(filter: () => BulkFilter, after: () => void): void {
  // The action, the very filter its dry run counted and how many it offered: Confirm acts on that
  // many, oldest first, whatever the form says now or the tasks created since.
  let pending: { action: 'retry' | 'cancel'; filter: BulkFilter; limit: number } | null = null;
  const confirm = byId('bulk-confirm');
  const ask = async (action: 'retry' | 'cancel'): Promise<void> => {
    const counted = { ...filter() };
    const dry = await call<BulkResult>('POST', `/admin/tasks/${action}`, { filter: counted, dryRun: true });
    const which = action === 'retry' ? 'failed or cancelled' : 'pending or processing';
    const limit = Math.min(dry.matched, dry.limit);
    if (limit === 0) {
      showMessage(`No ${which} tasks match.`, false);
      return;
    }
    pending = { action, filter: counted, limit };
    byId('bulk-question').textContent = `${dry.matched} ${which} tasks match; ${action} ${limit} of them?`;
    confirm.hidden = false;
  };
  const go = async (): Promise<void> => {
    if (!pending) return;
    const { action, filter: counted, limit } = pending;
    const done = await call<BulkResult>('POST', `/admin/tasks/${action}`, { filter: counted, limit });
    showMessage(`${action === 'retry' ? 'Retried' : 'Cancelled'} ${done.acted} of ${done.matched}.`, false);
    pending = null;
    confirm.hidden = true;
    after();
  };
  const failed = (err: unknown): void => showMessage(String(err));
  byId('bulk-retry').addEventListener('click', () => void ask('retry').catch(failed));
  byId('bulk-cancel').addEventListener('click', () => void ask('cancel').catch(failed));
  byId('bulk-go').addEventListener('click', () => void go().catch(failed));
  byId('bulk-abort').addEventListener('click', () => {
    pending = null;
    confirm.hidden = true;
  });
}
