import amqp from 'amqplib';
import pg from 'pg';
import { amqpNames } from '@taskbox/shared';
import { amqpUrl } from '../helpers/amqp';
import { sample, scrape } from '../helpers/metrics';
import type { RunningService } from '../helpers/services';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

const REPUBLISH_AFTER_MS = 1500;
const sleepFor = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs `work` on a channel of its own connection to the shared broker (on this test's own names). */
async function onBroker<T>(work: (ch: amqp.Channel) => Promise<T>): Promise<T> {
  const connection = await amqp.connect(amqpUrl());
  try {
    const ch = await connection.createChannel();
    return await work(ch);
  } finally {
    await connection.close();
  }
}

/**
 * The broker loses what it holds or breaks a channel, with every service running and none restarted:
 * every task still ends succeeded, exactly once.
 */
describe('recovery from what the broker loses', () => {
  let system: System;

  afterEach(async () => {
    await system.stop();
  });

  const republishedLogs = () => system.logs((l) => l.message === 'stranded task republished');

  async function expectSucceededOnce(ids: string[]): Promise<void> {
    const attempts = await system.database.db
      .selectFrom('task_attempts')
      .select(['task_id', 'outcome'])
      .where('task_id', 'in', ids)
      .execute();
    expect(
      attempts
        .filter((a) => a.outcome === 'succeeded')
        .map((a) => a.task_id)
        .sort(),
    ).toEqual([...ids].sort());
    expect(attempts).toHaveLength(ids.length);
  }

  it('republishes tasks whose messages were purged, and not while the queue holds a backlog', async () => {
    system = await startSystem({ REPUBLISH_AFTER_MS: String(REPUBLISH_AFTER_MS) });
    await system.start('api');
    const relay = await system.start('relay');
    const ids = await Promise.all(Array.from({ length: 10 }, (_, i) => system.submit('echo', { i })));
    await system.waitPublished(ids);

    // No worker: the ten wait in the queue, a backlog, not a loss.
    await sleepFor(REPUBLISH_AFTER_MS * 2);
    expect(republishedLogs()).toHaveLength(0);

    // Retention deleted the outbox rows of some (they were published); the queue loses them all.
    await system.database.db.deleteFrom('outbox').where('task_id', 'in', ids.slice(0, 3)).execute();
    await onBroker((ch) => ch.purgeQueue(amqpNames(system.prefix).queue));
    const purgedAt = Date.now();
    await system.start('worker');
    await system.waitForTerminal(ids, 30_000);
    console.log(`purged queue: last stranded task succeeded ${Date.now() - purgedAt} ms after the purge`);

    await expectSucceededOnce(ids);
    expect(
      republishedLogs()
        .map((l) => l.taskId)
        .sort(),
    ).toEqual([...ids].sort());
    expect(republishedLogs()[0]).toMatchObject({ correlationId: expect.any(String), reason: expect.any(String) });
    const marked = await system.database.db
      .selectFrom('tasks')
      .select('id')
      .where('id', 'in', ids)
      .where('republished_at', 'is not', null)
      .execute();
    expect(marked).toHaveLength(ids.length);
    const metrics = await scrape(`http://127.0.0.1:${await relay.port()}`);
    expect(sample(metrics, 'tasks_republished_total', { queue: 'tasks', state: 'caught-up' })).toBe(10);
  }, 60_000);

  it('republishes a task overdue behind a backlog only after 12 times REPUBLISH_AFTER_MS', async () => {
    system = await startSystem({ REPUBLISH_AFTER_MS: '400' });
    await system.start('api');
    await system.start('relay');
    const ids = await Promise.all(Array.from({ length: 3 }, (_, i) => system.submit('echo', { i })));
    await system.waitPublished(ids);
    const publishedAt = Date.now();
    await waitFor('the overdue tasks republished', () => republishedLogs().length === ids.length, 15_000);
    expect(Date.now() - publishedAt).toBeGreaterThan(12 * 400 - 500);
    expect(republishedLogs()[0]).toMatchObject({ reason: 'overdue behind 3 ready messages in queue tasks' });
    await system.start('worker');
    await system.waitForTerminal(ids, 30_000);
    await expectSucceededOnce(ids);
  }, 60_000);

  it('judges each queue by its own backlog: a lost report is republished while echoes wait in theirs', async () => {
    system = await startSystem({ REPUBLISH_AFTER_MS: String(REPUBLISH_AFTER_MS) });
    await system.start('api');
    const relay = await system.start('relay');
    const echoes = await Promise.all(Array.from({ length: 5 }, (_, i) => system.submit('echo', { i })));
    const report = await system.submit('report', { title: 'q3', sections: ['a'], msPerSection: 0 });
    await system.waitPublished([...echoes, report]);
    // The echoes wait in their queue past the window: a backlog there. The report's queue loses it.
    await sleepFor(REPUBLISH_AFTER_MS * 1.5);
    await onBroker((ch) => ch.purgeQueue(amqpNames(system.prefix, 'reports').queue));

    await waitFor('the report republished', () => republishedLogs().length > 0, 15_000);
    expect(republishedLogs().map((l) => [l.taskId, l.reason])).toEqual([
      [report, `queue reports holds no message older than ${REPUBLISH_AFTER_MS} ms`],
    ]);
    const metrics = await scrape(`http://127.0.0.1:${await relay.port()}`);
    expect(sample(metrics, 'tasks_republished_total', { queue: 'reports', state: 'caught-up' })).toBe(1);
    await system.start('worker');
    await system.waitForTerminal([...echoes, report], 30_000);
    await expectSucceededOnce([...echoes, report]);
  }, 60_000);

  it('has one relay act on each stranded task when several run', async () => {
    system = await startSystem({ REPUBLISH_AFTER_MS: String(REPUBLISH_AFTER_MS) });
    await system.start('api');
    await Promise.all([system.start('relay'), system.start('relay'), system.start('relay')]);
    const ids = await Promise.all(Array.from({ length: 30 }, (_, i) => system.submit('echo', { i })));
    await system.waitPublished(ids);
    await onBroker((ch) => ch.purgeQueue(amqpNames(system.prefix).queue));

    await waitFor('every task republished', () => republishedLogs().length >= ids.length, 15_000);
    await sleepFor(REPUBLISH_AFTER_MS);
    expect(new Set(republishedLogs().map((l) => l.taskId)).size).toBe(ids.length);
    expect(republishedLogs()).toHaveLength(ids.length);
    await system.start('worker');
    await system.waitForTerminal(ids, 30_000);
    await expectSucceededOnce(ids);
  }, 60_000);

  it('declares a deleted queue again and consumes from it, without a restart', async () => {
    system = await startSystem({ REPUBLISH_AFTER_MS: String(REPUBLISH_AFTER_MS) });
    await system.start('api');
    await system.start('relay');
    const worker = await system.start('worker');
    await system.waitForTerminal([await system.submit('echo', {})]);

    await onBroker((ch) => ch.deleteQueue(amqpNames(system.prefix).queue));
    const deletedAt = Date.now();
    const ids = await Promise.all(Array.from({ length: 5 }, (_, i) => system.submit('echo', { i })));
    await system.waitForTerminal(ids, 30_000);
    console.log(`deleted queue: 5 tasks succeeded ${Date.now() - deletedAt} ms after the delete`);
    await expectSucceededOnce(ids);
    await worker.waitForLog('rebuild after the cancel', (l) => /cancelled consumer/.test(String(l.reason ?? '')));
    await worker.waitForLog('consuming again', (l) => l.message === 'rabbitmq channels rebuilt');
  }, 60_000);

  it('consumes a deleted second queue again: reports and echoes submitted after the delete both run', async () => {
    system = await startSystem();
    await system.start('api');
    await system.start('relay');
    const worker = await system.start('worker', { WORKER_QUEUES: 'reports:2,default:5' });
    await onBroker((ch) => ch.deleteQueue(amqpNames(system.prefix, 'reports').queue));
    await worker.waitForLog('rebuild after the cancel', (l) =>
      /cancelled consumer .* of .*reports/.test(String(l.reason ?? '')),
    );

    const report = await system.submit('report', { title: 'after', sections: ['a'], msPerSection: 0 });
    const ids = [report, await system.submit('echo', {})];
    await system.waitForTerminal(ids, 30_000);
    await expectSucceededOnce(ids);
    expect((await fetch(`http://127.0.0.1:${await worker.port()}/readyz`)).status).toBe(200);
  }, 60_000);

  it('rebuilds the relay after publishes come back unroutable, answering /readyz 503 meanwhile', async () => {
    system = await startSystem();
    await system.start('api');
    const relay = await system.start('relay');
    const relayUrl = `http://127.0.0.1:${await relay.port()}`;
    await onBroker((ch) => ch.deleteQueue(amqpNames(system.prefix).queue));

    const ids = await Promise.all(Array.from({ length: 5 }, (_, i) => system.submit('echo', { i })));
    await waitFor('relay not ready while its publishes are returned', async () => {
      if (relay.child.exitCode !== null)
        throw new Error(`relay exited ${relay.child.exitCode}: ${relay.text.join('\n')}`);
      return (await fetch(`${relayUrl}/readyz`)).status === 503;
    });
    await relay.waitForLog('a rebuild', (l) => /unroutable/.test(String(l.reason ?? '')), 15_000);
    await system.waitPublished(ids);
    expect((await fetch(`${relayUrl}/readyz`)).status).toBe(200);
    // One line per state change, not one per row per retry.
    expect(relay.logs.filter((l) => l.level === 'warn').length).toBeLessThanOrEqual(3);

    await system.start('worker');
    await system.waitForTerminal(ids, 30_000);
    await expectSucceededOnce(ids);
  }, 60_000);

  it('reopens the publish channel the broker closed over a deleted exchange', async () => {
    system = await startSystem();
    await system.start('api');
    const relay: RunningService = await system.start('relay');
    await system.start('worker');
    await onBroker((ch) => ch.deleteExchange(amqpNames(system.prefix).exchange));
    const deletedAt = Date.now();

    const ids = await Promise.all(Array.from({ length: 5 }, (_, i) => system.submit('echo', { i })));
    await system.waitForTerminal(ids, 30_000);
    console.log(`deleted exchange: 5 tasks succeeded ${Date.now() - deletedAt} ms after the delete`);
    await expectSucceededOnce(ids);
    await relay.waitForLog('a rebuild', (l) => /publish channel closed by the broker/.test(String(l.reason ?? '')));
  }, 60_000);

  it('counts and logs a reconciler pass that fails (tasks locked past the statement timeout), and says when it works again', async () => {
    system = await startSystem({ REPUBLISH_AFTER_MS: String(REPUBLISH_AFTER_MS), DB_STATEMENT_TIMEOUT_MS: '300' });
    const relay = await system.start('relay');
    const health = `http://127.0.0.1:${await relay.port()}`;
    const locker = new pg.Client({ connectionString: system.database.url });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE tasks');
      await relay.waitForLog('the failed pass', (l) => l.message === 'reconciler pass failed; will try again');
      expect(sample(await scrape(health), 'relay_reconciler_failures_total')).toBeGreaterThanOrEqual(1);
    } finally {
      await locker.query('ROLLBACK');
      await locker.end();
    }
    await relay.waitForLog('the pass that works', (l) => l.message === 'reconciler works again');
    expect(system.logs((l) => l.message === 'reconciler pass failed; will try again')).toHaveLength(1);
  });
});
