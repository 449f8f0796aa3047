// api, relay and worker in one Node process: the same parts as the three services, wired together.
// For a deployment small enough that one process is enough. At light load every task wakes each process
// it passes through, so one process instead of three costs less CPU per task (bench/README.md, "taskbox
// and its peers"); the guarantees are the same, since the parts still meet only through Postgres and RabbitMQ.
// Several may run side by side, as several relays and workers may; to scale the api or the workers
// alone, run the separate services.
import { apiParts } from '@taskbox/api';
import { relayParts } from '@taskbox/relay';
import {
  createHealthServer,
  createLogger,
  loadConfig,
  serve,
  toError,
  type ReadinessCheck,
  type Service,
} from '@taskbox/shared';
import { workerParts } from '@taskbox/worker';

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const log = {
    process: createLogger('all-in-one', config),
    api: createLogger('api', config),
    relay: createLogger('relay', config),
    worker: createLogger('worker', config),
  };
  // The api's /metrics has Node's process metrics; the health server's has the relay's and the worker's own.
  const api = apiParts(config, log.api);
  const relay = relayParts(config, log.relay, { processMetrics: false });
  // Set once every part has started; no run can have been abandoned before then.
  let stopFromInside: (why: string) => void = () => undefined;
  const worker = workerParts(config, log.worker, {
    stopAndExit: () => stopFromInside('abandoned runs'),
    processMetrics: false,
  });
  const health = createHealthServer(
    config.HEALTH_PORT ?? 3001,
    bothReady({ relay: relay.ready, worker: worker.ready }),
    [relay.registry, worker.registry],
    log.process,
  );
  // Started in this order, stopped in reverse, as each service alone. The worker consumes last, once
  // both ports are bound, and stops consuming first, with its whole drain budget; the api keeps
  // accepting tasks meanwhile (they wait in the outbox or the queue for the next start), then the relay
  // stops, and the health server answers until the end.
  const parts: Service[] = [health, ...relay.parts, ...api.parts, ...worker.parts];
  stopFromInside = await serve(parts, {
    logger: log.process,
    deadlineMs: config.SHUTDOWN_TIMEOUT_MS,
    started: () => {
      relay.logStarted();
      api.logStarted();
      worker.logStarted();
    },
  });
}

/** The relay's and the worker's checks in one answer, each named after its service: `relay.rabbitmq`. */
function bothReady(checks: Record<string, ReadinessCheck>): ReadinessCheck {
  return async () => {
    const answers = await Promise.all(
      Object.entries(checks).map(async ([name, check]) =>
        Object.entries(await check()).map(([key, ok]) => [`${name}.${key}`, ok] as const),
      ),
    );
    return Object.fromEntries(answers.flat());
  };
}

main().catch((err: unknown) => {
  console.error(`taskbox failed to start: ${toError(err).message}`);
  process.exit(1);
});
