import amqp from 'amqplib';
import { amqpNames, assertTopology, type TaskStatus } from '@taskbox/shared';
import { amqpUrl, deleteTopology, testPrefix, testTopology } from '../helpers/amqp';
import { insertTaskFixture } from '../helpers/factories';
import { startService } from '../helpers/services';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

/** Long enough that no report of the isolation test can finish before it cancels them. */
const LONG_REPORT = { title: 'Quarterly roadmap', sections: ['goals', 'risks', 'plan'], msPerSection: 60_000 };

describe('queues per task type', () => {
  let system: System;
  let api: string;

  beforeAll(async () => {
    system = await startSystem();
    api = `http://127.0.0.1:${await (await system.start('api')).port()}`;
    await system.start('relay');
    await system.start('worker', { WORKER_QUEUES: 'reports:2,default:20' });
  });

  afterAll(async () => {
    await system.stop();
  });

  const tasksById = async (ids: string[]) =>
    system.database.db.selectFrom('tasks').selectAll().where('id', 'in', ids).execute();
  const countByStatus = async (ids: string[]): Promise<Partial<Record<TaskStatus, number>>> => {
    const counts: Partial<Record<TaskStatus, number>> = {};
    for (const t of await tasksById(ids)) counts[t.status] = (counts[t.status] ?? 0) + 1;
    return counts;
  };

  it('runs a report on its own queue: steps and progress, then its size and download URL', async () => {
    const id = await system.submit('report', { title: 'Weekly', sections: ['sales', 'costs'], msPerSection: 20 });
    await system.waitForTerminal([id], 20_000);
    const [task] = await tasksById([id]);
    expect(task).toMatchObject({ status: 'succeeded', current_step: 'rendering', progress: 1 });
    expect(task?.result).toEqual({
      title: 'Weekly',
      sections: 2,
      bytes: 2 * 4096 + 'Weekly'.length,
      url: `/reports/${id}.pdf`,
    });
    expect(task?.external_job_id).toMatch(/^worker-/);
    const deliveries = system.logs((l) => l.message === 'consuming');
    expect(deliveries[0]?.queues).toEqual([
      expect.objectContaining({ queue: `${system.prefix}reports`, prefetch: 2 }),
      expect.objectContaining({ queue: `${system.prefix}tasks`, prefetch: 20 }),
    ]);
  });

  it('finishes 200 echoes while 10 long reports hold every slot of their queue', async () => {
    const reports = await Promise.all(Array.from({ length: 10 }, () => system.submit('report', LONG_REPORT)));
    // Both report slots taken before the echoes arrive: the worst case for a shared queue.
    await waitFor('two reports running', async () => (await countByStatus(reports)).processing === 2);
    const echoes = await Promise.all(Array.from({ length: 200 }, (_, i) => system.submit('echo', { i })));
    await system.waitForTerminal(echoes, 60_000);

    expect(await countByStatus(echoes)).toEqual({ succeeded: 200 });
    // Still running, and no more than the queue's prefetch at once: the reports never took an echo's slot.
    expect(await countByStatus(reports)).toEqual({ processing: 2, pending: 8 });

    for (const id of reports) {
      const res = await fetch(`${api}/tasks/${id}/cancel`, { method: 'POST' });
      expect(res.status).toBeLessThan(300);
    }
    await system.waitForTerminal(reports, 30_000);
    expect(await countByStatus(reports)).toEqual({ cancelled: 10 });
  }, 120_000);

  it('keeps a message of a type no queue is bound to in the outbox, without rebuilding the channel', async () => {
    const id = await insertTaskFixture(system.database.db, { type: 'pdf', withOutbox: true });
    await waitFor('the unroutable publish recorded', async () => {
      const row = await system.database.db
        .selectFrom('outbox')
        .selectAll()
        .where('task_id', '=', id)
        .executeTakeFirst();
      return row?.last_error?.includes('unroutable') ? row : undefined;
    });
    await waitFor('one warning naming the type', () => system.logs((l) => l.type === 'pdf').length === 1);
    expect(system.logs((l) => /channel broken|returned as unroutable: a queue/.test(l.message ?? ''))).toEqual([]);

    // A newer service declares the binding: the message goes out, and this worker, which has no
    // handler for the type, fails the task and dead-letters the message.
    const connection = await amqp.connect(amqpUrl());
    try {
      const ch = await connection.createChannel();
      const names = amqpNames(system.prefix);
      await ch.bindQueue(names.queue, names.exchange, 'pdf');
      await system.waitForTerminal([id], 30_000);
      const [task] = await tasksById([id]);
      expect(task?.status).toBe('failed');
      expect(task?.error).toMatchObject({ message: 'no handler for task type "pdf"' });
      await waitFor('the message dead-lettered', async () => (await ch.checkQueue(names.deadQueue)).messageCount === 1);
    } finally {
      await connection.close();
    }
  }, 60_000);
});

describe('the topology', () => {
  const prefix = testPrefix();

  afterAll(async () => {
    await deleteTopology(prefix);
  });

  it("drops a deployment's old `#` binding and a moved type's binding, so each message reaches one queue", async () => {
    const connection = await amqp.connect(amqpUrl());
    try {
      const ch = await connection.createChannel();
      const topology = testTopology(prefix);
      await assertTopology(ch, topology);
      const [tasks, reports] = topology.queues;
      // As a single-queue deployment left it, plus `report` once bound to the default queue.
      await ch.bindQueue(tasks!.queue, topology.exchange, '#');
      await ch.bindQueue(tasks!.queue, topology.exchange, 'report');
      await assertTopology(ch, topology);
      for (const type of ['echo', 'report', 'sleep']) ch.publish(topology.exchange, type, Buffer.from('{}'));
      await waitFor('three messages routed', async () => {
        const counts = await Promise.all([ch.checkQueue(tasks!.queue), ch.checkQueue(reports!.queue)]);
        return counts[0].messageCount + counts[1].messageCount >= 3;
      });
      expect((await ch.checkQueue(tasks!.queue)).messageCount).toBe(2);
      expect((await ch.checkQueue(reports!.queue)).messageCount).toBe(1);
    } finally {
      await connection.close();
    }
  });

  it('stops a worker at start when WORKER_QUEUES names a queue no type uses', async () => {
    const worker = startService('worker', { AMQP_URL: amqpUrl(), AMQP_PREFIX: prefix, WORKER_QUEUES: 'pdf:1' });
    await waitFor('the worker to exit', () => worker.child.exitCode !== null);
    expect(worker.child.exitCode).toBe(1);
    expect(worker.text.join('\n')).toMatch(/WORKER_QUEUES: no task type uses queue "pdf" \(queues: tasks, reports\)/);
  });
});
