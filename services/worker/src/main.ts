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
import { workerParts } from './parts';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('worker', config);
  // Set once the shutdown is wired, before any delivery can count an abandoned run.
  let stopFromInside: (why: string) => void = () => undefined;
  const worker = workerParts(config, logger, { stopAndExit: () => stopFromInside('abandoned runs') });
  // The health server starts first and stops last: it answers while the consumer drains.
  const parts: Service[] = [
    createHealthServer(config.HEALTH_PORT ?? 3002, worker.ready, [worker.registry], logger),
    ...worker.parts,
  ];
  await startAll(parts);
  worker.logStarted();
  stopFromInside = wireShutdown(logger, () => stopAll(parts, config.SHUTDOWN_TIMEOUT_MS, logger));
}

main().catch((err: unknown) => {
  console.error(`worker failed to start: ${toError(err).message}`);
  process.exit(1);
});
