import { CamelCasePlugin, sql } from 'kysely';
import { enqueueTask, InvalidTaskError } from '@taskbox/tasks';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

/**
 * enqueueTask in another service's transaction, against the running relay and worker: the caller's
 * own row and the task commit together, or neither exists and nothing is published.
 */
describe('enqueueTask in the caller’s transaction', () => {
  let system: System;

  beforeAll(async () => {
    system = await startSystem();
    await Promise.all([system.start('relay'), system.start('worker')]);
    await sql`CREATE TABLE invoices (id serial PRIMARY KEY, total int NOT NULL)`.execute(system.database.db);
  });
  afterAll(async () => {
    await system.stop();
  });

  const db = () => system.database.db;
  const invoiceCount = async () =>
    Number((await sql<{ n: string }>`SELECT count(*) AS n FROM invoices`.execute(db())).rows[0]?.n);
  const taskCount = async () =>
    Number((await db().selectFrom('tasks').select(db().fn.countAll<string>().as('n')).executeTakeFirstOrThrow()).n);
  const outboxCount = async () =>
    Number((await db().selectFrom('outbox').select(db().fn.countAll<string>().as('n')).executeTakeFirstOrThrow()).n);
  const rolledBack = new Error('the caller changed its mind');

  it('commits the task with the caller’s rows in a Kysely transaction, and the task runs to succeeded', async () => {
    const { task, created } = await db()
      .transaction()
      .execute(async (tx) => {
        await sql`INSERT INTO invoices (total) VALUES (42)`.execute(tx);
        return enqueueTask(tx, { type: 'echo', payload: { invoice: 42 }, owner: 'billing', correlationId: 'inv-42' });
      });
    expect(created).toBe(true);
    expect(task).toMatchObject({
      status: 'pending',
      owner: 'billing',
      correlation_id: 'inv-42',
      timeout_ms: 3_600_000,
    });
    await system.waitForTerminal([task.id]);
    expect(
      await db().selectFrom('tasks').selectAll().where('id', '=', task.id).executeTakeFirstOrThrow(),
    ).toMatchObject({
      status: 'succeeded',
      result: { invoice: 42 },
    });
  });

  it('leaves no task, no outbox row and no message when the Kysely transaction rolls back', async () => {
    const before = { invoices: await invoiceCount(), tasks: await taskCount(), outbox: await outboxCount() };
    let taskId = '';
    await expect(
      db()
        .transaction()
        .execute(async (tx) => {
          await sql`INSERT INTO invoices (total) VALUES (7)`.execute(tx);
          taskId = (await enqueueTask(tx, { type: 'echo', payload: { invoice: 7 } })).task.id;
          throw rolledBack;
        }),
    ).rejects.toBe(rolledBack);
    expect(taskId).not.toBe('');
    expect({ invoices: await invoiceCount(), tasks: await taskCount(), outbox: await outboxCount() }).toEqual(before);
    // A later task goes through the same relay and worker; had the rolled-back one been published, the
    // worker would have dead-lettered it as an unknown task, before this one.
    const { task } = await db()
      .transaction()
      .execute((tx) => enqueueTask(tx, { type: 'echo', payload: { after: 7 } }));
    await system.waitForTerminal([task.id]);
    expect(system.logs((l) => l.taskId === taskId)).toEqual([]);
  });

  it('does the same with a raw pg client between BEGIN and COMMIT or ROLLBACK', async () => {
    const client = await system.database.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('INSERT INTO invoices (total) VALUES (1)');
      const dropped = await enqueueTask(client, { type: 'sleep', payload: { ms: 1 }, timeoutMs: 5000 });
      await client.query('ROLLBACK');
      expect(await db().selectFrom('tasks').select('id').where('id', '=', dropped.task.id).execute()).toEqual([]);
      expect(await db().selectFrom('outbox').select('id').where('task_id', '=', dropped.task.id).execute()).toEqual([]);

      await client.query('BEGIN');
      await client.query('INSERT INTO invoices (total) VALUES (2)');
      const kept = await enqueueTask(client, { type: 'sleep', payload: { ms: 1 }, timeoutMs: 5000, maxAttempts: 1 });
      await client.query('COMMIT');
      expect(kept.task).toMatchObject({ type: 'sleep', max_attempts: 1, timeout_ms: 5000 });
      await system.waitForTerminal([kept.task.id]);
      expect(await system.status(kept.task.id)).toBe('succeeded');
    } finally {
      client.release();
    }
  });

  it('refuses an executor outside a transaction, and writes nothing', async () => {
    const before = await taskCount();
    await expect(enqueueTask(db(), { type: 'echo' })).rejects.toThrow(/needs a transaction/);
    const client = await system.database.pool.connect();
    try {
      await expect(enqueueTask(client, { type: 'echo' })).rejects.toThrow(/inside a transaction/);
      await client.query('BEGIN');
      // A failed transaction: its COMMIT would roll back, so the task would silently vanish. pg may read
      // the failed status only after its error reached us; then Postgres refuses the insert, said the same.
      for (let i = 0; i < 10; i++) {
        await client.query('SAVEPOINT s');
        await client.query('SELECT 1/0').catch(() => undefined);
        await expect(enqueueTask(client, { type: 'echo' })).rejects.toThrow(
          'enqueueTask needs a pg client inside a transaction (after BEGIN, not failed)',
        );
        await client.query('ROLLBACK TO SAVEPOINT s');
      }
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
    expect(await taskCount()).toBe(before);
  });

  it('asks Postgres whether a pg-like client is in a transaction when the client does not say', async () => {
    const client = await system.database.pool.connect();
    // Only query(): no node-postgres transaction status to read.
    const bare = { query: (text: string, values: unknown[]) => client.query(text, values) };
    try {
      await expect(enqueueTask(bare, { type: 'echo' })).rejects.toThrow(/inside a transaction/);
      await client.query('BEGIN');
      const { task } = await enqueueTask(bare, { type: 'echo', payload: { bare: true } });
      await client.query('COMMIT');
      await system.waitForTerminal([task.id]);
      expect(await system.status(task.id)).toBe('succeeded');
    } finally {
      client.release();
    }
  });

  it('refuses an unknown type, an invalid payload or an option out of bounds before writing', async () => {
    await db()
      .transaction()
      .execute(async (tx) => {
        await expect(enqueueTask(tx, { type: 'nope' })).rejects.toThrow(/unknown task type "nope" \(known: echo/);
        await expect(enqueueTask(tx, { type: 'sleep', payload: { ms: -1 } })).rejects.toThrow(
          /invalid payload for "sleep": ms: /,
        );
        await expect(enqueueTask(tx, { type: 'echo', timeoutMs: 10 })).rejects.toThrow(InvalidTaskError);
        await expect(enqueueTask(tx, { type: 'echo', maxAttempts: 0 })).rejects.toThrow(/maxAttempts must be/);
        await expect(enqueueTask(tx, { type: 'echo', runAt: new Date(), delayMs: 1 })).rejects.toThrow(/not both/);
        await expect(enqueueTask(tx, { type: 'echo', runAt: 'tomorrow' })).rejects.toThrow(/runAt must be ISO 8601/);
        // Read in this process's time zone, it would run at another time on another host.
        await expect(enqueueTask(tx, { type: 'echo', runAt: '2030-01-01T09:00:00' })).rejects.toThrow(
          /runAt must be ISO 8601 with an offset/,
        );
        await expect(enqueueTask(tx, { type: 'echo', runAt: new Date(8.64e15) })).rejects.toThrow(
          /runAt is not a time from year 1 to 9999/,
        );
        await expect(enqueueTask(tx, { type: 'echo', delayMs: -5 })).rejects.toThrow(/delayMs must be/);
        // Past JavaScript's dates, the task's view could not be written: GET /tasks would answer 500.
        await expect(enqueueTask(tx, { type: 'echo', delayMs: 9e15 })).rejects.toThrow(
          /delayMs ends past the year 9999/,
        );
        await expect(enqueueTask(tx, { type: 'echo', idempotencyKey: '' })).rejects.toThrow(/idempotencyKey must be/);
      });
  });

  it("refuses a payload the api would refuse (a __proto__ key, a NUL), leaving the caller's transaction usable", async () => {
    const { invoiceId, task } = await db()
      .transaction()
      .execute(async (tx) => {
        const invoice = await sql<{ id: number }>`INSERT INTO invoices (total) VALUES (7) RETURNING id`.execute(tx);
        // JSON.parse keeps a __proto__ key, which the payload's schema would drop without a word.
        const polluted = JSON.parse('{"order": {"__proto__": {"admin": true}}}') as unknown;
        await expect(enqueueTask(tx, { type: 'echo', payload: polluted })).rejects.toThrow(
          /invalid payload for "echo": order: must not have a key named __proto__/,
        );
        await expect(enqueueTask(tx, { type: 'echo', payload: { note: 'a\u0000b' } })).rejects.toThrow(
          /invalid payload for "echo": note: must not contain NUL/,
        );
        const enqueued = await enqueueTask(tx, { type: 'echo', payload: { invoice: invoice.rows[0]?.id } });
        return { invoiceId: invoice.rows[0]?.id, task: enqueued.task };
      });
    expect(task.payload).toEqual({ invoice: invoiceId });
    const invoice = await sql`SELECT total FROM invoices WHERE id = ${invoiceId}`.execute(db());
    expect(invoice.rows).toEqual([{ total: 7 }]);
    await system.waitForTerminal([task.id]);
  });

  it('keeps an explicit null payload, as POST /tasks does', async () => {
    const { task } = await db()
      .transaction()
      .execute((tx) => enqueueTask(tx, { type: 'echo', payload: null }));
    expect(task.payload).toBeNull();
    await system.waitForTerminal([task.id]);
  });

  it('schedules like POST /tasks: the task runs at runAt, not before', async () => {
    const runAt = new Date(Date.now() + 1500);
    const { task } = await db()
      .transaction()
      .execute((tx) => enqueueTask(tx, { type: 'echo', payload: 'later', runAt }));
    expect(task.run_at?.getTime()).toBe(runAt.getTime());
    expect(await system.status(task.id)).toBe('pending');
    await system.waitForTerminal([task.id]);
    const row = await db().selectFrom('tasks').selectAll().where('id', '=', task.id).executeTakeFirstOrThrow();
    expect(row.status).toBe('succeeded');
    expect(row.started_at?.getTime()).toBeGreaterThanOrEqual(runAt.getTime());
  });

  it('returns the first task for an idempotency key used again, and refuses the key with another request', async () => {
    const enqueue = (payload: unknown) =>
      db()
        .transaction()
        .execute((tx) => enqueueTask(tx, { type: 'echo', payload, owner: 'billing', idempotencyKey: 'invoice-9' }));
    const first = await enqueue({ invoice: 9 });
    const again = await enqueue({ invoice: 9 });
    expect(again).toMatchObject({ created: false, task: { id: first.task.id } });
    await expect(enqueue({ invoice: 10 })).rejects.toThrow(/was used with a different request/);
    await waitFor('the first to run', async () => (await system.status(first.task.id)) === 'succeeded');
  });

  it('answers the same rows through a Kysely with the caller’s own plugins (CamelCasePlugin)', async () => {
    const camel = db().withPlugin(new CamelCasePlugin());
    const enqueue = () =>
      camel
        .transaction()
        .execute((tx) => enqueueTask(tx, { type: 'echo', payload: {}, owner: 'billing', idempotencyKey: 'camel-1' }));
    const first = await enqueue();
    expect(first.task).toMatchObject({ max_attempts: expect.any(Number), request_hash: expect.any(String) });
    expect(await enqueue()).toMatchObject({ created: false, task: { id: first.task.id } });
  });
});
