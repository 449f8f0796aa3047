import { createLogger, loadConfig, redactUrl, startAll, stopAll, toError, wireShutdown } from '@taskbox/shared';
import { apiParts } from './parts';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('api', config);
  const { parts, server } = apiParts(config, logger);
  await startAll(parts);
  logger.info('api listening', {
    port: server.port(),
    database: redactUrl(config.DATABASE_URL),
    ...(config.EXAMPLE_PAGE ? { examplePage: '/example/' } : {}),
    ...(config.DASHBOARD ? { dashboard: '/dashboard/' } : {}),
    auth: config.AUTH_JWKS_URL ? 'jwks' : config.AUTH_JWT_SECRET ? 'jwt' : config.AUTH_TOKENS ? 'tokens' : 'off',
  });
  wireShutdown(logger, () => stopAll(parts, config.SHUTDOWN_TIMEOUT_MS, logger));
}

main().catch((err: unknown) => {
  console.error(`api failed to start: ${toError(err).message}`);
  process.exit(1);
});
