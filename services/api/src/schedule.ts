import type { TaskSchedule } from '@taskbox/shared';
import { HttpProblem } from './problem';

/** SCHEDULE_MAX_AHEAD_MS and SCHEDULE_PAST_SKEW_MS. */
export interface ScheduleLimits {
  maxAheadMs: number;
  pastSkewMs: number;
}

type Issue = { path: string; message: string };

function refuse(issues: Issue[]): never {
  const detail = issues.map((i) => `${i.path}: ${i.message}`).join('; ');
  throw new HttpProblem(422, 'Invalid Schedule', detail, { issues });
}

/**
 * Checks the schedule of POST /tasks against the limits, on the api's clock: a far-future time is
 * refused so a typo cannot park a task for years. How far back a runAt may be is checked apart
 * (refuseLongPast), since time makes a request that was accepted fail it: a replay must not.
 */
export function parseSchedule(
  body: { runAt?: string | undefined; delayMs?: number | undefined },
  limits: ScheduleLimits,
  now = Date.now(),
): TaskSchedule {
  const { runAt, delayMs } = body;
  if (runAt !== undefined && delayMs !== undefined) {
    const message = 'give runAt or delayMs, not both';
    refuse([
      { path: 'runAt', message },
      { path: 'delayMs', message },
    ]);
  }
  const ahead = `more than ${limits.maxAheadMs} ms ahead (SCHEDULE_MAX_AHEAD_MS)`;
  if (delayMs !== undefined) {
    if (delayMs > limits.maxAheadMs) refuse([{ path: 'delayMs', message: ahead }]);
    return { delayMs };
  }
  if (runAt === undefined) return null;
  if (Date.parse(runAt) > now + limits.maxAheadMs) refuse([{ path: 'runAt', message: ahead }]);
  return { runAt };
}

/**
 * A runAt a little in the past (clocks differ, a request is slow) runs at once; one further back is a
 * mistake the caller should hear of.
 */
export function refuseLongPast(schedule: TaskSchedule, limits: ScheduleLimits, now = Date.now()): void {
  if (schedule && 'runAt' in schedule && Date.parse(schedule.runAt) < now - limits.pastSkewMs) {
    refuse([{ path: 'runAt', message: `more than ${limits.pastSkewMs} ms in the past (SCHEDULE_PAST_SKEW_MS)` }]);
  }
}
