import amqp from 'amqplib';
import { amqpNames, connectAmqp } from '@taskbox/shared';
import { createRelayMetrics } from '../../services/relay/src/metrics';
import { createPublisher } from '../../services/relay/src/publisher';
import { createRelayLoop, type RelayLoop } from '../../services/relay/src/relay-loop';
import { amqpUrl, deleteTopology, testPrefix, testTopology } from '../helpers/amqp';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { capturingLogger } from '../helpers/log';
import { startFaultProxy, type FaultProxy } from '../helpers/proxy';
import { waitFor } from '../helpers/wait';

describe('relay and a broker that nacks', () => {
  let database: TestDatabase;
  let prefix: string;
  let loop: RelayLoop | undefined;
  let connection: Awaited<ReturnType<typeof connectAmqp>> | undefined;
  let admin: amqp.ChannelModel | undefined;
  let proxy: FaultProxy | undefined;

  afterEach(async () => {
    await loop?.stop();
    await connection?.close();
    await admin?.close();
    await proxy?.close();
    [loop, connection, admin, proxy] = [undefined, undefined, undefined, undefined];
    await database.drop();
    await deleteTopology(prefix);
  });

  it('opens a new channel when the broker nacks every publish, and publishes once it takes them again', async () => {
    database = await createTestDatabase();
    prefix = testPrefix();
    const names = amqpNames(prefix);
    const publisher = createPublisher(testTopology(prefix), 5000, quietLogger);
    const { logger, lines } = capturingLogger();
    loop = createRelayLoop({
      db: database.db,
      publisher,
      logger,
      metrics: createRelayMetrics(database.db, []),
      batchSize: 50,
      pollMs: 100,
      leaseMs: 15_000,
    });
    let setups = 0;
    connection = await connectAmqp(amqpUrl(), quietLogger, async (model, rebuild) => {
      await publisher.setup(model, rebuild);
      setups++;
      loop?.wake();
    });
    await waitFor('publisher ready', () => publisher.ready());

    // A full queue that rejects publishes, bound next to the tasks queue: the broker nacks every message.
    admin = await amqp.connect(amqpUrl());
    const ch = await admin.createChannel();
    const full = `${prefix}full`;
    await ch.assertQueue(full, { arguments: { 'x-max-length': 0, 'x-overflow': 'reject-publish' } });
    await ch.bindQueue(full, names.exchange, '#');
    const taskId = await insertTaskFixture(database.db, { withOutbox: true });
    loop.start();

    await waitFor('not ready while the broker refuses every publish', () => !publisher.ready());
    await waitFor('a new channel after the nacks', () => setups >= 2);
    const row = () =>
      database.db.selectFrom('outbox').selectAll().where('task_id', '=', taskId).executeTakeFirstOrThrow();
    expect((await row()).published_at).toBeNull();
    // One warning for the outage, naming a row to follow.
    const warnings = lines.filter((l) => l.message === 'outbox rows not published; each is retried with backoff');
    expect(warnings).toEqual([
      expect.objectContaining({ taskId, messageId: (await row()).message_id, correlationId: `corr-${taskId}` }),
    ]);

    await ch.deleteQueue(full);
    await waitFor('the row published', async () => (await row()).published_at !== null, 30_000);
    expect(publisher.ready()).toBe(true);
  }, 60_000);

  it('answers not ready while the broker leaves every publish unconfirmed (a silent node), and publishes once it answers', async () => {
    database = await createTestDatabase();
    prefix = testPrefix();
    const broker = new URL(amqpUrl());
    proxy = await startFaultProxy(broker.hostname, Number(broker.port || 5672));
    const publisher = createPublisher(testTopology(prefix), 500, quietLogger);
    loop = createRelayLoop({
      db: database.db,
      publisher,
      logger: quietLogger,
      metrics: createRelayMetrics(database.db, []),
      batchSize: 50,
      pollMs: 100,
      leaseMs: 1500,
    });
    connection = await connectAmqp(proxy.url(amqpUrl()), quietLogger, async (model, rebuild) => {
      await publisher.setup(model, rebuild);
      loop?.wake();
    });
    await waitFor('publisher ready', () => publisher.ready());
    loop.start();

    proxy.blackhole();
    const taskId = await insertTaskFixture(database.db, { withOutbox: true });
    await waitFor('not ready while no confirm comes', () => !publisher.ready());
    await proxy.restore();
    const row = () =>
      database.db.selectFrom('outbox').selectAll().where('task_id', '=', taskId).executeTakeFirstOrThrow();
    await waitFor('the row published', async () => (await row()).published_at !== null, 40_000);
    await waitFor('ready again', () => publisher.ready());
  }, 60_000);
});
