import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { createDb, createPool, createLogger, type Db } from '@taskbox/shared';

// In-process parts log through this; tests assert on state, and child-process tests read real logs.
export const quietLogger = createLogger('test', { LOG_LEVEL: 'error', LOG_FORMAT: 'json' });
quietLogger.silent = true;

export interface TestDatabase {
  url: string;
  pool: pg.Pool;
  db: Db;
  drop(): Promise<void>;
}

export function adminUrl(): string {
  const url = process.env.TASKBOX_TEST_ADMIN_URL;
  if (!url) throw new Error('TASKBOX_TEST_ADMIN_URL is not set: run tests through jest (global-setup.ts)');
  return url;
}

async function admin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: adminUrl() });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/**
 * A fresh, migrated database cloned from the template. Each test file gets its own, which also keeps
 * NOTIFY traffic apart (NOTIFY is per database). With `migrated: false`, an empty one, as before the
 * first `npm run migrate`.
 */
export async function createTestDatabase({ migrated = true } = {}): Promise<TestDatabase> {
  const name = `taskbox_test_${randomBytes(6).toString('hex')}`;
  const template = migrated ? ` TEMPLATE ${process.env.TASKBOX_TEST_TEMPLATE_DB}` : '';
  await admin((c) => c.query(`CREATE DATABASE ${name}${template}`));
  const url = new URL(adminUrl());
  url.pathname = `/${name}`;
  const pool = createPool(url.toString(), quietLogger, { max: 10, statementTimeoutMs: 10_000 });
  const db = createDb(pool);
  return {
    url: url.toString(),
    pool,
    db,
    async drop() {
      await db.destroy();
      await admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
    },
  };
}
