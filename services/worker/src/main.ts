import { createHealthServer, createLogger, loadConfig, serve, toError, type Service } from '@taskbox/shared';
import { workerParts } from './parts';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const logger = createLogger('worker', config);
  // Set once every part has started; no run can have been abandoned before then.
  let stopFromInside: (why: string) => void = () => undefined;
  const worker = workerParts(config, logger, { stopAndExit: () => stopFromInside('abandoned runs') });
  // The health server starts first and stops last: it answers while the consumer drains.
  const parts: Service[] = [
    createHealthServer(config.HEALTH_PORT ?? 3002, worker.ready, [worker.registry], logger),
    ...worker.parts,
  ];
  stopFromInside = await serve(parts, { logger, deadlineMs: config.SHUTDOWN_TIMEOUT_MS, started: worker.logStarted });
}

main().catch((err: unknown) => {
  console.error(`worker failed to start: ${toError(err).message}`);
  process.exit(1);
});
