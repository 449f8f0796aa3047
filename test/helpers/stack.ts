import type { TestDatabase } from './db';
import type { RunningService, ServiceName } from './services';
import { startSystem } from './system';

export interface Stack {
  database: TestDatabase;
  prefix: string;
  api: RunningService;
  relay: RunningService;
  worker: RunningService;
  /** Base URLs: the api's port, and the relay's and worker's health ports. */
  urls: Record<'api' | 'relay' | 'worker', string>;
  /**
   * Stops the three (SIGTERM), drops the database and the topology; returns the exit codes. Runs once:
   * a last test asserts on the codes, and afterAll calls it again to clean up when that test did not run.
   */
  stop(): Promise<(number | null)[]>;
}

/**
 * The whole system, started: api, relay and worker of one `startSystem`, ready once the worker
 * consumes. `env` goes to all three, `perService` on top for one.
 */
export async function startStack(
  env: Record<string, string> = {},
  perService: Partial<Record<ServiceName, Record<string, string>>> = {},
): Promise<Stack> {
  const system = await startSystem(env);
  const [api, relay, worker] = await Promise.all([
    system.start('api', perService.api),
    system.start('relay', perService.relay),
    system.start('worker', perService.worker),
  ]);
  const url = async (s: RunningService) => `http://127.0.0.1:${await s.port()}`;
  const [apiUrl, relayUrl, workerUrl] = await Promise.all([url(api), url(relay), url(worker)]);
  let stopped: Promise<(number | null)[]> | null = null;
  return {
    database: system.database,
    prefix: system.prefix,
    api,
    relay,
    worker,
    urls: { api: apiUrl, relay: relayUrl, worker: workerUrl },
    stop: () => (stopped ??= system.stop()),
  };
}
