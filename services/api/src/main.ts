import { createLogger, loadConfig, startAll, stopAll, toError, wireShutdown } from '@taskbox/shared';
import { apiParts } from './parts';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('api', config);
  const api = apiParts(config, logger);
  await startAll(api.parts);
  api.logStarted();
  wireShutdown(logger, () => stopAll(api.parts, config.SHUTDOWN_TIMEOUT_MS, logger));
}

main().catch((err: unknown) => {
  console.error(`api failed to start: ${toError(err).message}`);
  process.exit(1);
});
