import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FileMigrationProvider, Migrator, sql, type MigrationResultSet } from 'kysely';
import pg from 'pg';
import type { Db } from './db';
import { errorCode } from './errors';

/** Compiled migrations (db/migrations/*.ts built by `npm run build`). */
export const migrationsDir = path.resolve(__dirname, '../../../db/migrations/dist');

const migrationFiles = (dir: string) => new FileMigrationProvider({ fs, path, migrationFolder: dir });

export function createMigrator(db: Db): Migrator {
  return new Migrator({ db, provider: migrationFiles(migrationsDir) });
}

/** The names of the migrations this build ships, in the order they apply. */
export async function shippedMigrations(dir = migrationsDir): Promise<string[]> {
  return Object.keys(await migrationFiles(dir).getMigrations()).sort();
}

/** Whether the database of `url` exists: a connection to it succeeds, or fails with 3D000. */
async function databaseExists(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url });
  try {
    await client.connect();
    return true;
  } catch (err) {
    if (errorCode(err) === '3D000') return false;
    throw err;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * Creates the database named in `url` when it does not exist, connecting to the `postgres` database
 * for that only: a role may be refused there and still migrate a database that exists.
 */
export async function createDatabaseIfMissing(url: string): Promise<boolean> {
  const name = decodeURIComponent(new URL(url).pathname.slice(1));
  if (!name) throw new Error('DATABASE_URL names no database: add one to its path, as in /taskbox');
  if (await databaseExists(url)) return false;
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`);
    return true;
  } catch (err) {
    // Processes racing to create it: a loser sees duplicate_database, or a unique violation on
    // pg_database's name when both inserted at once. Either way it exists now.
    if (errorCode(err) === '42P04' || errorCode(err) === '23505') return false;
    throw err;
  } finally {
    await client.end();
  }
}

/** Kysely's migrateToLatest never throws; this returns its result for the caller to check. */
export function migrateToLatest(db: Db): Promise<MigrationResultSet> {
  return createMigrator(db).migrateToLatest();
}

/**
 * The migrations applied to the database that this build does not ship, when all come after every one
 * of its own, all of which are applied: a newer build migrated it, and this one (a rollback) has nothing
 * to do. Its services run on the newer schema, which only adds (migrations are forward-only), and
 * their /readyz says the same. Undefined otherwise: kysely then migrates, or refuses a history that
 * is not this build's.
 */
export async function appliedByNewerBuild(db: Db, shipped: string[]): Promise<string[] | undefined> {
  const { rows } = await sql<{ name: string }>`
    SELECT name FROM kysely_migration ORDER BY name`
    .execute(db)
    .catch((err: unknown) => {
      // 42P01: no kysely_migration table, a database never migrated.
      if (errorCode(err) === '42P01') return { rows: [] };
      throw err;
    });
  const applied = new Set(rows.map((r) => r.name));
  const unknown = [...applied].filter((name) => !shipped.includes(name));
  const last = shipped.at(-1) ?? '';
  if (unknown.length === 0 || !shipped.every((name) => applied.has(name))) return undefined;
  return unknown.every((name) => name > last) ? unknown : undefined;
}
