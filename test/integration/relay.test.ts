import amqp from 'amqplib';
import { sql } from 'kysely';
import {
  amqpNames,
  connectAmqp,
  createOutboxNotifier,
  createPool,
  insertOutbox,
  outboxMessage,
  sleep,
} from '@taskbox/shared';
import { createListener } from '../../services/relay/src/listener';
import { claimBatch, markPublished, setRelaySession } from '../../services/relay/src/outbox-sql';
import { createRelayMetrics } from '../../services/relay/src/metrics';
import { createPublisher, type Publisher } from '../../services/relay/src/publisher';
import { createRelayLoop, type RelayLoop } from '../../services/relay/src/relay-loop';
import { amqpUrl, deleteTopology, drainQueue, testPrefix, testTopology } from '../helpers/amqp';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { waitFor } from '../helpers/wait';

describe('relay', () => {
  let database: TestDatabase;
  let prefix: string;
  let connections: Awaited<ReturnType<typeof connectAmqp>>[] = [];
  let loops: RelayLoop[] = [];

  beforeEach(async () => {
    database = await createTestDatabase();
    prefix = testPrefix();
  });

  afterEach(async () => {
    await Promise.all(loops.map((l) => l.stop()));
    await Promise.all(connections.map((c) => c.close()));
    loops = [];
    connections = [];
    await database.drop();
    await deleteTopology(prefix);
  });

  function createLoop(publisher: Publisher, options: { pollMs?: number; batchSize?: number }): RelayLoop {
    const loop = createRelayLoop({
      db: database.db,
      publisher,
      logger: quietLogger,
      metrics: createRelayMetrics(database.db, []),
      batchSize: options.batchSize ?? 50,
      pollMs: options.pollMs ?? 100,
      leaseMs: 15_000,
    });
    loops.push(loop);
    return loop;
  }

  async function startRelay(
    options: { pollMs?: number; batchSize?: number; publishDelayMs?: number } = {},
  ): Promise<{ loop: RelayLoop; publisher: Publisher }> {
    const publisher = createPublisher(testTopology(prefix), 5000, quietLogger);
    // A broker slow to confirm, by delaying each batch on its way out.
    const slowed: Publisher = {
      ...publisher,
      publishBatch: async (rows) => {
        await sleep(options.publishDelayMs ?? 0);
        return publisher.publishBatch(rows);
      },
    };
    const loop = createLoop(slowed, options);
    const connection = await connectAmqp(amqpUrl(), quietLogger, async (model, rebuild) => {
      await publisher.setup(model, rebuild);
      loop.wake();
    });
    connections.push(connection);
    await waitFor('publisher ready', () => publisher.ready());
    loop.start();
    return { loop, publisher };
  }

  async function seed(n: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) ids.push(await insertTaskFixture(database.db, { withOutbox: true }));
    return ids;
  }

  const unpublished = async () =>
    Number(
      (
        await database.db
          .selectFrom('outbox')
          .select(database.db.fn.countAll<string>().as('n'))
          .where('published_at', 'is', null)
          .executeTakeFirstOrThrow()
      ).n,
    );

  it('publishes committed rows as persistent messages and marks them only after the confirms', async () => {
    const ids = await seed(120);
    await startRelay();
    await waitFor('all rows published', async () => (await unpublished()) === 0);

    const messages = await drainQueue(amqpNames(prefix).queue);
    expect(messages).toHaveLength(120);
    const rows = await database.db.selectFrom('outbox').selectAll().execute();
    const first = messages[0]!;
    const row = rows.find((r) => r.message_id === first.properties.messageId)!;
    expect(first.properties).toMatchObject({
      messageId: row.message_id,
      correlationId: `corr-${row.task_id}`,
      type: 'echo',
      contentType: 'application/json',
      deliveryMode: 2,
      headers: { 'x-task-id': row.task_id, 'x-attempt': 1 },
    });
    expect(JSON.parse(first.content.toString())).toEqual({ taskId: row.task_id, type: 'echo', attempt: 1 });
    expect(new Set(messages.map((m) => JSON.parse(m.content.toString()).taskId))).toEqual(new Set(ids));
    expect(rows.every((r) => r.published_at && r.publish_attempts === 1 && r.locked_until === null)).toBe(true);
  });

  it('wakes on NOTIFY instead of waiting for the next poll', async () => {
    const { loop } = await startRelay({ pollMs: 60_000 });
    const listener = createListener(database.url, quietLogger, () => loop.wake());
    listener.start();
    try {
      await waitFor('listener connected', () => listener.listening());
      const id = await insertTaskFixture(database.db);
      await insertOutbox(database.db, [outboxMessage({ id, type: 'echo' }, 1, { correlationId: null })]);
      const notifier = createOutboxNotifier(database.pool, quietLogger);
      notifier.poke();
      await notifier.stop();
      await waitFor('row published long before the 60 s poll', async () => (await unpublished()) === 0, 5000);
    } finally {
      await listener.stop();
    }
  });

  it('publishes a row that fell due while a drain was publishing, without waiting for the poll', async () => {
    const { loop } = await startRelay({ pollMs: 60_000, publishDelayMs: 800 });
    await seed(1);
    const later = await insertTaskFixture(database.db);
    const message = outboxMessage({ id: later, type: 'echo' }, 1, { correlationId: null });
    // Due 300 ms from now: after the claim of the first row, before its publish is confirmed.
    await insertOutbox(database.db, [message], 300);
    loop.wake();
    await waitFor('both rows published long before the 60 s poll', async () => (await unpublished()) === 0, 5000);
  });

  it("marks a row published at its claim's time, so a worker's start never precedes it in the timeline", async () => {
    const [taskId] = await seed(1);
    const [row] = await claimBatch(database.db, 10, 15_000);
    // The broker's confirm and a worker's start both come before the mark.
    await sleep(200);
    const { rows: started } = await sql<{ at: Date }>`SELECT clock_timestamp() AS at`.execute(database.db);
    await markPublished(database.db, [row!.id], row!.claimed_at);

    const published = await database.db
      .selectFrom('outbox')
      .select(sql<boolean>`published_at = ${row!.claimed_at}::timestamptz`.as('atClaim'))
      .select('published_at')
      .where('task_id', '=', taskId!)
      .executeTakeFirstOrThrow();
    expect(published.atClaim).toBe(true);
    expect(published.published_at!.getTime()).toBeLessThan(started[0]!.at.getTime());
  });

  it('leases claimed rows in place, without a new index entry per row (HOT updates)', async () => {
    await seed(200);
    const { claimed, hot } = await database.db.transaction().execute(async (trx) => {
      const rows = await claimBatch(trx, 200, 15_000);
      const stats = await sql<{ hot: string }>`
        SELECT pg_stat_get_xact_tuples_hot_updated('outbox'::regclass) AS hot`.execute(trx);
      return { claimed: rows.length, hot: Number(stats.rows[0]!.hot) };
    });
    expect(claimed).toBe(200);
    expect(hot).toBe(200);
  });

  it("keeps bitmap scans off the claim and does not wait for the WAL flush on the relay's connections", async () => {
    const pool = createPool(database.url, quietLogger, {
      max: 1,
      statementTimeoutMs: 10_000,
      onConnect: setRelaySession,
    });
    try {
      const { rows } = await pool.query<{ bitmap: string; sync: string }>(
        "SELECT current_setting('enable_bitmapscan') AS bitmap, current_setting('synchronous_commit') AS sync",
      );
      expect(rows).toEqual([{ bitmap: 'off', sync: 'off' }]);
    } finally {
      await pool.end();
    }
  });

  it('does not mark a row published when the broker returns it as unroutable', async () => {
    const names = amqpNames(prefix);
    // Polls every 200 ms: a released row is retried after its backoff by the next poll.
    await startRelay({ pollMs: 200 });
    const admin = await amqp.connect(amqpUrl());
    const ch = await admin.createChannel();
    await ch.unbindQueue(names.queue, names.exchange, 'echo');
    await seed(1);
    await waitFor('the failure recorded', async () => {
      const row = await database.db.selectFrom('outbox').selectAll().executeTakeFirstOrThrow();
      return row.last_error ? row : undefined;
    });
    const row = await database.db.selectFrom('outbox').selectAll().executeTakeFirstOrThrow();
    expect(row.published_at).toBeNull();
    expect(row.last_error).toMatch(/unroutable/);
    expect(row.locked_until).toBeNull();
    await ch.bindQueue(names.queue, names.exchange, 'echo');
    await admin.close();
    await waitFor('published once routable again', async () => (await unpublished()) === 0, 15_000);
  });

  it('lets three relays share one outbox without publishing any row twice', async () => {
    await seed(600);
    await Promise.all([startRelay({ batchSize: 25 }), startRelay({ batchSize: 25 }), startRelay({ batchSize: 25 })]);
    await waitFor('all rows published', async () => (await unpublished()) === 0, 30_000);
    const messages = await drainQueue(amqpNames(prefix).queue);
    expect(messages).toHaveLength(600);
    expect(new Set(messages.map((m) => m.properties.messageId)).size).toBe(600);
  });

  it('leaves rows untouched while RabbitMQ is unreachable', async () => {
    await seed(3);
    // Never set up, so never connected: the loop looks at it on every poll and must not claim.
    const publisher = createPublisher(testTopology(prefix), 1000, quietLogger);
    let looked = 0;
    const loop = createLoop(
      {
        ...publisher,
        connected: () => {
          looked++;
          return publisher.connected();
        },
      },
      { batchSize: 10, pollMs: 50 },
    );
    loop.start();
    await waitFor('the loop to look at the broker five times', () => looked >= 5);
    const rows = await database.db.selectFrom('outbox').select(['publish_attempts', 'published_at']).execute();
    expect(rows).toEqual(Array(3).fill({ publish_attempts: 0, published_at: null }));
  });
});
