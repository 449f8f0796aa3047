import type { TaskRow } from '@taskbox/shared';
import type { Timeline } from '../../services/api/src/held-requests';
import { toTaskView } from '../../services/api/src/task-view';

const at = (second: number) => new Date(Date.UTC(2026, 11, 7, 12, 0, second));

const row = (over: Partial<TaskRow>): TaskRow => ({
  id: '0b7c1b9e-6c1f-4f39-9a39-1c7d3f6a2b10',
  type: 'flaky',
  payload: {},
  status: 'pending',
  current_step: null,
  progress: null,
  result: null,
  error: null,
  attempts: 0,
  max_attempts: 3,
  timeout_ms: null,
  run_at: null,
  external_job_id: null,
  owner: 'alice',
  request_hash: null,
  correlation_id: null,
  cancel_requested_at: null,
  created_at: at(0),
  updated_at: at(0),
  started_at: null,
  finished_at: null,
  version: '1',
  ...over,
});

const attempt = (n: number, started: number, finished: number | null): Timeline['attempts'][number] => ({
  attempt: n,
  external_job_id: `worker-a:${n}`,
  started_at: at(started),
  finished_at: finished === null ? null : at(finished),
  outcome: finished === null ? null : 'failed',
  error: finished === null ? null : { name: 'Error', message: `attempt ${n} failed` },
});

// What the timeline's statements read a moment after the row: two attempts finished, a third started,
// and a retry asked for once the task had failed.
const later: Timeline = {
  attempts: [attempt(1, 1, 2), attempt(2, 3, 4), attempt(3, 5, null)],
  messages: [],
  retries: [{ retry: 1, requested_by: 'alice', requested_at: at(9) }],
};

const events = (r: TaskRow) =>
  toTaskView(r, later).timeline?.map((e) => `${e.event}${'attempt' in e ? e.attempt : ''}`);

describe('the task view: its timeline as of its row', () => {
  it('leaves out attempts the row has not reached: a pending task with no attempt shows none started', () => {
    expect(events(row({}))).toEqual(['created']);
  });

  it("shows a processing row's current attempt as running, though the timeline's read saw it finish", () => {
    const processing = row({ status: 'processing', attempts: 2, updated_at: at(3), external_job_id: 'worker-a:2' });
    expect(events(processing)).toEqual(['created', 'started1', 'finished1', 'started2']);
  });

  it('shows a retry only once the row has it', () => {
    const failed = row({ status: 'failed', attempts: 3, updated_at: at(8) });
    const complete: Timeline = { ...later, attempts: [...later.attempts.slice(0, 2), attempt(3, 5, 8)] };
    const shown = (r: TaskRow) => toTaskView(r, complete).timeline?.map((e) => e.event);
    expect(shown(failed)).not.toContain('retried');
    expect(shown(row({ status: 'pending', attempts: 3, updated_at: at(9) }))).toContain('retried');
  });
});
