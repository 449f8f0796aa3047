import { execFile } from 'node:child_process';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import { Writable } from 'node:stream';
import { sql } from 'kysely';
import winston from 'winston';
import {
  amqpNames,
  amqpTopology,
  assertTopology,
  closeBroker,
  connectBroker,
  redriveDeadLetters,
} from '@taskbox/shared';
import { taskTypeList } from '@taskbox/tasks';
import { amqpUrl, testTopology } from '../helpers/amqp';
import { insertTaskFixture } from '../helpers/factories';
import { startFaultProxy } from '../helpers/proxy';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

const main = path.resolve(__dirname, '../../tools/dist/redrive-main.js');

describe('npm run redrive', () => {
  let system: System;
  let connection: amqp.ChannelModel;
  let channel: amqp.ConfirmChannel;

  beforeEach(async () => {
    system = await startSystem();
    connection = await amqp.connect(amqpUrl());
    channel = await connection.createConfirmChannel();
    await assertTopology(channel, testTopology(system.prefix));
  });
  afterEach(async () => {
    await connection.close();
    await system.stop();
  });

  /** Runs the built tool as `npm run redrive -- <args>` does; answers its exit code and output. */
  function redrive(...args: string[]): Promise<{ code: number; stdout: string }> {
    return redriveLogging('warn', ...args);
  }

  function redriveLogging(level: string, ...args: string[]): Promise<{ code: number; stdout: string }> {
    return new Promise((resolve) => {
      const env = { PATH: process.env.PATH ?? '', ...system.env, LOG_LEVEL: level };
      execFile(process.execPath, [main, ...args], { env }, (err, stdout) => {
        resolve({ code: typeof err?.code === 'number' ? err.code : 0, stdout });
      });
    });
  }

  /** A message as the broker dead-letters it, with the id of the outbox row it came from. */
  async function deadLetter(body: unknown, messageId: string = randomUUID()): Promise<string> {
    const content = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    channel.publish(amqpNames(system.prefix).deadExchange, 'echo', content, { messageId, persistent: true });
    await channel.waitForConfirms();
    return messageId;
  }

  const deadCount = async () => (await channel.checkQueue(amqpNames(system.prefix).deadQueue)).messageCount;
  const outboxOf = (taskId: string) =>
    system.database.db.selectFrom('outbox').select(['message_id', 'payload']).where('task_id', '=', taskId).execute();

  async function deadOfEveryKind() {
    const pending = await insertTaskFixture(system.database.db, { status: 'pending' });
    const processing = await insertTaskFixture(system.database.db, { status: 'processing', attempts: 1 });
    const succeeded = await insertTaskFixture(system.database.db, { status: 'succeeded', attempts: 1 });
    const pendingMessage = await deadLetter({ taskId: pending, type: 'echo', attempt: 1 });
    await deadLetter({ taskId: processing, type: 'echo', attempt: 1 });
    await deadLetter({ taskId: succeeded, type: 'echo', attempt: 1 });
    await deadLetter({ taskId: randomUUID(), type: 'echo', attempt: 1 });
    await deadLetter('not json');
    return { pending, processing, succeeded, pendingMessage };
  }

  it('republishes the tasks still pending or processing, drops the rest with a reason, and empties the queue', async () => {
    const { pending, processing, succeeded } = await deadOfEveryKind();
    const run = await redrive();
    expect(run).toMatchObject({ code: 0 });
    expect(run.stdout).toMatch(/re-drove 2; dropped /);
    expect(run.stdout).toMatch(/1 task succeeded/);
    expect(run.stdout).toMatch(/1 unknown task/);
    expect(run.stdout).toMatch(/1 unparseable/);
    expect(await deadCount()).toBe(0);
    expect((await outboxOf(pending)).map((r) => r.payload)).toEqual([{ taskId: pending, type: 'echo', attempt: 1 }]);
    expect((await outboxOf(processing)).map((r) => r.payload)).toEqual([
      { taskId: processing, type: 'echo', attempt: 2 },
    ]);
    expect(await outboxOf(succeeded)).toEqual([]);

    // The re-driven task runs to its end through the usual chain.
    await system.start('relay');
    await system.start('worker');
    await system.waitForTerminal([pending]);
    expect(await system.status(pending)).toBe('succeeded');
  });

  it('logs each message it drops with its task, message and correlation ids and why it was dead-lettered', async () => {
    const taskId = await insertTaskFixture(system.database.db, { status: 'succeeded', attempts: 1 });
    const content = Buffer.from(JSON.stringify({ taskId, type: 'echo', attempt: 1 }));
    const headers = { 'x-dead-letter-reason': 'unhandled: the start is broken' };
    channel.publish(amqpNames(system.prefix).deadExchange, 'echo', content, {
      messageId: 'm-1',
      correlationId: 'c-1',
      headers,
    });
    await channel.waitForConfirms();
    const run = await redriveLogging('info');
    const lines = run.stdout
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines.find((l) => l.message === 'dead letter dropped')).toMatchObject({
      taskId,
      messageId: 'm-1',
      correlationId: 'c-1',
      deadLetterReason: 'unhandled: the start is broken',
      reason: 'task succeeded',
    });
  });

  it('with --dry-run, reports the same and writes nothing, leaving every message in the queue', async () => {
    const { pending } = await deadOfEveryKind();
    const run = await redrive('--dry-run');
    expect(run.stdout).toMatch(/would re-drive 2; dropped /);
    expect(await deadCount()).toBe(5);
    expect(await outboxOf(pending)).toEqual([]);
  });

  it('drops the dead letter of a task whose next attempt already waits in the outbox, so a schedule or a backoff is kept', async () => {
    const scheduled = await insertTaskFixture(system.database.db, { status: 'pending', withOutbox: true });
    await system.database.db
      .updateTable('outbox')
      .set({ available_at: sql<Date>`now() + interval '1 hour'` })
      .where('task_id', '=', scheduled)
      .execute();
    await deadLetter({ taskId: scheduled, type: 'echo', attempt: 1 });
    expect((await redrive()).stdout).toMatch(/re-drove 0; dropped 1 task already queued/);
    expect(await outboxOf(scheduled)).toHaveLength(1);
    expect(await deadCount()).toBe(0);
  });

  it('re-drives a message it meets again (its ack was lost) without writing it twice', async () => {
    const pending = await insertTaskFixture(system.database.db, { status: 'pending' });
    const messageId = await deadLetter({ taskId: pending, type: 'echo', attempt: 1 });
    await redrive();
    await deadLetter({ taskId: pending, type: 'echo', attempt: 1 }, messageId);
    await redrive();
    expect(await outboxOf(pending)).toHaveLength(1);
    expect(await deadCount()).toBe(0);
  });

  it("reads every queue's dead letters, with --limit counting across them", async () => {
    const reports = amqpNames(system.prefix, 'reports');
    const report = await insertTaskFixture(system.database.db, { type: 'report', status: 'pending' });
    const echo = await insertTaskFixture(system.database.db, { status: 'pending' });
    const content = Buffer.from(JSON.stringify({ taskId: report, type: 'report', attempt: 1 }));
    channel.publish(reports.deadExchange, 'report', content, { messageId: randomUUID(), persistent: true });
    await deadLetter({ taskId: echo, type: 'echo', attempt: 1 });
    await deadLetter({ taskId: randomUUID(), type: 'echo', attempt: 1 });

    expect((await redrive('--limit', '2')).stdout).toMatch(/re-drove 1; dropped 1 unknown task/);
    expect((await redrive()).stdout).toMatch(/re-drove 1; dropped none/);
    expect((await channel.checkQueue(reports.deadQueue)).messageCount).toBe(0);
    expect(await deadCount()).toBe(0);
    expect((await outboxOf(report)).map((r) => r.payload)).toEqual([{ taskId: report, type: 'report', attempt: 1 }]);
    expect(await outboxOf(echo)).toHaveLength(1);
  });

  it('stops within seconds when RabbitMQ goes silent mid-way, saying what it did until then, the rest left queued', async () => {
    const ids = await Promise.all([1, 2, 3].map(() => insertTaskFixture(system.database.db, { status: 'pending' })));
    for (const taskId of ids) await deadLetter({ taskId, type: 'echo', attempt: 1 });
    const target = new URL(amqpUrl());
    const proxy = await startFaultProxy(target.hostname, Number(target.port || 5672));
    const broker = await connectBroker([proxy.url(amqpUrl())]);
    // The broker vanishes (a half-open connection) once the first message is re-driven.
    const logger = winston.createLogger({
      transports: [
        new winston.transports.Stream({
          stream: new Writable({
            write(chunk: Buffer, _encoding, done) {
              if (chunk.toString().includes('dead letter re-driven')) proxy.blackhole();
              done();
            },
          }),
        }),
      ],
    });
    try {
      const topology = amqpTopology(system.prefix, taskTypeList);
      const run = redriveDeadLetters(system.database.db, broker.model!, topology, { dryRun: false, limit: 10 }, logger);
      await expect(run).rejects.toThrow(
        /^RabbitMQ stopped the re-drive \(RabbitMQ: no answer within 5000 ms\); until then it re-drove 1; dropped none$/,
      );
      await closeBroker(broker.model);
      await proxy.restore();
      // The one re-driven has its outbox row; the others were never taken and wait in the queue again.
      await waitFor('the unacked messages back', async () => (await deadCount()) >= 2);
      const rows = await Promise.all(ids.map(outboxOf));
      expect(rows.filter((r) => r.length > 0)).toHaveLength(1);
    } finally {
      await proxy.close();
    }
  }, 30_000);

  it('looks at no more than --limit messages, and refuses a limit that is not a positive integer', async () => {
    await deadOfEveryKind();
    expect((await redrive('--limit', '2')).stdout).toMatch(/re-drove 2; dropped none/);
    expect(await deadCount()).toBe(3);
    expect((await redrive('--limit', 'many')).code).toBe(2);
  });
});
