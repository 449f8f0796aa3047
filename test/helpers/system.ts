import { amqpUrl, deleteTopology, testPrefix } from './amqp';
import { createTestDatabase, type TestDatabase } from './db';
import { startService, type LogLine, type RunningService, type ServiceName } from './services';
import { waitFor } from './wait';

export interface System {
  database: TestDatabase;
  prefix: string;
  env: Record<string, string>;
  services: RunningService[];
  start(name: ServiceName, env?: Record<string, string>): Promise<RunningService>;
  /** POSTs a task to the first api started; returns the task id. */
  submit(type: string, payload: unknown, extra?: Record<string, unknown>): Promise<string>;
  status(id: string): Promise<string>;
  waitForTerminal(ids: string[], timeoutMs?: number): Promise<void>;
  /** Waits until each task's outbox row is published (one row each: no retry or republish yet). */
  waitPublished(ids: string[]): Promise<void>;
  logs(match: (line: LogLine) => boolean): LogLine[];
  /** SIGTERMs what still runs and returns the exit codes, then drops the database and topology. */
  stop(): Promise<(number | null)[]>;
}

/**
 * A database, an AMQP prefix, and taskbox services as child processes, as production runs them.
 * `ownDatabase` replaces the fresh one on the shared server (a test's own Postgres); stop() drops it too.
 */
export async function startSystem(env: Record<string, string> = {}, ownDatabase?: TestDatabase): Promise<System> {
  const database = ownDatabase ?? (await createTestDatabase());
  const prefix = testPrefix();
  const baseEnv = {
    DATABASE_URL: database.url,
    AMQP_URL: amqpUrl(),
    AMQP_PREFIX: prefix,
    RELAY_POLL_MS: '200',
    ...env,
  };
  const services: RunningService[] = [];
  let api: string | null = null;
  const system: System = {
    database,
    prefix,
    env: baseEnv,
    services,
    async start(name, extra = {}) {
      const service = startService(name, { ...baseEnv, ...extra });
      services.push(service);
      if (name === 'api') {
        const port = await service.port();
        api ??= `http://127.0.0.1:${port}`;
      } else if (name === 'worker') {
        // Connected and consuming (the broker connection starts in the background), and past its last
        // line at start, before which a signal could come before the shutdown is wired.
        await service.waitForLog('consuming', (l) => l.message === 'consuming');
        await service.waitForLog('started', (l) => l.message === 'worker started');
      } else {
        await service.waitForLog('started', (l) => l.message === 'relay started');
        // Its topology is declared on connect: a test that breaks the broker must not race it.
        await service.waitForLog('connected', (l) => l.message === 'rabbitmq connected');
      }
      return service;
    },
    async submit(type, payload, extra = {}) {
      if (!api) throw new Error('start an api first');
      const res = await fetch(`${api}/tasks`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ type, payload, ...extra }),
      });
      if (res.status !== 202) throw new Error(`POST /tasks answered ${res.status}: ${await res.text()}`);
      return ((await res.json()) as { id: string }).id;
    },
    async status(id) {
      const row = await database.db.selectFrom('tasks').select('status').where('id', '=', id).executeTakeFirstOrThrow();
      return row.status;
    },
    async waitForTerminal(ids, timeoutMs = 60_000) {
      await waitFor(
        `${ids.length} tasks to finish`,
        async () => {
          const open = await database.db
            .selectFrom('tasks')
            .select(database.db.fn.countAll<string>().as('n'))
            .where('id', 'in', ids)
            .where('status', 'in', ['pending', 'processing'])
            .executeTakeFirstOrThrow();
          return Number(open.n) === 0;
        },
        timeoutMs,
        200,
      );
    },
    async waitPublished(ids) {
      await waitFor('every message published', async () => {
        const rows = await database.db
          .selectFrom('outbox')
          .select('published_at')
          .where('task_id', 'in', ids)
          .execute();
        return rows.length === ids.length && rows.every((r) => r.published_at !== null);
      });
    },
    logs: (match) => services.flatMap((s) => s.logs.filter(match)),
    async stop() {
      const codes = await Promise.all(services.map((s) => s.stop()));
      await database.drop();
      await deleteTopology(prefix);
      return codes;
    },
  };
  return system;
}
