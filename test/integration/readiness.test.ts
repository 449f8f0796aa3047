import { createPool, postgresReadiness, shippedMigrations } from '@taskbox/shared';
import { createTestDatabase, quietLogger, type TestDatabase } from '../helpers/db';
import { capturingLogger } from '../helpers/log';
import { startFaultProxy } from '../helpers/proxy';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

describe('readiness of the schema', () => {
  let migrated: TestDatabase;

  beforeAll(async () => {
    migrated = await createTestDatabase();
  });

  afterAll(async () => {
    await migrated.drop();
  });

  it('is not ready on a database never migrated, and logs every migration it lacks once', async () => {
    const bare = await createTestDatabase({ migrated: false });
    try {
      const { logger, lines } = capturingLogger();
      const ready = postgresReadiness(bare.pool, logger, { writes: true });
      expect([await ready(), await ready()]).toEqual([false, false]);
      expect(lines).toEqual([expect.objectContaining({ level: 'warn', missing: await shippedMigrations() })]);
    } finally {
      await bare.drop();
    }
  });

  it('is not ready when this build has no compiled migrations to compare with, saying to build', async () => {
    const { logger, lines } = capturingLogger();
    const ready = postgresReadiness(migrated.pool, logger, { writes: true, dir: '/nonexistent/migrations' });
    expect([await ready(), await ready()]).toEqual([false, false]);
    expect(lines).toEqual([
      expect.objectContaining({ level: 'error', message: expect.stringContaining('run npm run build') }),
    ]);
  });

  it('is not ready while Postgres refuses writes, and ready again on a new connection once it takes them', async () => {
    const name = new URL(migrated.url).pathname.slice(1);
    await migrated.pool.query(`ALTER DATABASE ${name} SET default_transaction_read_only = on`);
    const pool = createPool(migrated.url, quietLogger, { max: 1, statementTimeoutMs: 10_000 });
    try {
      const { logger, lines } = capturingLogger();
      const ready = postgresReadiness(pool, logger, { writes: true });
      expect([await ready(), await ready()]).toEqual([false, false]);
      await migrated.pool.query(`ALTER DATABASE ${name} RESET default_transaction_read_only`);
      // The pool's one session began read-only, and would stay so: the probe closed it.
      expect(await ready()).toBe(true);
      expect(lines.map((l) => [l.level, l.message])).toEqual([
        ['warn', 'not ready: Postgres refuses writes (a standby, or read-only mode)'],
        ['info', 'ready: Postgres takes writes and has every migration of this build'],
      ]);
      // The api's probe does not ask for writes: it still reads, and answers each write 503.
      await pool.query('SET SESSION default_transaction_read_only = on');
      expect(await postgresReadiness(pool, logger, { writes: false })()).toBe(true);
    } finally {
      await pool.end();
      await migrated.pool.query(`ALTER DATABASE ${name} RESET default_transaction_read_only`);
    }
  });

  it('is not ready while Postgres cannot be reached, logging why once (a wrong role)', async () => {
    const url = new URL(migrated.url);
    url.username = 'no_such_role';
    const pool = createPool(url.toString(), quietLogger, { max: 1, statementTimeoutMs: 10_000 });
    try {
      const { logger, lines } = capturingLogger();
      const ready = postgresReadiness(pool, logger, { writes: true });
      expect([await ready(), await ready()]).toEqual([false, false]);
      expect(lines).toEqual([
        expect.objectContaining({
          level: 'warn',
          message: 'not ready: Postgres does not answer',
          error: expect.stringContaining('no_such_role'),
        }),
      ]);
    } finally {
      await pool.end();
    }
  });

  it('answers not ready at once while Postgres is half-open, says why once its check ends, and is ready after the heal', async () => {
    const target = new URL(migrated.url);
    const proxy = await startFaultProxy(target.hostname, Number(target.port || 5432));
    // A query that hangs is given up only after 3 s and pg's margin; the probe answers within 300 ms.
    const pool = createPool(proxy.url(migrated.url), quietLogger, { max: 1, statementTimeoutMs: 3000 });
    try {
      const { logger, lines } = capturingLogger();
      const ready = postgresReadiness(pool, logger, { writes: true, timeoutMs: 300 });
      expect(await ready()).toBe(true);
      proxy.blackhole();
      const asked = Date.now();
      expect([await ready(), await ready()]).toEqual([false, false]);
      expect(Date.now() - asked).toBeLessThan(3000);
      await waitFor('the check to give up', () => lines.some((l) => l.level === 'warn'), 10_000);
      await proxy.restore();
      await waitFor('ready again', () => ready());
      // The timed-out probes log nothing: the check logs why once it ends (pg's query timeout here).
      expect(lines.map((l) => [l.level, l.message])).toEqual([
        ['warn', 'not ready: Postgres does not answer'],
        ['info', 'ready: Postgres takes writes and has every migration of this build'],
      ]);
    } finally {
      await pool.end();
      await proxy.close();
    }
  });

  it('becomes ready once the missing migration is applied, and says so', async () => {
    const latest = (await shippedMigrations()).at(-1);
    await migrated.pool.query('DELETE FROM kysely_migration WHERE name = $1', [latest]);
    const { logger, lines } = capturingLogger();
    const ready = postgresReadiness(migrated.pool, logger, { writes: true });
    expect(await ready()).toBe(false);
    await migrated.pool.query('INSERT INTO kysely_migration (name, timestamp) VALUES ($1, now())', [latest]);
    expect(await ready()).toBe(true);
    expect(lines.map((l) => [l.level, l.missing ?? l.latest])).toEqual([
      ['warn', [latest]],
      ['info', latest],
    ]);
  });
});

describe('readiness of the relay', () => {
  let system: System;

  afterAll(async () => {
    await system.stop();
  });

  it('is not ready while its drains fail on a locked outbox, says so, and is ready again once they work', async () => {
    system = await startSystem({ DB_STATEMENT_TIMEOUT_MS: '500' });
    const relay = await system.start('relay');
    const readyz = async () => (await fetch(`http://127.0.0.1:${await relay.port()}/readyz`)).status;
    await waitFor('the relay ready', async () => (await readyz()) === 200);

    const locker = await system.database.pool.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE');
      await waitFor('the relay unready', async () => (await readyz()) === 503);
      expect(system.logs((l) => l.message === 'relay cannot drain the outbox; backing off')).toEqual([
        expect.objectContaining({ database: 'statement timeout: the outbox is locked, or the server is busy' }),
      ]);
    } finally {
      await locker.query('COMMIT');
      locker.release();
    }
    await waitFor('the relay ready again', async () => (await readyz()) === 200);
    await relay.waitForLog('its recovery', (l) => l.message === 'relay recovered; publishing again');
  });
});
