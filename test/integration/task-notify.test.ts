import pg from 'pg';
import { sql } from 'kysely';
import { createTaskNotifier, TASK_CHANNEL, TASK_CHANGED_SET, type TaskNotifier } from '@taskbox/shared';
import { createWatcherRegistration } from '../../services/api/src/watcher-registration';
import { startTestApi } from '../helpers/api';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { insertTaskFixture } from '../helpers/factories';
import { openSse } from '../helpers/sse';
import { waitFor } from '../helpers/wait';

describe('the "task changed" NOTIFY goes out only while an api process has a request waiting', () => {
  let database: TestDatabase;
  let listener: pg.Client;
  let notifier: TaskNotifier;
  const heard: string[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
    listener = new pg.Client({ connectionString: database.url });
    await listener.connect();
    listener.on('notification', (n) => heard.push(n.payload ?? ''));
    await listener.query(`LISTEN ${TASK_CHANNEL}`);
    notifier = createTaskNotifier(database.pool, quietLogger);
  });

  afterAll(async () => {
    await notifier.stop();
    await listener.end();
    await database.drop();
  });

  /**
   * Announces `id`, then what the listener has heard once a marker sent after it arrives: NOTIFYs reach a
   * listener in commit order, so anything the notifier sent comes before the marker.
   */
  async function announce(id: string): Promise<string[]> {
    heard.length = 0;
    notifier.changed(id);
    await notifier.stop();
    const marker = `marker-${id}`;
    await sql`SELECT pg_notify(${TASK_CHANNEL}, ${marker})`.execute(database.db);
    const deadline = Date.now() + 5000;
    while (!heard.includes(marker) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return heard.filter((p) => p !== marker);
  }

  const rows = async () => (await database.db.selectFrom('task_watchers').selectAll().execute()).length;

  it('sends nothing with nobody waiting, sends while a request holds the registration, and stops once it lapses', async () => {
    const registration = createWatcherRegistration(database.db, quietLogger, { ttlMs: 600 });
    expect(await announce('nobody-waits')).toEqual([]);

    const release = await registration.hold();
    expect(await rows()).toBe(1);
    expect(await announce('one-waits')).toEqual(['one-waits']);
    // Held past its first time to live: the refresh keeps it fresh.
    await new Promise((r) => setTimeout(r, 1000));
    expect(await announce('still-waits')).toEqual(['still-waits']);

    release();
    await new Promise((r) => setTimeout(r, 800));
    expect(await announce('lapsed')).toEqual([]);

    await registration.stop();
    expect(await rows()).toBe(0);
  });

  it('a hold that cannot register fails, so the waiter is answered with an error instead of waiting unannounced', async () => {
    const registration = createWatcherRegistration(database.db, quietLogger);
    await sql`ALTER TABLE task_watchers RENAME TO task_watchers_away`.execute(database.db);
    try {
      await expect(registration.hold()).rejects.toThrow(/task_watchers/);
    } finally {
      await sql`ALTER TABLE task_watchers_away RENAME TO task_watchers`.execute(database.db);
    }
    const release = await registration.hold();
    expect(await rows()).toBe(1);
    release();
    await registration.stop();
  });

  it('a stopped process registers no more waiters, and a registration removes the rows of processes long gone', async () => {
    await sql`INSERT INTO task_watchers (instance, until) VALUES ('killed-yesterday', now() - interval '1 day'),
      ('lapsed-a-minute-ago', now() - interval '1 minute')`.execute(database.db);
    const registration = createWatcherRegistration(database.db, quietLogger);
    const release = await registration.hold();
    const instances = async () =>
      (await database.db.selectFrom('task_watchers').select('instance').execute()).map((r) => r.instance).sort();
    const mine = (await instances()).filter((i) => i.includes(`:${process.pid}:`));
    expect(mine).toHaveLength(1);
    expect(await instances()).toEqual(['lapsed-a-minute-ago', mine[0]].sort());

    await registration.stop();
    release();
    await expect(registration.hold()).rejects.toMatchObject({ status: 503 });
    expect(await instances()).toEqual(['lapsed-a-minute-ago']);
    await sql`DELETE FROM task_watchers`.execute(database.db);
  });
});

describe('an api registers its waiters before their first read', () => {
  it("wakes a long poll and a list stream with another process's NOTIFY, on a database where nobody waited before", async () => {
    // No resync: only a NOTIFY can wake them, and the worker's notifier sends one only to registered waiters.
    const api = await startTestApi({}, { resyncMs: null });
    const worker = createTaskNotifier(api.database.pool, quietLogger);
    const base = await api.listen();
    const stream = await openSse(`${base}/tasks/events?current=false`);
    try {
      await stream.waitFor('ready', (events) => events[0]?.event === 'ready');
      const id = await insertTaskFixture(api.database.db);
      // What the worker does: commit the change, then announce it.
      const change = async (status: string) => {
        await sql`UPDATE tasks SET status = ${status}, ${TASK_CHANGED_SET} WHERE id = ${id}`.execute(api.database.db);
        worker.changed(id);
      };
      // The stream alone waits: its own registration must carry the NOTIFY.
      await change('processing');
      await stream.waitFor(
        'the change on the list stream',
        (events) => events.some((e) => e.event === 'task' && (e.data as { status: string }).status === 'processing'),
        5000,
      );
      const reads = api.taskReads();
      const polled = fetch(`${base}/tasks/${id}?wait=20`).then((r) => r.json() as Promise<{ status: string }>);
      await waitFor('the long poll waiting', async () => api.taskReads() > reads);
      await change('succeeded');
      const started = Date.now();
      expect((await polled).status).toBe('succeeded');
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      stream.close();
      await worker.stop();
      await api.close();
    }
  });
});
