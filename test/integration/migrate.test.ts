import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import pg from 'pg';
import { createDatabaseIfMissing, shippedMigrations } from '@taskbox/shared';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/db';
import { waitFor } from '../helpers/wait';

interface MigrateRun {
  output: string[];
  exited: Promise<number | null>;
}

/** The built `npm run migrate` (`npm test` builds first) as a child process. */
function runMigrate(url: string): MigrateRun {
  const main = path.resolve(__dirname, '../../tools/dist/migrate-main.js');
  const child = spawn(process.execPath, [main], {
    env: { PATH: process.env.PATH ?? '', DATABASE_URL: url, LOG_LEVEL: 'info' },
  });
  const output: string[] = [];
  child.stdout.on('data', (chunk: Buffer) => output.push(...chunk.toString().split('\n')));
  child.stderr.on('data', (chunk: Buffer) => output.push(...chunk.toString().split('\n')));
  return { output, exited: new Promise((resolve) => child.on('exit', (code) => resolve(code))) };
}

describe('npm run migrate creating its database', () => {
  const name = `taskbox_migrate_${randomBytes(6).toString('hex')}`;
  const url = new URL(adminUrl());
  url.pathname = `/${name}`;

  afterAll(async () => {
    const client = new pg.Client({ connectionString: adminUrl() });
    await client.connect();
    await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await client.end();
  });

  it('creates a missing database once when several runs race, and none of them fails', async () => {
    const created = await Promise.all(Array.from({ length: 6 }, () => createDatabaseIfMissing(url.toString())));
    expect(created.filter(Boolean)).toEqual([true]);
    expect(await createDatabaseIfMissing(url.toString())).toBe(false);
  });

  it('refuses a URL that names no database, saying so', async () => {
    const bare = new URL(adminUrl());
    bare.pathname = '/';
    await expect(createDatabaseIfMissing(bare.toString())).rejects.toThrow(/names no database/);
  });
});

describe('npm run migrate on a database in use', () => {
  let database: TestDatabase;

  beforeEach(async () => {
    database = await createTestDatabase();
  });

  afterEach(async () => {
    await database.drop();
  });

  it('leaves a database a newer build migrated as it is, and exits 0 (a rollback)', async () => {
    await database.pool.query(
      "INSERT INTO kysely_migration (name, timestamp) VALUES ('9999_from_a_newer_build', now())",
    );
    const run = runMigrate(database.url);
    expect(await run.exited).toBe(0);
    expect(run.output.join('\n')).toMatch(
      /database is newer than this build: nothing to migrate.*9999_from_a_newer_build/,
    );
  });

  it('refuses a history with a migration this build does not know between its own', async () => {
    await database.pool.query("INSERT INTO kysely_migration (name, timestamp) VALUES ('0005b_from_elsewhere', now())");
    const run = runMigrate(database.url);
    expect(await run.exited).toBe(1);
    const failed = run.output.find((l) => l.includes('"migration failed"')) ?? '';
    expect(failed).toContain('0005b_from_elsewhere is missing');
  });

  it('gives up its wait for a lock a long transaction holds, lets the writes queued behind it through, and migrates once the lock is free', async () => {
    // The database as a build of 0011 left it: 0012 alters tasks, which takes a lock every reader holds
    // off (0013 and 0014 only add indexes, IF NOT EXISTS, and run again).
    const altering = '0012_task_interruptions';
    expect(await shippedMigrations()).toContain(altering);
    await database.pool.query('ALTER TABLE tasks DROP COLUMN interrupted');
    await database.pool.query('DELETE FROM kysely_migration WHERE name >= $1', [altering]);
    const reader = new pg.Client({ connectionString: database.url });
    await reader.connect();
    try {
      await reader.query('BEGIN');
      await reader.query('SELECT count(*) FROM tasks');
      const run = runMigrate(database.url);
      await waitFor('the migration to give up its lock wait', () =>
        run.output.some((l) => l.includes('waited too long for a lock')),
      );
      // Between tries no ACCESS EXCLUSIVE request is queued on tasks: a write goes through at once.
      const writer = new pg.Client({ connectionString: database.url, statement_timeout: 2000 });
      await writer.connect();
      try {
        await writer.query(`INSERT INTO tasks (id, type, payload, status, owner, correlation_id)
                            VALUES (gen_random_uuid(), 'echo', '{}', 'pending', 'anonymous', 'behind-a-migration')`);
      } finally {
        await writer.end();
      }
      await reader.query('COMMIT');
      expect(await run.exited).toBe(0);
      const { rows } = await database.pool.query('SELECT name FROM kysely_migration WHERE name >= $1 ORDER BY name', [
        altering,
      ]);
      expect(rows.map((r: { name: string }) => r.name)).toEqual(
        (await shippedMigrations()).filter((name) => name >= altering),
      );
    } finally {
      await reader.end();
    }
  });

  it('builds again an index a failed CREATE INDEX CONCURRENTLY left invalid, before it drops the one it replaces', async () => {
    const q = (text: string) => database.pool.query(text);
    await q("DELETE FROM kysely_migration WHERE name >= '0013_pending_due_index'");
    await q("CREATE INDEX tasks_pending ON tasks (updated_at) WHERE status = 'pending'");
    // What a failed concurrent build leaves behind: the index, marked invalid.
    await q(
      "UPDATE pg_index SET indisvalid = false WHERE indexrelid IN ('tasks_pending_due'::regclass, 'task_attempts_started'::regclass)",
    );
    const run = runMigrate(database.url);
    expect(await run.exited).toBe(0);
    const { rows } = await q(
      "SELECT c.relname AS name, i.indisvalid AS valid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname IN ('tasks_pending', 'tasks_pending_due', 'task_attempts_started') ORDER BY 1",
    );
    expect(rows).toEqual([
      { name: 'task_attempts_started', valid: true },
      { name: 'tasks_pending_due', valid: true },
    ]);
  });
});
