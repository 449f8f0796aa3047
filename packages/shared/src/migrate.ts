import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FileMigrationProvider, Migrator, type MigrationResultSet } from 'kysely';
import pg from 'pg';
import type { Db } from './db';
import { errorCode } from './errors';

/** Compiled migrations (db/migrations/*.ts built by `npm run build`). */
export const migrationsDir = path.resolve(__dirname, '../../../db/migrations/dist');

export function createMigrator(db: Db): Migrator {
  return new Migrator({ db, provider: new FileMigrationProvider({ fs, path, migrationFolder: migrationsDir }) });
}

/** Creates the database named in `url` when it does not exist, connecting to the `postgres` database. */
export async function createDatabaseIfMissing(url: string): Promise<boolean> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.slice(1));
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (found.rowCount) return false;
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`);
    return true;
  } catch (err) {
    // Two processes racing to create it: the loser sees duplicate_database, which is fine.
    if (errorCode(err) === '42P04') return false;
    throw err;
  } finally {
    await client.end();
  }
}

/** Kysely's migrateToLatest never throws; this returns its result for the caller to check. */
export function migrateToLatest(db: Db): Promise<MigrationResultSet> {
  return createMigrator(db).migrateToLatest();
}
