import { amqpUrl, deleteTopology, testPrefix } from './amqp';
import { createTestDatabase, type TestDatabase } from './db';
import { startService, type RunningService, type ServiceName } from './services';

function once<T>(run: () => Promise<T>): () => Promise<T> {
  let result: Promise<T> | null = null;
  return () => (result ??= run());
}

export interface Stack {
  database: TestDatabase;
  prefix: string;
  api: RunningService;
  relay: RunningService;
  worker: RunningService;
  /** Base URLs: the api's port, and the relay's and worker's health ports. */
  urls: Record<ServiceName, string>;
  /**
   * Stops the three (SIGTERM), drops the database and the topology; returns the exit codes. Runs once:
   * a last test asserts on the codes, and afterAll calls it again to clean up when that test did not run.
   */
  stop(): Promise<(number | null)[]>;
}

/**
 * api, relay and worker as child processes on a fresh database and AMQP_PREFIX, ready once the
 * worker consumes. `env` goes to all three, `perService` on top for one.
 */
export async function startStack(
  env: Record<string, string> = {},
  perService: Partial<Record<ServiceName, Record<string, string>>> = {},
): Promise<Stack> {
  const database = await createTestDatabase();
  const prefix = testPrefix();
  const base = { DATABASE_URL: database.url, AMQP_URL: amqpUrl(), AMQP_PREFIX: prefix, ...env };
  const names: ServiceName[] = ['api', 'relay', 'worker'];
  const [api, relay, worker] = names.map((n) => startService(n, { ...base, ...perService[n] })) as [
    RunningService,
    RunningService,
    RunningService,
  ];
  const [apiPort, relayPort, workerPort] = await Promise.all([api.port(), relay.port(), worker.port()]);
  await worker.waitForLog('consuming', (l) => l.message === 'consuming');
  const url = (port: number) => `http://127.0.0.1:${port}`;
  return {
    database,
    prefix,
    api,
    relay,
    worker,
    urls: { api: url(apiPort), relay: url(relayPort), worker: url(workerPort) },
    stop: once(async () => {
      const codes = await Promise.all([api, relay, worker].map((s) => s.stop()));
      await database.drop();
      await deleteTopology(prefix);
      return codes;
    }),
  };
}
