import { createLogger, loadConfig, serve, toError } from '@taskbox/shared';
import { apiParts } from './parts';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('api', config);
  const api = apiParts(config, logger);
  await serve(api.parts, { logger, deadlineMs: config.SHUTDOWN_TIMEOUT_MS, started: api.logStarted });
}

main().catch((err: unknown) => {
  console.error(`api failed to start: ${toError(err).message}`);
  process.exit(1);
});
