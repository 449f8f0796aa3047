import amqp from 'amqplib';
import { amqpNames } from '@taskbox/shared';
import { amqpUrl } from '../helpers/amqp';
import { startFaultProxy, type FaultProxy } from '../helpers/proxy';
import type { RunningService } from '../helpers/services';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

const TASKS = Number(process.env.CHAOS_TASKS ?? 2000);
const BROKER_OUTAGE_MS = Number(process.env.CHAOS_BROKER_OUTAGE_MS ?? 30_000);
const DB_OUTAGE_MS = 5000;
const REPUBLISH_AFTER_MS = 3000;
// Tasks that wait in the queues, with no worker, for the purge to lose: echoes and reports.
const STRANDED = 50;
const STRANDED_REPORTS = 10;
// A short report: two sections on the `reports` queue, beside the default queue's echoes and sleeps.
const REPORT = { title: 'chaos', sections: ['a', 'b'], msPerSection: 50 };
// Scheduled echoes due in the middle of the broker outage, and in the middle of the database outage.
const DUE_IN_OUTAGES = 20;
// Tasks that fail on purpose, then are retried in bulk.
const FAILING = 50;
const sleepFor = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One run, real faults: kill -9 of the relay mid-flow and of the worker mid-handler, the broker gone
 * for 30 s and Postgres gone for 5 s (every connection reset, reconnects refused, through a TCP
 * proxy), then both queues purged while they hold messages, all under a steady load of 2 000 tasks on
 * two queues (one in ten a `report` on `reports`, consumed with its own prefetch; one in ten scheduled
 * a few seconds ahead), with scheduled tasks falling due inside each outage. Nothing may be lost,
 * finish twice, go missing, or start before its time.
 */
describe('chaos', () => {
  let system: System;
  let pgProxy: FaultProxy;
  let amqpProxy: FaultProxy;
  let viaProxies: Record<string, string>;

  afterAll(async () => {
    for (const s of system?.services ?? [])
      if (s.text.length > 0) console.log(`${s.name} printed:\n${s.text.join('\n')}`);
    await pgProxy?.restore();
    await amqpProxy?.restore();
    await system?.stop();
    await pgProxy?.close();
    await amqpProxy?.close();
  });

  it('loses nothing, finishes nothing twice and never reports a task missing through crashes and outages', async () => {
    system = await startSystem({
      WORKER_LEASE_MS: '2000',
      RELAY_CONFIRM_TIMEOUT_MS: '1000',
      WORKER_QUEUES: 'reports:5,default:50',
      REPUBLISH_AFTER_MS: String(REPUBLISH_AFTER_MS),
    });
    const dbUrl = new URL(system.database.url);
    const brokerUrl = new URL(amqpUrl());
    pgProxy = await startFaultProxy(dbUrl.hostname, Number(dbUrl.port || 5432));
    amqpProxy = await startFaultProxy(brokerUrl.hostname, Number(brokerUrl.port || 5672));
    viaProxies = { DATABASE_URL: pgProxy.url(system.database.url), AMQP_URL: amqpProxy.url(amqpUrl()) };
    const api = await system.start('api', viaProxies);
    const apiUrl = `http://127.0.0.1:${await api.port()}`;
    let relay: RunningService = await system.start('relay', viaProxies);
    let worker: RunningService = await system.start('worker', viaProxies);

    const accepted: string[] = [];
    const unavailable: number[] = [];
    let serverErrors = 0;
    let scheduledAccepted = 0;
    let reportsAccepted = 0;
    // Paced so that submissions go on through every fault below, the database outage included.
    const loadStart = Date.now();
    const interval = (BROKER_OUTAGE_MS + DB_OUTAGE_MS + 14_000) / TASKS;
    const load = (async () => {
      for (let i = 0; accepted.length < TASKS; i++) {
        await sleepFor(loadStart + accepted.length * interval - Date.now());
        const body =
          i % 10 === 3
            ? { type: 'report', payload: REPORT }
            : i % 10 === 7
              ? { type: 'echo', payload: { i }, delayMs: 2000 + (i % 3) * 2000 }
              : i % 5 === 0
                ? { type: 'sleep', payload: { ms: 100 + (i % 4) * 100 } }
                : { type: 'echo', payload: { i } };
        const started = Date.now();
        const res = await fetch(`${apiUrl}/tasks`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ ...body, maxAttempts: 10 }),
        }).catch(() => null);
        if (res?.status === 202) {
          accepted.push(((await res.json()) as { id: string }).id);
          if ('delayMs' in body) scheduledAccepted++;
          if (body.type === 'report') reportsAccepted++;
        } else if (res?.status === 503) unavailable.push(Date.now() - started);
        else serverErrors++;
        if (res?.status !== 202) await sleepFor(100);
      }
    })();

    await sleepFor(2000);
    await relay.kill();
    relay = await system.start('relay', viaProxies);

    await waitFor('a sleep task running', () =>
      system.database.db
        .selectFrom('tasks')
        .select('id')
        .where('status', '=', 'processing')
        .where('type', '=', 'sleep')
        .executeTakeFirst(),
    );
    await worker.kill();
    worker = await system.start('worker', viaProxies);

    // Due while the broker is cut, and while Postgres is: the relay publishes each once it can.
    const dbOutageStartsIn = BROKER_OUTAGE_MS + 2000;
    const dueInOutages = await Promise.all(
      Array.from({ length: DUE_IN_OUTAGES }, (_, i) =>
        system.submit(
          'echo',
          { due: i },
          { delayMs: i % 2 ? BROKER_OUTAGE_MS / 2 : dbOutageStartsIn + DB_OUTAGE_MS / 2 },
        ),
      ),
    );
    await amqpProxy.cut();
    const acceptedBeforeBrokerOutage = accepted.length;
    await sleepFor(BROKER_OUTAGE_MS);
    const acceptedDuringBrokerOutage = accepted.length - acceptedBeforeBrokerOutage;
    const relayReadyDuringOutage = (await fetch(`http://127.0.0.1:${await relay.port()}/readyz`)).status;
    await amqpProxy.restore();

    await sleepFor(2000);
    await pgProxy.cut();
    await sleepFor(1000);
    const apiReadyDuringDbOutage = (await fetch(`${apiUrl}/readyz`)).status;
    await sleepFor(DB_OUTAGE_MS - 1000);
    await pgProxy.restore();
    await waitFor('api ready again', async () => (await fetch(`${apiUrl}/readyz`)).status === 200, 15_000);

    // The broker loses what it holds: with no worker, a batch of tasks waits in each queue (on top of
    // whatever the load adds meanwhile), and both queues are purged.
    const outageWorker = worker;
    await outageWorker.kill();
    const waiting = await Promise.all([
      ...Array.from({ length: STRANDED }, (_, i) => system.submit('echo', { i })),
      ...Array.from({ length: STRANDED_REPORTS }, () => system.submit('report', REPORT)),
    ]);
    await waitFor('the waiting batch published', async () => {
      const rows = await system.database.db
        .selectFrom('outbox')
        .select('id')
        .where('task_id', 'in', waiting)
        .where('published_at', 'is not', null)
        .execute();
      return rows.length === waiting.length;
    });
    const broker = await amqp.connect(amqpUrl());
    const purgeChannel = await broker.createChannel();
    const purgedEchoes = (await purgeChannel.purgeQueue(amqpNames(system.prefix).queue)).messageCount;
    const purgedReports = (await purgeChannel.purgeQueue(amqpNames(system.prefix, 'reports').queue)).messageCount;
    const purged = purgedEchoes + purgedReports;
    await broker.close();
    await system.start('worker', viaProxies);

    await load;
    accepted.push(...waiting, ...dueInOutages);
    await system.waitForTerminal(accepted, 180_000);

    const db = system.database.db;
    const tasks = await db.selectFrom('tasks').select(['id', 'status', 'type']).execute();
    const byId = new Map(tasks.map((t) => [t.id, t.status]));
    const byType = new Map(tasks.map((t) => [t.id, t.type]));
    // A task finished twice if an attempt succeeded or was cancelled and another attempt followed, or
    // two attempts succeeded. (A failed attempt followed by a retry is not terminal.)
    const attemptRows = await db
      .selectFrom('task_attempts')
      .select(['task_id', 'attempt', 'outcome'])
      .orderBy('task_id')
      .orderBy('attempt')
      .execute();
    const finishedAt = new Map<string, number>();
    const doubleInDb = new Set<string>();
    for (const a of attemptRows) {
      if (finishedAt.has(a.task_id)) doubleInDb.add(a.task_id);
      if (a.outcome === 'succeeded' || a.outcome === 'cancelled') finishedAt.set(a.task_id, a.attempt);
    }
    const finishedLogs = new Map<string, number>();
    for (const l of system.logs((l) => l.message === 'task succeeded' || l.message === 'task failed')) {
      finishedLogs.set(String(l.taskId), (finishedLogs.get(String(l.taskId)) ?? 0) + 1);
    }
    const report = {
      submitted: accepted.length,
      succeeded: accepted.filter((id) => byId.get(id) === 'succeeded').length,
      failed: accepted.filter((id) => byId.get(id) === 'failed').length,
      lost: accepted.filter((id) => !['succeeded', 'failed', 'cancelled'].includes(byId.get(id) ?? 'missing')).length,
      'double-terminal': doubleInDb.size + [...finishedLogs.values()].filter((n) => n > 1).length,
      'not-found': system.logs((l) => /not found|unknown-task/i.test(JSON.stringify(l))).length,
      'answered 503 (db down)': unavailable.length,
      'slowest 503 ms': Math.max(0, ...unavailable),
      '5xx other than 503': serverErrors,
      'accepted while broker down': acceptedDuringBrokerOutage,
      'resumed attempts': (
        await db.selectFrom('task_attempts').select('task_id').where('outcome', '=', 'lost').execute()
      ).length,
      'duplicates absorbed': system.logs((l) => l.message === 'duplicate delivery absorbed').length,
      'purged messages': `${purged} (${purgedReports} from reports)`,
      reports: accepted.filter((id) => byType.get(id) === 'report').length,
      republished: system.logs((l) => l.message === 'stranded task republished').length,
      scheduled: (await db.selectFrom('tasks').select('id').where('run_at', 'is not', null).execute()).length,
      'started before due': (await db.selectFrom('tasks').select('id').whereRef('started_at', '<', 'run_at').execute())
        .length,
    };
    const doubles = [
      ...[...doubleInDb].map((id) => `db ${id}`),
      ...[...finishedLogs.entries()].filter(([, n]) => n > 1).map(([id]) => `log ${id}`),
    ];
    for (const d of doubles) {
      const id = d.split(' ')[1]!;
      const attempts = await db.selectFrom('task_attempts').selectAll().where('task_id', '=', id).execute();
      const lines = system
        .logs((l) => l.taskId === id)
        .map(
          (l) =>
            `${String(l.service)} ${String(l.message)} ${String(l.attempt ?? '')} ${String(l.externalJobId ?? '')} ${String(l.timestamp)}`,
        );
      console.log(`double-terminal ${d}\n${JSON.stringify(attempts)}\n${lines.join('\n')}`);
    }
    console.log(
      `chaos report\n${Object.entries(report)
        .map(([k, v]) => `  ${k.padEnd(28)} ${v}`)
        .join('\n')}`,
    );

    expect(report.lost).toBe(0);
    expect(report['double-terminal']).toBe(0);
    expect(report['not-found']).toBe(0);
    expect(report.succeeded).toBe(TASKS + STRANDED + STRANDED_REPORTS + DUE_IN_OUTAGES);
    // Which requests of the load were answered 503 decides how many scheduled ones it made (at least
    // those accepted: a 503 whose connection broke after the commit may have made one more).
    expect(report.scheduled).toBeGreaterThanOrEqual(scheduledAccepted + DUE_IN_OUTAGES);
    expect(report['started before due']).toBe(0);
    expect(report.reports).toBe(reportsAccepted + STRANDED_REPORTS);
    expect(report['5xx other than 503']).toBe(0);
    expect(acceptedDuringBrokerOutage).toBeGreaterThan(0);
    expect(relayReadyDuringOutage).toBe(503);
    expect(apiReadyDuringDbOutage).toBe(503);
    expect(report['slowest 503 ms']).toBeLessThan(5000); // "fast, no hang": bounded by connect refusal, not a timeout
    // One line per state change, not one per reconnect attempt.
    expect(relay.logs.filter((l) => l.message === 'rabbitmq connection lost; reconnecting')).toHaveLength(1);
    expect(outageWorker.logs.filter((l) => l.message === 'rabbitmq connection lost; reconnecting')).toHaveLength(1);
    expect(purgedEchoes).toBeGreaterThanOrEqual(STRANDED);
    expect(purgedReports).toBeGreaterThanOrEqual(STRANDED_REPORTS);
    // Not one per purged message: some were duplicates of tasks that had already run.
    expect(report.republished).toBeGreaterThan(0);
  }, 300_000);

  it('retries in bulk 50 tasks that failed on purpose, through a relay killed mid-way, and each then succeeds once', async () => {
    const db = system.database.db;
    // Each fails its first attempt, its only one: failed for good until retried.
    const failing = await Promise.all(
      Array.from({ length: FAILING }, () => system.submit('flaky', { failTimes: 1 }, { maxAttempts: 1 })),
    );
    await system.waitForTerminal(failing);
    const failed = await db.selectFrom('tasks').select('id').where('id', 'in', failing).where('status', '=', 'failed');
    expect(await failed.execute()).toHaveLength(FAILING);

    // The bulk endpoints need an admin: a second api with an admin token, on the same database.
    const admin = await system.start('api', { ...viaProxies, AUTH_TOKENS: 'chaos-admin:ops:admin' });
    const retried = await fetch(`http://127.0.0.1:${await admin.port()}/admin/tasks/retry`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer chaos-admin' },
      body: JSON.stringify({ filter: { type: 'flaky', status: 'failed' } }),
    });
    expect(await retried.json()).toMatchObject({ matched: FAILING, acted: FAILING });
    const relay = system.services.find((s) => s.name === 'relay' && s.child.exitCode === null);
    await relay?.kill();
    await system.start('relay', viaProxies);
    await system.waitForTerminal(failing);

    const attempts = await db
      .selectFrom('task_attempts')
      .select(['task_id', 'attempt', 'outcome'])
      .where('task_id', 'in', failing)
      .orderBy('attempt')
      .execute();
    const byTask = new Map<string, string[]>();
    for (const a of attempts) byTask.set(a.task_id, [...(byTask.get(a.task_id) ?? []), `${a.attempt} ${a.outcome}`]);
    const shapes = new Set([...byTask.values()].map((a) => a.join(', ')));
    const succeeded = await db
      .selectFrom('tasks')
      .select('id')
      .where('id', 'in', failing)
      .where('status', '=', 'succeeded');
    console.log(
      `bulk retry: ${FAILING} failed on purpose, ${(await succeeded.execute()).length} succeeded after it; attempts: ${[...shapes].join(' | ')}`,
    );
    expect(await succeeded.execute()).toHaveLength(FAILING);
    expect([...shapes]).toEqual(['1 failed, 2 succeeded']);
    // Run once: one success logged per task, whatever the relay published twice.
    const ran = system.logs((l) => l.message === 'task succeeded' && failing.includes(String(l.taskId)));
    expect(ran).toHaveLength(FAILING);
  }, 120_000);
});
