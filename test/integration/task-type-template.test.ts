// The template of README's "Adding a task type": copy it for a type of your own, replacing `flaky`,
// its payloads and its result. The first part calls `run` directly (quick, no services); the second
// runs the type through the api, the relay and the worker, as production does.
import { flaky } from '../../packages/tasks/src/flaky';
import { quietLogger } from '../helpers/db';
import { startSystem, type System } from '../helpers/system';

describe('task type: flaky', () => {
  it('returns a result its own schema accepts', async () => {
    const ctx = {
      taskId: 'test',
      payload: { failTimes: 1 },
      attempt: 2,
      logger: quietLogger,
      signal: new AbortController().signal,
      step: async () => undefined,
      progress: async () => undefined,
    };
    const result = await flaky.run(ctx);
    expect(flaky.result?.parse(result)).toEqual({ succeededOnAttempt: 2 });
  });

  describe('through the running services', () => {
    let system: System;
    beforeAll(async () => {
      system = await startSystem({ RETRY_BASE_MS: '10' });
      await system.start('api');
      await Promise.all([system.start('relay'), system.start('worker')]);
    });
    afterAll(() => system.stop());

    it('refuses a bad payload with 422', async () => {
      await expect(system.submit('flaky', { failTimes: -1 })).rejects.toThrow(/answered 422/);
    });

    it('runs to succeeded, retrying as the type says', async () => {
      const id = await system.submit('flaky', { failTimes: 1 }, { timeoutMs: 10_000 });
      await system.waitForTerminal([id]);
      const task = await system.database.db
        .selectFrom('tasks')
        .selectAll()
        .where('id', '=', id)
        .executeTakeFirstOrThrow();
      expect(task).toMatchObject({ status: 'succeeded', attempts: 2, result: { succeededOnAttempt: 2 } });
    });
  });
});
