import {
  createHealthServer,
  createLogger,
  loadConfig,
  startAll,
  stopAll,
  toError,
  wireShutdown,
  type Service,
} from '@taskbox/shared';
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
  await startAll(parts);
  relay.logStarted();
  wireShutdown(logger, () => stopAll(parts, config.SHUTDOWN_TIMEOUT_MS, logger));
}

main().catch((err: unknown) => {
  console.error(`relay failed to start: ${toError(err).message}`);
  process.exit(1);
});
