import {
  appliedByNewerBuild,
  backoffMs,
  createDatabaseIfMissing,
  createDb,
  createLogger,
  createPool,
  errorCode,
  loadConfig,
  migrateToLatest,
  redactUrl,
  shippedMigrations,
  sleep,
  toError,
  type Db,
  type Logger,
} from '@taskbox/shared';

/**
 * How long a migration waits for a lock before it gives up and tries again later. A migration that
 * alters a table waits for every transaction using it to end, and every statement on that table queues
 * behind its wait: a long report or a pg_dump would stop the api for as long. Given up, it lets them
 * through, and the next try comes after a pause.
 */
const LOCK_TIMEOUT_MS = 3000;
/** How long the tries go on: less than the migrate Job's deadline (600 s), so that this says why it stopped. */
const RETRY_FOR_MS = 8 * 60_000;
const RETRY_PAUSES = { baseMs: 1000, maxMs: 30_000 };

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('migrate', config);
  const url = redactUrl(config.DATABASE_URL);
  if (await createDatabaseIfMissing(config.DATABASE_URL)) logger.info('created database', { url });
  // No statement timeout: a migration may build an index for minutes, and no request waits on it.
  const pool = createPool(config.DATABASE_URL, logger, {
    max: 1,
    statementTimeoutMs: 0,
    onConnect: async (client) => void (await client.query(`SET lock_timeout = ${LOCK_TIMEOUT_MS}`)),
  });
  const db = createDb(pool);
  const newer = await appliedByNewerBuild(db, await shippedMigrations());
  const failed = newer ? undefined : await migrateWithRetries(db, logger);
  await db.destroy();
  if (failed) {
    logger.error('migration failed', { url, migration: failed.migration, error: toError(failed.error).message });
    process.exit(1);
  }
  if (newer) logger.info('database is newer than this build: nothing to migrate', { url, newer });
  else logger.info('database is up to date', { url });
}

/**
 * Migrates, trying again while a migration gives up on a lock (55P03). Answers the last error and the
 * migration it came from, if any.
 */
async function migrateWithRetries(db: Db, logger: Logger): Promise<{ error: unknown; migration?: string } | undefined> {
  const deadline = Date.now() + RETRY_FOR_MS;
  for (let attempt = 1; ; attempt++) {
    const { error, results } = await migrateToLatest(db);
    if (!error) {
      for (const r of results ?? []) logger.info('migration applied', { migration: r.migrationName });
      return undefined;
    }
    // After an error every migration of the run is rolled back, those kysely reports as done included.
    const migration = results?.find((r) => r.status === 'Error')?.migrationName;
    // The backoff's ceiling, with no jitter: 1, 2, 4 ... 30 s.
    const pauseMs = backoffMs(attempt, RETRY_PAUSES, () => 1);
    if (errorCode(error) !== '55P03' || Date.now() + pauseMs > deadline) return { error, migration };
    const message = 'a migration waited too long for a lock that other sessions hold; all is undone, trying again';
    logger.warn(message, { migration, lockTimeoutMs: LOCK_TIMEOUT_MS, retryInMs: pauseMs });
    await sleep(pauseMs);
  }
}

main().catch((err: unknown) => {
  console.error(toError(err).message);
  process.exit(1);
});
