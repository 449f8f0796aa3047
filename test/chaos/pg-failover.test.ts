import { readFileSync } from 'node:fs';
import { createDatabaseIfMissing, createDb, createPool, migrateToLatest } from '@taskbox/shared';
import { quietLogger, type TestDatabase } from '../helpers/db';
import { reportLine, runReport, startLoad, troubles, type Load, type RunReport } from '../helpers/fault-run';
import { startPgPair, type PgPair } from '../helpers/pg-pair';
import { startFaultProxy, type FaultProxy } from '../helpers/proxy';
import type { RunningService } from '../helpers/services';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

const TASKS = 1000;
const LOAD_MS = 15_000;

/** What one failover run leaves to stop, whether it passed or not. */
interface Run {
  pair?: PgPair;
  proxy?: FaultProxy;
  system?: System;
  passed?: boolean;
}

interface Outcome {
  report: RunReport;
  load: Load;
  services: Record<'api' | 'relay' | 'worker', RunningService>;
  /** From the kill to the proxy pointing at the promoted standby. */
  switchS: number;
  /** What the promoted standby logged, every statement included. */
  newPrimaryLog: string;
}

/** The taskbox database on the primary, migrated; the services and the test reach it through the proxy. */
async function ownDatabase(pair: PgPair, proxy: FaultProxy): Promise<TestDatabase> {
  const direct = pair.url(pair.primary, 'taskbox');
  await createDatabaseIfMissing(direct);
  const migrating = createDb(createPool(direct, quietLogger, { max: 1, statementTimeoutMs: 0 }));
  const { error } = await migrateToLatest(migrating);
  await migrating.destroy();
  if (error) throw new Error(`migrating the primary failed: ${String(error)}`);
  const url = proxy.url(direct);
  const pool = createPool(url, quietLogger, { max: 4, statementTimeoutMs: 10_000 });
  const db = createDb(pool);
  return { url, pool, db, drop: () => db.destroy() };
}

/**
 * 1 000 tasks at a steady pace; a third of the way in, kill -9 of the primary. Once the api has
 * answered 503 ten times, the standby is promoted and the proxy (the virtual IP a managed Postgres or Patroni
 * moves) points at it. The services are not restarted.
 */
async function failover(run: Run, synchronous: boolean): Promise<Outcome> {
  const pair = (run.pair = await startPgPair({ synchronous }));
  const proxy = (run.proxy = await startFaultProxy('127.0.0.1', pair.primary.port));
  // Long enough that no task is republished during a switch that loses nothing, short enough that one
  // stranded by a lost commit finishes within the run.
  const system = (run.system = await startSystem({ REPUBLISH_AFTER_MS: '15000' }, await ownDatabase(pair, proxy)));
  const services = {
    api: await system.start('api'),
    relay: await system.start('relay'),
    worker: await system.start('worker'),
  };
  const load = startLoad(`http://127.0.0.1:${await services.api.port()}`, TASKS, LOAD_MS);
  await waitFor('a third of the tasks accepted', () => load.accepted.length >= TASKS / 3, LOAD_MS * 2);

  const killedAt = Date.now();
  await pair.killPrimary();
  // Until a failover is detected (Patroni: up to its TTL) clients see the database gone.
  await waitFor('the api to answer 503 ten times', () => load.unavailable >= 10);
  await pair.promoteStandby();
  proxy.retarget('127.0.0.1', pair.standby.port);
  const switchS = (Date.now() - killedAt) / 1000;

  await load.done;
  await system.waitForTerminal(load.accepted, 120_000).catch((err: unknown) => {
    // With asynchronous replication some tasks may never finish: the report counts them.
    if (synchronous) throw err;
  });
  const report = await runReport(system.database.db, load, system.logs);
  return { report, load, services, switchS, newPrimaryLog: readFileSync(pair.standby.logFile, 'utf8') };
}

async function stopRun(run: Run): Promise<void> {
  if (!run.passed) console.log(`the services' warnings and errors:\n${troubles(run.system?.services ?? [])}`);
  await run.system?.stop();
  await run.proxy?.close();
  await run.pair?.stop();
}

describe('Postgres failover', () => {
  const runs: Run[] = [];
  const newRun = (): Run => {
    const run: Run = {};
    runs.push(run);
    return run;
  };

  afterAll(async () => {
    for (const run of runs) await stopRun(run);
  }, 120_000);

  it('with a synchronous standby, loses no accepted task, answers 503 (never 500) during the switch and recovers without a restart', async () => {
    const run = newRun();
    const { report, load, services, switchS, newPrimaryLog } = await failover(run, true);
    console.log(reportLine('postgres failover, synchronous standby', report, { 'switch s': switchS.toFixed(2) }));

    expect(load.others).toEqual([]);
    expect(report.lost).toBe(0);
    expect(report.succeeded).toBe(TASKS);
    expect(report.doubleRun).toBe(0);
    expect(report.reconciled).toBe(0);
    expect(services.api.child.exitCode).toBeNull();
    // The LISTEN connections came back, on the new primary.
    for (const s of [services.api, services.relay]) {
      expect([s.name, s.logs.some((l) => l.message === 'listener reconnected')]).toEqual([s.name, true]);
    }
    expect(newPrimaryLog).toMatch(/statement: LISTEN "/);
    // Named prepared statements are prepared again on new connections, and session settings applied.
    expect(newPrimaryLog).toMatch(/execute api_insert_tasks/);
    expect(newPrimaryLog).toMatch(/execute worker_finish/);
    expect(newPrimaryLog).toMatch(/statement: SET enable_bitmapscan = off; SET synchronous_commit = off/);
    expect(newPrimaryLog).toMatch(/statement: SET plan_cache_mode = force_generic_plan/);
    expect(
      services.relay.logs.concat(services.worker.logs).filter((l) => /session settings/.test(l.message ?? '')),
    ).toEqual([]);
    run.passed = true;
  }, 240_000);

  it('with an asynchronous standby, reports how many accepted tasks the failover lost', async () => {
    const run = newRun();
    const { report, switchS } = await failover(run, false);
    console.log(reportLine('postgres failover, asynchronous standby', report, { 'switch s': switchS.toFixed(2) }));
    expect(report.submitted).toBe(TASKS);
    run.passed = true;
  }, 240_000);
});
