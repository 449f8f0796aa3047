import { sql } from 'kysely';
import { bestEffortSettings, createDb, createPool, isDbUnavailable } from '@taskbox/shared';
import { startFaultProxy } from '../helpers/proxy';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';

describe('createPool', () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database.drop();
  });

  it('applies session settings from onConnect before the first query on each new connection', async () => {
    const pool = createPool(database.url, quietLogger, {
      max: 4,
      statementTimeoutMs: 10_000,
      onConnect: async (client) => {
        await client.query('SET enable_bitmapscan = off');
      },
    });
    try {
      const answers = await Promise.all(
        Array.from({ length: 8 }, () => pool.query<{ enable_bitmapscan: string }>('SHOW enable_bitmapscan')),
      );
      expect(answers.map((a) => a.rows[0]!.enable_bitmapscan)).toEqual(Array(8).fill('off'));
    } finally {
      await pool.end();
    }
  });

  it('fails the query that needed the connection when onConnect fails, and connects again for the next', async () => {
    let calls = 0;
    const pool = createPool(database.url, quietLogger, {
      max: 1,
      statementTimeoutMs: 10_000,
      onConnect: async (client) => {
        calls++;
        await client.query(calls === 1 ? 'SET no_such_setting = 1' : 'SET enable_bitmapscan = off');
      },
    });
    try {
      await expect(pool.query('SELECT 1')).rejects.toThrow(/no_such_setting/);
      const { rows } = await pool.query<{ enable_bitmapscan: string }>('SHOW enable_bitmapscan');
      expect(rows[0]!.enable_bitmapscan).toBe('off');
      expect(calls).toBe(2);
    } finally {
      await pool.end();
    }
  });

  it('uses the connection without best-effort settings that fail, and warns', async () => {
    const warn = jest.spyOn(quietLogger, 'warn');
    const pool = createPool(database.url, quietLogger, {
      max: 1,
      statementTimeoutMs: 10_000,
      onConnect: bestEffortSettings(async (client) => {
        await client.query('SET no_such_setting = 1');
      }, quietLogger),
    });
    try {
      const { rows } = await pool.query<{ one: number }>('SELECT 1 AS one');
      expect(rows[0]!.one).toBe(1);
      expect(warn).toHaveBeenCalledWith(
        'could not apply the session settings; going on without them',
        expect.objectContaining({ error: expect.stringMatching(/no_such_setting/) }),
      );
    } finally {
      warn.mockRestore();
      await pool.end();
    }
  });

  it('counts a database that does not exist and a role that does not exist as unavailable, not as a wrong query', async () => {
    const url = (change: (u: URL) => void) => {
      const u = new URL(database.url);
      change(u);
      return u.toString();
    };
    const urls = [
      url((u) => (u.pathname = '/taskbox_no_such_database')),
      url((u) => (u.username = 'taskbox_no_such_role')),
    ];
    for (const target of urls) {
      const pool = createPool(target, quietLogger, { max: 1, statementTimeoutMs: 1000 });
      try {
        const failure = await pool.query('SELECT 1').then(
          () => null,
          (err: unknown) => err,
        );
        expect({ target, unavailable: isDbUnavailable(failure) }).toEqual({ target, unavailable: true });
      } finally {
        await pool.end();
      }
    }
  });

  it('closes a connection whose session is read-only once a write fails on it, so the next one can write', async () => {
    const pool = createPool(database.url, quietLogger, { max: 1, statementTimeoutMs: 5000 });
    const db = createDb(pool);
    const backend = async () => (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(db)).rows[0]!.pid;
    try {
      // A session begun while the database refused writes keeps refusing them for its life.
      await sql`SET SESSION default_transaction_read_only = on`.execute(db);
      const readOnly = await backend();
      const failure = await sql`CREATE TEMP TABLE t (n int)`.execute(db).then(
        () => null,
        (err: unknown) => err,
      );
      expect(failure).toMatchObject({ code: '25006' });
      expect(await backend()).not.toBe(readOnly);
      await sql`CREATE TEMP TABLE t (n int)`.execute(db);
    } finally {
      await db.destroy();
    }
  });

  it('gives up on a server that never answers after the statement timeout and a margin, and does not reuse that connection', async () => {
    const target = new URL(database.url);
    const proxy = await startFaultProxy(target.hostname, Number(target.port || 5432));
    const pool = createPool(proxy.url(database.url), quietLogger, { max: 1, statementTimeoutMs: 300 });
    const db = createDb(pool);
    const backend = async () => (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(db)).rows[0]!.pid;
    try {
      const before = await backend();
      proxy.blackhole();
      const started = Date.now();
      const failure = await backend().then(
        () => null,
        (err: unknown) => err,
      );
      expect(Date.now() - started).toBeLessThan(5000);
      expect(isDbUnavailable(failure)).toBe(true);
      await proxy.restore();
      // One connection at most: had the silent one gone back to the pool, this would wait behind it.
      expect(await backend()).not.toBe(before);
    } finally {
      await proxy.restore();
      await db.destroy();
      await proxy.close();
    }
  });
});
