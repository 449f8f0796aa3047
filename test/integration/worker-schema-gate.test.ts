import { shippedMigrations } from '@taskbox/shared';
import { startService } from '../helpers/services';
import { startSystem, type System } from '../helpers/system';

describe('a worker on a database that lacks a migration of its build', () => {
  let system: System;

  beforeAll(async () => {
    system = await startSystem();
  });

  afterAll(async () => {
    expect(await system.stop()).toEqual([0, 0, 0]);
  });

  let latest: string | undefined;

  beforeEach(async () => {
    latest = (await shippedMigrations()).at(-1);
    await system.database.pool.query('DELETE FROM kysely_migration WHERE name = $1', [latest]);
  });

  afterEach(async () => {
    await system.database.pool.query(
      'INSERT INTO kysely_migration (name, timestamp) VALUES ($1, now()) ON CONFLICT DO NOTHING',
      [latest],
    );
  });

  it('stops cleanly on SIGTERM while it waits, as after a start (a rollout that gives up)', async () => {
    const worker = startService('worker', system.env);
    await worker.waitForLog('the wait for the schema', (l) => l.message?.startsWith('not consuming until') ?? false);
    expect(await worker.stop()).toBe(0);
    expect(worker.logs.map((l) => l.message)).toContain('stopped');
  });

  it('takes no task until the migration is applied, then runs them', async () => {
    await system.start('api');
    await system.start('relay');
    const id = await system.submit('echo', { hello: 'gate' });
    // Started by hand: system.start would wait for its 'consuming' line, which comes once migrated.
    const worker = startService('worker', system.env);
    system.services.push(worker);
    await worker.waitForLog('the wait for the schema', (l) => l.message?.startsWith('not consuming until') ?? false);
    await system.waitPublished([id]);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    // Left in the queue: no attempt started, none recorded as lost.
    const task = await system.database.db
      .selectFrom('tasks')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirstOrThrow();
    expect(task).toMatchObject({ status: 'pending', attempts: 0 });

    await system.database.pool.query('INSERT INTO kysely_migration (name, timestamp) VALUES ($1, now())', [latest]);
    await system.waitForTerminal([id], 20_000);
    expect(await system.status(id)).toBe('succeeded');
  });
});
