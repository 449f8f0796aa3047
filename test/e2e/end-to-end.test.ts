import { deleteTopology, amqpUrl, testPrefix } from '../helpers/amqp';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { startService, type RunningService } from '../helpers/services';
import { waitFor } from '../helpers/wait';

describe('api → outbox → relay → RabbitMQ → worker, as three processes', () => {
  let database: TestDatabase;
  let prefix: string;
  let services: RunningService[] = [];
  let api: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    prefix = testPrefix();
    const env = { DATABASE_URL: database.url, AMQP_URL: amqpUrl(), AMQP_PREFIX: prefix, WORKER_PREFETCH: '50' };
    services = [startService('api', env), startService('relay', env), startService('worker', env)];
    api = `http://127.0.0.1:${await services[0]!.port()}`;
    await services[2]!.waitForLog('consuming', (l) => l.message === 'consuming');
  });

  afterAll(async () => {
    await Promise.all(services.map((s) => s.stop()));
    await database.drop();
    await deleteTopology(prefix);
  });

  it('runs 500 concurrent tasks to succeeded, each with its own external job id, and never loses sight of one', async () => {
    const responses = await Promise.all(
      Array.from({ length: 500 }, (_, i) =>
        fetch(`${api}/tasks`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ type: 'echo', payload: { i } }),
        }),
      ),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(500).fill(202));
    const ids = await Promise.all(responses.map(async (r) => ((await r.json()) as { id: string }).id));
    expect(new Set(ids).size).toBe(500);

    await waitFor(
      'all 500 tasks to succeed',
      async () => {
        const done = await database.db
          .selectFrom('tasks')
          .select(database.db.fn.countAll<string>().as('n'))
          .where('status', '=', 'succeeded')
          .executeTakeFirstOrThrow();
        return Number(done.n) === 500;
      },
      60_000,
      200,
    );

    const tasks = await database.db.selectFrom('tasks').selectAll().execute();
    expect(tasks.every((t) => t.attempts === 1 && t.started_at && t.finished_at)).toBe(true);
    const jobIds = tasks.map((t) => t.external_job_id);
    expect(jobIds.every((j) => /^worker-.+-\d+-[0-9a-f]{8}:\d+$/.test(j ?? ''))).toBe(true);
    expect(new Set(jobIds).size).toBe(500);
    const attempts = await database.db.selectFrom('task_attempts').selectAll().execute();
    expect(attempts).toHaveLength(500);
    expect(attempts.every((a) => a.outcome === 'succeeded')).toBe(true);

    const view = (await (await fetch(`${api}/tasks/${ids[7]}`)).json()) as Record<string, unknown>;
    expect(view).toMatchObject({ status: 'succeeded', attempts: 1, result: { i: 7 } });
    expect(view.externalJobId).toBe(tasks.find((t) => t.id === ids[7])?.external_job_id);

    const allLogs = services.flatMap((s) => [...s.logs.map((l) => JSON.stringify(l)), ...s.text]);
    expect(allLogs.filter((l) => /not found|unknown-task/i.test(l))).toEqual([]);
    expect(allLogs.filter((l) => /"level":"error"/.test(l))).toEqual([]);
  });

  it('stops the three with exit code 0, having printed nothing but JSON log lines, shutdown included', async () => {
    expect(await Promise.all(services.map((s) => s.stop()))).toEqual([0, 0, 0]);
    // No runtime warnings, no stack traces.
    expect(services.map((s) => s.text)).toEqual([[], [], []]);
  });
});
