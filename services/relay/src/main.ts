import { createHealthServer, createLogger, loadConfig, serve, toError, type Service } from '@taskbox/shared';
import { relayParts } from './parts';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('relay', config);
  const relay = relayParts(config, logger);
  // The health server starts first and stops last: it answers while the relay drains.
  const parts: Service[] = [
    createHealthServer(config.HEALTH_PORT ?? 3001, relay.ready, [relay.registry], logger),
    ...relay.parts,
  ];
  await serve(parts, { logger, deadlineMs: config.SHUTDOWN_TIMEOUT_MS, started: relay.logStarted });
}

main().catch((err: unknown) => {
  console.error(`relay failed to start: ${toError(err).message}`);
  process.exit(1);
});
