import type pg from 'pg';
import { cachedLoader, runDoctor, type CheckResult, type Db, type DoctorConfig } from '@taskbox/shared';
import { retiredQueues, taskTypeList } from '@taskbox/tasks';

export interface SystemChecks {
  /** The doctor's checks, from a run at most a few seconds old. */
  run(): Promise<{ results: CheckResult[]; at: Date }>;
}

// A run costs a dozen queries and a broker connection; dashboards poll it.
const REUSE_MS = 5000;

/** The doctor's checks for the dashboard, one run at a time, reused for a few seconds. */
export function createSystemChecks(config: DoctorConfig, pool: pg.Pool, db: Db): SystemChecks {
  const load = cachedLoader(REUSE_MS, async () => ({
    results: await runDoctor(config, pool, db, taskTypeList, retiredQueues),
    at: new Date(),
  }));
  return { run: () => load('checks') };
}
