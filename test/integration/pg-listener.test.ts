import { sql } from 'kysely';
import { createPgListener } from '@taskbox/shared';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { capturingLogger } from '../helpers/log';
import { startFaultProxy, type FaultProxy } from '../helpers/proxy';
import { waitFor } from '../helpers/wait';

describe('the LISTEN connection (createPgListener)', () => {
  let database: TestDatabase;
  let proxy: FaultProxy;

  beforeAll(async () => {
    database = await createTestDatabase();
    const target = new URL(database.url);
    proxy = await startFaultProxy(target.hostname, Number(target.port || 5432));
  });
  afterAll(async () => {
    await proxy.close();
    await database.drop();
  });

  it('gives up a connection that went silent at its heartbeat, says so once, and listens again once the network heals', async () => {
    const { logger, lines } = capturingLogger();
    const wakes: string[] = [];
    const listener = createPgListener({
      url: proxy.url(database.url),
      channel: 'listener_test',
      logger,
      onNotify: (payload) => wakes.push(payload),
      onConnect: () => undefined,
    });
    await listener.start();
    try {
      await waitFor('listening', () => listener.listening());
      // A half-open connection: no error reaches the client, only the heartbeat's unanswered query.
      proxy.blackhole();
      const lost = 'listener lost its connection; polling until it is back';
      await waitFor('the heartbeat to give up', () => lines.some((l) => l.message === lost), 25_000);
      expect(lines.find((l) => l.message === lost)).toMatchObject({ error: expect.stringMatching(/^heartbeat/) });
      await proxy.restore();
      await waitFor('the listener back', () => lines.some((l) => l.message === 'listener reconnected'), 25_000);
      await sql`SELECT pg_notify('listener_test', 'after the heal')`.execute(database.db);
      await waitFor('the NOTIFY', () => wakes.includes('after the heal'));
      expect(lines.filter((l) => l.message === lost)).toHaveLength(1);
    } finally {
      await listener.stop();
    }
  });
});
