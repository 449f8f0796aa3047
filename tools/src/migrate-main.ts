import {
  createDatabaseIfMissing,
  createDb,
  createLogger,
  createPool,
  loadConfig,
  migrateToLatest,
  redactUrl,
  toError,
} from '@taskbox/shared';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('migrate', config);
  const url = redactUrl(config.DATABASE_URL);
  if (await createDatabaseIfMissing(config.DATABASE_URL)) logger.info('created database', { url });
  // No statement timeout: a migration may build an index for minutes, and no request waits on it.
  const pool = createPool(config.DATABASE_URL, logger, { max: 1, statementTimeoutMs: 0 });
  const db = createDb(pool);
  const { error, results } = await migrateToLatest(db);
  for (const r of results ?? []) logger.info(`migration ${r.status.toLowerCase()}`, { migration: r.migrationName });
  await db.destroy();
  if (error) {
    logger.error('migration failed', { url, error: toError(error).message });
    process.exit(1);
  }
  logger.info('database is up to date', { url });
}

main().catch((err: unknown) => {
  console.error(toError(err).message);
  process.exit(1);
});
