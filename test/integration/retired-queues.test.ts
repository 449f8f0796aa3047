import amqp, { type ChannelModel } from 'amqplib';
import { amqpTopology, assertTopology, checkRetiredQueues, type TypeRoute } from '@taskbox/shared';
import { amqpUrl, deleteTopology, testPrefix } from '../helpers/amqp';
import { waitFor } from '../helpers/wait';

// `report` on its own queue, as taskTypeList has it, and after it moved to the default queue.
const BEFORE: TypeRoute[] = [
  { name: 'echo', queue: 'tasks' },
  { name: 'report', queue: 'reports' },
];
const AFTER: TypeRoute[] = [
  { name: 'echo', queue: 'tasks' },
  { name: 'report', queue: 'tasks' },
];

describe('a queue every type moved off (retiredQueues)', () => {
  const prefix = testPrefix();
  let connection: ChannelModel;

  beforeAll(async () => {
    connection = await amqp.connect(amqpUrl());
  });

  afterAll(async () => {
    await connection.close();
    // testTopology's queues include `reports`, so this deletes it too.
    await deleteTopology(prefix);
  });

  it('is unbound from the moved type, so its messages reach only the new queue', async () => {
    const ch = await connection.createChannel();
    await assertTopology(ch, amqpTopology(prefix, BEFORE), connection);
    const after = amqpTopology(prefix, AFTER, ['reports']);
    await assertTopology(ch, after, connection);
    const [tasks] = after.queues;
    const reports = after.retired[0]!;
    ch.publish(after.exchange, 'report', Buffer.from('{}'));
    await waitFor('the report in the tasks queue', async () => (await ch.checkQueue(tasks!.queue)).messageCount === 1);
    expect((await ch.checkQueue(reports.queue)).messageCount).toBe(0);

    // Left holding messages from before the move: the doctor warns, naming the queue.
    ch.sendToQueue(reports.queue, Buffer.from('{}'));
    await waitFor('the old message in reports', async () => (await ch.checkQueue(reports.queue)).messageCount === 1);
    const check = await checkRetiredQueues(connection, after);
    expect(check.status).toBe('warn');
    expect(check.detail).toContain(`1 in ${reports.queue}`);
    await ch.purgeQueue(reports.queue);
    expect(await checkRetiredQueues(connection, after)).toMatchObject({ status: 'ok' });
    await ch.close();
  });

  it('does not break the declare when the retired queue is already deleted', async () => {
    const ch = await connection.createChannel();
    const gone = amqpTopology(prefix, AFTER, ['gone']);
    await assertTopology(ch, gone, connection);
    // The caller's channel survived the 404 on the missing queue.
    await ch.checkQueue(gone.queues[0]!.queue);
    expect(await checkRetiredQueues(connection, gone)).toMatchObject({ status: 'ok', detail: 'deleted: gone' });
    await ch.close();
  });
});
