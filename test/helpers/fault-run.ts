import type { Db } from '@taskbox/shared';
import type { LogLine, RunningService } from './services';

const sleepFor = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface Load {
  /** Ids of the tasks the api answered 202 for, in order. */
  accepted: string[];
  /** How many POSTs the api answered 503 (unavailable, retry later). */
  unavailable: number;
  /** Every other answer: a 5xx other than 503, a 4xx, or no answer at all. */
  others: string[];
  /** Resolves once `tasks` tasks were accepted. */
  done: Promise<void>;
}

/**
 * POSTs tasks to the api at a steady pace over `durationMs` from `lanes` concurrent clients, as the
 * users of a frontend would, and goes on through refusals until `tasks` were accepted. One in five is
 * a `sleep` of 100-400 ms, so that some handlers run whenever a fault strikes.
 */
export function startLoad(apiUrl: string, tasks: number, durationMs: number, lanes = 4): Load {
  const load: Load = { accepted: [], unavailable: 0, others: [], done: Promise.resolve() };
  const start = Date.now();
  const lane = async (share: number, offset: number) => {
    for (let i = offset, mine = 0; mine < share; i += lanes) {
      await sleepFor(start + (mine * durationMs) / share - Date.now());
      const body =
        i % 5 === 0 ? { type: 'sleep', payload: { ms: 100 + (i % 4) * 100 } } : { type: 'echo', payload: { i } };
      const res = await fetch(`${apiUrl}/tasks`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ...body, maxAttempts: 10 }),
      }).catch((err: unknown) => String(err));
      if (typeof res !== 'string' && res.status === 202) {
        load.accepted.push(((await res.json()) as { id: string }).id);
        mine++;
      } else if (typeof res !== 'string' && res.status === 503) load.unavailable++;
      else load.others.push(typeof res === 'string' ? res : `${res.status} ${await res.text()}`);
      if (typeof res === 'string' || res.status !== 202) await sleepFor(100);
    }
  };
  const shares = Array.from({ length: lanes }, (_, l) => Math.floor(tasks / lanes) + (l < tasks % lanes ? 1 : 0));
  load.done = Promise.all(shares.map((share, l) => lane(share, l))).then(() => undefined);
  return load;
}

export interface RunReport {
  submitted: number;
  succeeded: number;
  /** Accepted tasks whose row is gone. */
  lost: number;
  /** Accepted tasks still pending or processing at the end. */
  unfinished: number;
  /** Tasks whose handler reached a terminal outcome more than once. */
  doubleRun: number;
  /** api answers that were 5xx but not 503, or no answer. */
  api5xx: number;
  api503: number;
  /** The longest gap between two consecutive task completions, in seconds. */
  stallS: number;
  /** Outbox rows published more than once (no confirm the first time, or their mark was lost). */
  republishedRows: number;
  /** Deliveries the worker recognised as duplicates and did not run. */
  absorbed: number;
  /** Tasks the reconciler had to publish again because the broker lost their message. */
  reconciled: number;
}

/** What a run did to the tasks it submitted, from Postgres and the services' logs. */
export async function runReport(
  db: Db,
  load: Load,
  logs: (match: (l: LogLine) => boolean) => LogLine[],
): Promise<RunReport> {
  const ids = load.accepted;
  const tasks = await db.selectFrom('tasks').select(['id', 'status', 'finished_at']).where('id', 'in', ids).execute();
  const attempts = await db
    .selectFrom('task_attempts')
    .select(['task_id', 'outcome'])
    .where('task_id', 'in', ids)
    .where('outcome', 'in', ['succeeded', 'failed', 'cancelled'])
    .execute();
  const finishes = new Map<string, number>();
  const count = (id: string) => finishes.set(id, (finishes.get(id) ?? 0) + 1);
  attempts.forEach((a) => count(`db ${a.task_id}`));
  logs((l) => /^task (succeeded|failed|cancelled)$/.test(l.message ?? '')).forEach((l) =>
    count(`log ${String(l.taskId)}`),
  );
  const done = tasks.flatMap((t) => (t.finished_at ? [new Date(t.finished_at).getTime()] : [])).sort((a, b) => a - b);
  const gaps = done.slice(1).map((t, i) => t - done[i]!);
  const republished = await db
    .selectFrom('outbox')
    .select(db.fn.countAll<string>().as('n'))
    .where('task_id', 'in', ids)
    .where('publish_attempts', '>', 1)
    .executeTakeFirstOrThrow();
  return {
    submitted: ids.length,
    succeeded: tasks.filter((t) => t.status === 'succeeded').length,
    lost: ids.length - tasks.length,
    unfinished: tasks.filter((t) => t.status === 'pending' || t.status === 'processing').length,
    doubleRun: new Set([...finishes].filter(([, n]) => n > 1).map(([key]) => key.split(' ')[1])).size,
    api5xx: load.others.filter((o) => !/^4\d\d /.test(o)).length,
    api503: load.unavailable,
    stallS: Math.max(0, ...gaps) / 1000,
    republishedRows: Number(republished.n),
    absorbed: logs((l) => l.message === 'duplicate delivery absorbed').length,
    reconciled: logs((l) => l.message === 'stranded task republished').length,
  };
}

/** The report as one line, with the run's own figures first. */
export function reportLine(title: string, report: RunReport, extra: Record<string, string | number> = {}): string {
  const fields: Record<string, string | number> = {
    ...extra,
    submitted: report.submitted,
    succeeded: report.succeeded,
    lost: report.lost,
    unfinished: report.unfinished,
    'double-run': report.doubleRun,
    'api 5xx other than 503': report.api5xx,
    'api 503': report.api503,
    'stall s': report.stallS.toFixed(2),
    'republished rows': report.republishedRows,
    'duplicates absorbed': report.absorbed,
    'reconciler republished': report.reconciled,
  };
  return `${title}: ${Object.entries(fields)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ')}`;
}

/** The last warnings and errors each service logged, and what it printed: what to read when a fault run fails. */
export function troubles(services: RunningService[], perService = 40): string {
  return services
    .map((s) => {
      const lines = s.logs.filter((l) => l.level === 'warn' || l.level === 'error').slice(-perService);
      return `${s.name} (pid ${s.child.pid}):\n${lines.map((l) => JSON.stringify(l)).join('\n')}\n${s.text.join('\n')}`;
    })
    .join('\n');
}
