import http from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  closeServer,
  createDb,
  createLogger,
  createOutboxNotifier,
  createPool,
  exitOnSignal,
  listen,
  loadConfig,
  redactUrl,
  toError,
} from '@taskbox/shared';
import { buildApp, parseTokens } from './app';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('api', config);
  // connectionTimeoutMillis also bounds the wait for a free pooled client, so it must be longer than a
  // burst's queue (600 concurrent POSTs wait ~2 s on a loaded 2-core machine) or a burst is answered
  // 503 as if the database were down. A database that is really down refuses connections at once, and
  // that error is answered 503 immediately, whatever this timeout is.
  const pool = createPool(config.DATABASE_URL, logger, { max: config.PG_POOL_SIZE, connectionTimeoutMillis: 10_000 });
  const db = createDb(pool);
  const notifier = createOutboxNotifier(pool, logger);
  const { app } = buildApp({
    db,
    pool,
    notifier,
    logger,
    bodyLimit: config.BODY_LIMIT,
    tokens: parseTokens(process.env.AUTH_TOKENS),
  });
  const server = http.createServer(app);
  await listen(server, config.PORT);
  logger.info('api listening', {
    port: (server.address() as AddressInfo).port,
    database: redactUrl(config.DATABASE_URL),
  });

  exitOnSignal(logger, config.SHUTDOWN_TIMEOUT_MS, async () => {
    await closeServer(server);
    await notifier.stop();
    await db.destroy();
  });
}

main().catch((err: unknown) => {
  console.error(`api failed to start: ${toError(err).message}`);
  process.exit(1);
});
