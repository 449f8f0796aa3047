import { createLogger, loadConfig, startAll, stopAll, toError, wireShutdown } from '@taskbox/shared';
import { apiParts, listening } from './parts';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('api', config);
  const { parts, server } = apiParts(config, logger);
  await startAll(parts);
  logger.info('api listening', listening(config, server));
  wireShutdown(logger, () => stopAll(parts, config.SHUTDOWN_TIMEOUT_MS, logger));
}

main().catch((err: unknown) => {
  console.error(`api failed to start: ${toError(err).message}`);
  process.exit(1);
});
