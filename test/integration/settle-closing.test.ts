import amqp from 'amqplib';
import { ackOrRequeue } from '../../services/worker/src/consumer';
import { deadLetter } from '../../services/worker/src/dead-letters';
import { createWorkerMetrics } from '../../services/worker/src/metrics';
import type { Db } from '@taskbox/shared';
import { amqpUrl, testPrefix } from '../helpers/amqp';
import { quietLogger } from '../helpers/db';
import { capturingLogger } from '../helpers/log';

/**
 * A delivery settled while its connection closes (a rebuild): amqplib refuses every send from the
 * moment the close starts, before the channel's close event says so. Neither the ack nor the
 * dead-letter path may throw then: the broker requeues the message and its redelivery is judged again.
 */
describe('settling a delivery on a connection that is closing', () => {
  it('logs the ack it could not send, and dead-letters without throwing', async () => {
    const queue = `${testPrefix()}closing`;
    const model = await amqp.connect(amqpUrl());
    const ch = await model.createConfirmChannel();
    await ch.assertQueue(queue, { autoDelete: false });
    const delivered = new Promise<amqp.ConsumeMessage>((resolve) => {
      void ch.consume(queue, (m) => m && resolve(m));
    });
    ch.sendToQueue(queue, Buffer.from('{}'));
    const msg = await delivered;
    const closing = model.close();
    const { logger, lines } = capturingLogger();
    expect(() => ackOrRequeue(() => true, ch, msg, 'ack', logger)).not.toThrow();
    expect(lines.map((l) => l.message)).toEqual([
      'delivery not settled: its connection is closing; the redelivery will be absorbed',
    ]);
    const route = { name: 'tasks', queue, deadExchange: `${queue}.dlx` } as Parameters<typeof deadLetter>[2];
    const metrics = createWorkerMetrics({} as Db, ['tasks']);
    await expect(
      deadLetter(ch, () => true, route, msg, { code: 'unparseable' }, { metrics, log: quietLogger }),
    ).resolves.toBeUndefined();
    await closing;
    const cleanup = await amqp.connect(amqpUrl());
    await (await cleanup.createChannel()).deleteQueue(queue);
    await cleanup.close();
  });
});
