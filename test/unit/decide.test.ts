import { decide } from '../../services/worker/src/attempts';
import type { LockedTask } from '../../services/worker/src/task-sql';

const task = (over: Partial<LockedTask>): LockedTask => ({
  id: '0b7c1b9e-6c1f-4f39-9a39-1c7d3f6a2b10',
  type: 'echo',
  payload: {},
  status: 'pending',
  attempts: 0,
  max_attempts: 3,
  timeout_ms: null,
  lease_expired: true,
  cancel_requested: false,
  correlation_id: null,
  external_job_id: null,
  ...over,
});
const message = (attempt: number, type = 'echo') => ({ taskId: task({}).id, type, attempt, externalJobId: 'ctag-b:7' });

describe('the worker idempotency rule (decide)', () => {
  it('runs the first delivery of a pending task', () => {
    expect(decide(task({}), message(1))).toEqual({ action: 'run' });
  });

  it('dead-letters a message whose task does not exist', () => {
    expect(decide(undefined, message(1))).toEqual({ action: 'dead-letter', reason: 'unknown-task' });
  });

  it('dead-letters a message whose type disagrees with its task', () => {
    expect(decide(task({}), message(1, 'sleep'))).toEqual({ action: 'dead-letter', reason: 'type-mismatch' });
  });

  it.each(['succeeded', 'failed', 'cancelled'] as const)('never runs a %s task again', (status) => {
    expect(decide(task({ status, attempts: 1 }), message(1))).toEqual({ action: 'skip', reason: 'terminal' });
    expect(decide(task({ status, attempts: 1 }), message(2))).toEqual({ action: 'skip', reason: 'terminal' });
  });

  it('drops a duplicate of an attempt that already started, once the task is pending again', () => {
    expect(decide(task({ attempts: 1 }), message(1))).toEqual({ action: 'skip', reason: 'stale' });
    expect(decide(task({ attempts: 1 }), message(2))).toEqual({ action: 'run' });
  });

  it('does not run a duplicate while another run holds the lease', () => {
    const running = task({ status: 'processing', attempts: 1, lease_expired: false, external_job_id: 'ctag-a:3' });
    expect(decide(running, message(1))).toEqual({ action: 'skip', reason: 'running-elsewhere' });
  });

  it("resumes this delivery's own start, whose answer was lost, rather than taking it for another run", () => {
    const own = task({ status: 'processing', attempts: 1, lease_expired: false, external_job_id: 'ctag-b:7' });
    expect(decide(own, message(1))).toEqual({ action: 'resume' });
    // Cancelled meanwhile: ended, not run.
    expect(decide({ ...own, cancel_requested: true }, message(1))).toEqual({ action: 'cancel' });
  });

  it('resumes a run whose lease expired (its worker died)', () => {
    const dead = task({ status: 'processing', attempts: 1, lease_expired: true });
    expect(decide(dead, message(1))).toEqual({ action: 'run' });
  });

  it('ends a dead run cancelled, not resumed, when a cancel was requested while it ran', () => {
    const dead = task({ status: 'processing', attempts: 1, lease_expired: true, cancel_requested: true });
    expect(decide(dead, message(1))).toEqual({ action: 'cancel' });
    const last = task({
      status: 'processing',
      attempts: 3,
      max_attempts: 3,
      lease_expired: true,
      cancel_requested: true,
    });
    expect(decide(last, message(3))).toEqual({ action: 'cancel' });
  });

  it('fails the task when the dead run was its last attempt', () => {
    const dead = task({ status: 'processing', attempts: 3, max_attempts: 3, lease_expired: true });
    expect(decide(dead, message(3))).toEqual({ action: 'fail', reason: 'attempts-exhausted' });
  });

  it('fails a task whose type has no handler instead of leaving it pending', () => {
    expect(decide(task({ type: 'nope' }), message(1, 'nope'))).toEqual({ action: 'fail', reason: 'unknown-type' });
  });

  it('drops a duplicate of a type it has no handler for, which a newer worker runs (a rolling upgrade)', () => {
    const running = task({ type: 'nope', status: 'processing', attempts: 1, lease_expired: false });
    expect(decide(running, message(1, 'nope'))).toEqual({ action: 'skip', reason: 'running-elsewhere' });
    const started = task({ type: 'nope', status: 'pending', attempts: 1 });
    expect(decide(started, message(1, 'nope'))).toEqual({ action: 'skip', reason: 'stale' });
  });
});
