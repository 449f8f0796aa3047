import { taskStatuses } from './taskbox-client.js';
import { call, query, type Counts, type RedriveResult, type SystemStatus } from './api.js';
import { age, byId, h, showMessage } from './dom.js';

/** Counts by status (one card each) and by type (a table), for `owner` (null: every owner). */
export async function refreshCounts(owner: string | null): Promise<void> {
  const { counts, countedAt } = await call<Counts>('GET', `/tasks/counts${query({ owner })}`);
  byId('counted-at').textContent = new Date(countedAt).toLocaleTimeString();
  const byStatus = new Map<string, number>();
  const byType = new Map<string, Map<string, number>>();
  for (const c of counts) {
    byStatus.set(c.status, (byStatus.get(c.status) ?? 0) + c.count);
    const row = byType.get(c.type) ?? new Map<string, number>();
    row.set(c.status, c.count);
    byType.set(c.type, row);
  }
  byId('status-counts').replaceChildren(
    ...taskStatuses.map((status) =>
      h(
        'div',
        { class: 'card', 'data-status': status },
        h('span', { class: 'label' }, status),
        h('strong', { id: `count-${status}` }, String(byStatus.get(status) ?? 0)),
      ),
    ),
  );
  const rows = [...byType].map(([type, row]) =>
    h('tr', {}, h('th', {}, type), ...taskStatuses.map((s) => h('td', {}, String(row.get(s) ?? 0)))),
  );
  byId('type-counts').replaceChildren(
    h('thead', {}, h('tr', {}, h('th', {}, 'type'), ...taskStatuses.map((s) => h('th', {}, s)))),
    h('tbody', {}, ...rows),
  );
}

/** The outbox backlog, the dead letters and the doctor's checks (admins only). */
export async function refreshSystem(): Promise<void> {
  const status = await call<SystemStatus>('GET', '/admin/status');
  byId('outbox-count').textContent = String(status.outbox.count);
  byId('outbox-age').textContent = status.outbox.count > 0 ? age(status.outbox.oldestAgeSeconds) : '—';
  const dead = status.checks.find((c) => c.name === 'dead letters');
  byId('dead-letters').textContent = dead?.count === undefined ? '?' : String(dead.count);
  byId('checked-at').textContent = new Date(status.checkedAt).toLocaleTimeString();
  byId('checks').replaceChildren(
    ...status.checks.map((c) =>
      h(
        'li',
        { 'data-status': c.status },
        h('span', { class: 'check-status' }, c.status),
        h('strong', {}, c.name),
        h('span', {}, c.detail),
        c.status !== 'ok' && c.hint ? h('em', { class: 'hint' }, `→ ${c.hint}`) : null,
      ),
    ),
  );
}

/** The re-drive buttons: a dry run says what would happen, the other does it. */
export function setUpRedrive(after: () => void): void {
  const run = async (dryRun: boolean): Promise<void> => {
    try {
      const r = await call<RedriveResult>('POST', '/admin/dead-letters/redrive', { dryRun });
      const dropped = Object.entries(r.dropped).map(([why, n]) => `${n} ${why}`);
      const verb = dryRun ? 'Would re-drive' : 'Re-drove';
      byId('redrive-result').textContent = `${verb} ${r.republished}; dropped ${dropped.join(', ') || 'none'}.`;
      after();
    } catch (err) {
      showMessage(String(err));
    }
  };
  byId('redrive-dry').addEventListener('click', () => void run(true));
  byId('redrive').addEventListener('click', () => void run(false));
}
