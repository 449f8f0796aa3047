import { sql } from 'kysely';
import request from 'supertest';
import { loadConfig, type TaskStatus } from '@taskbox/shared';
import { amqpUrl, deleteTopology, testPrefix } from '../helpers/amqp';
import { startTestApi, type TestApi } from '../helpers/api';
import { insertTaskFixture } from '../helpers/factories';
import { capturingLogger } from '../helpers/log';
import { startService } from '../helpers/services';
import { waitFor } from '../helpers/wait';

const ALICE = { authorization: 'Bearer tok-alice' };
const BOB = { authorization: 'Bearer tok-bob' };
const ROOT = { authorization: 'Bearer tok-root' };

describe('api: POST /tasks/{id}/retry', () => {
  let api: TestApi;
  const capture = capturingLogger();

  beforeAll(async () => {
    api = await startTestApi({
      auth: loadConfig({ AUTH_TOKENS: 'tok-alice:alice,tok-bob:bob,tok-root:root:admin' }),
      logger: capture.logger,
    });
  });
  afterAll(async () => {
    await api.close();
  });

  const failed = (extra: { attempts?: number; maxAttempts?: number; status?: TaskStatus; type?: string } = {}) =>
    insertTaskFixture(api.database.db, { owner: 'alice', status: 'failed', attempts: 3, maxAttempts: 3, ...extra });
  const outbox = (id: string) =>
    api.database.db.selectFrom('outbox').select('payload').where('task_id', '=', id).execute();
  const messageIds = async (id: string) =>
    (await api.database.db.selectFrom('outbox').select('message_id').where('task_id', '=', id).execute()).map(
      (o) => o.message_id,
    );
  const retries = (id: string) =>
    api.database.db.selectFrom('task_retries').selectAll().where('task_id', '=', id).execute();
  const retry = (id: string, headers: Record<string, string> = ALICE) =>
    request(api.app).post(`/tasks/${id}/retry`).set(headers);

  it('puts a failed task back to pending with a fresh budget of attempts and an outbox row for its next attempt', async () => {
    const id = await failed();
    await api.database.db
      .updateTable('tasks')
      .set({ error: JSON.stringify({ name: 'Error', message: 'boom' }), finished_at: sql`now()` })
      .where('id', '=', id)
      .execute();
    const res = await retry(id, { ...ALICE, 'x-request-id': 'retry-request-1' });
    expect(res.status).toBe(202);
    expect(res.headers.location).toBe(`/tasks/${id}`);
    // The line names the new message, the task's correlation id, and the request that asked.
    expect(capture.lines.find((l) => l.message === 'task retried' && l.taskId === id)).toMatchObject({
      messageId: (await messageIds(id))[0],
      correlationId: `corr-${id}`,
      requestId: 'retry-request-1',
      attempt: 4,
      by: 'alice',
    });
    expect(res.body).toMatchObject({ status: 'pending', attempts: 3, maxAttempts: 6, finishedAt: null });
    expect(await outbox(id)).toEqual([{ payload: { taskId: id, type: 'echo', attempt: 4 } }]);
    const timeline = (await request(api.app).get(`/tasks/${id}`).set(ALICE)).body.timeline as unknown[];
    expect(timeline).toContainEqual(expect.objectContaining({ event: 'retried', retry: 1, by: 'alice' }));
  });

  it('gives each later retry the same budget again, counted from the attempts the task has', async () => {
    const id = await failed({ maxAttempts: 2, attempts: 2 });
    expect((await retry(id)).body.maxAttempts).toBe(4);
    await api.database.db.updateTable('tasks').set({ status: 'failed', attempts: 4 }).where('id', '=', id).execute();
    expect((await retry(id)).body).toMatchObject({ attempts: 4, maxAttempts: 6 });
    expect((await retries(id)).map((r) => [r.retry, r.after_attempt])).toEqual([
      [1, 2],
      [2, 4],
    ]);
  });

  it('takes back the attempts a shutdown added, so the budget stays the one the task was created with', async () => {
    // Created with maxAttempts 2; a deploy interrupted one attempt (raising max_attempts to 3), then 3 failed.
    const id = await failed({ maxAttempts: 3, attempts: 3 });
    await api.database.db.updateTable('tasks').set({ interrupted: 1 }).where('id', '=', id).execute();
    expect((await retry(id)).body).toMatchObject({ attempts: 3, maxAttempts: 5 });
    const row = await api.database.db.selectFrom('tasks').select('interrupted').where('id', '=', id).executeTakeFirst();
    expect(row?.interrupted).toBe(0);
  });

  it('retries a cancelled task, whose cancel request is then gone', async () => {
    const id = await failed({ status: 'cancelled', attempts: 1 });
    await api.database.db
      .updateTable('tasks')
      .set({ cancel_requested_at: sql`now()` })
      .where('id', '=', id)
      .execute();
    expect((await retry(id)).body).toMatchObject({ status: 'pending', cancelRequested: false, maxAttempts: 4 });
  });

  it.each(['pending', 'processing', 'succeeded'] as const)(
    'answers 409 for a %s task and writes nothing',
    async (status) => {
      const id = await failed({ status, attempts: status === 'pending' ? 0 : 1 });
      const res = await retry(id);
      expect(res.status).toBe(409);
      expect(res.body).toMatchObject({ title: 'Task Not Retryable' });
      expect(await outbox(id)).toEqual([]);
      expect(await retries(id)).toEqual([]);
    },
  );

  it("answers 404 for another owner's task and for none, and lets an admin retry anyone's", async () => {
    const id = await failed();
    expect((await retry(id, BOB)).status).toBe(404);
    expect((await retry('00000000-0000-4000-8000-000000000000')).status).toBe(404);
    expect(await retries(id)).toEqual([]);
    expect((await retry(id, ROOT)).status).toBe(202);
    expect((await retries(id)).map((r) => r.requested_by)).toEqual(['root']);
  });

  it('replays a retry sent again with its Idempotency-Key instead of retrying twice', async () => {
    const id = await failed();
    const first = await retry(id, { ...ALICE, 'idempotency-key': 'retry-1' });
    expect(first.status).toBe(202);
    const again = await retry(id, { ...ALICE, 'idempotency-key': 'retry-1' });
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    expect(again.status).toBe(202);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body).toMatchObject({ status: 'pending', maxAttempts: 6 });
    expect(await outbox(id)).toHaveLength(1);
    expect((await retry(id, { ...ALICE, 'idempotency-key': 'retry-2' })).status).toBe(409);
  });

  it('makes one retry of ten sent at once: one 202, nine 409, one outbox row', async () => {
    const id = await failed();
    const answers = await Promise.all(Array.from({ length: 10 }, () => retry(id)));
    expect(answers.map((a) => a.status).sort()).toEqual([202, ...Array(9).fill(409)]);
    expect(await outbox(id)).toHaveLength(1);
    expect(await retries(id)).toHaveLength(1);
  });
});

describe('api: concurrent retries of a failed task run one new attempt', () => {
  it('runs attempt 2 of a flaky task once, which succeeds, after ten retries at once', async () => {
    const api = await startTestApi();
    const prefix = testPrefix();
    const env = { DATABASE_URL: api.database.url, AMQP_URL: amqpUrl(), AMQP_PREFIX: prefix, RELAY_POLL_MS: '200' };
    const services = [startService('relay', env), startService('worker', env)];
    try {
      await services[1]?.waitForLog('consuming', (l) => l.message === 'consuming');
      const created = await request(api.app)
        .post('/tasks')
        .send({ type: 'flaky', payload: { failTimes: 1 }, maxAttempts: 1 });
      const id = created.body.id as string;
      const status = async () => (await request(api.app).get(`/tasks/${id}`)).body as { status: string };
      await waitFor('the first attempt to fail the task', async () => (await status()).status === 'failed');
      const answers = await Promise.all(Array.from({ length: 10 }, () => request(api.app).post(`/tasks/${id}/retry`)));
      expect(answers.filter((a) => a.status === 202)).toHaveLength(1);
      await waitFor('the retry to succeed', async () => (await status()).status === 'succeeded');
      const attempts = await api.database.db
        .selectFrom('task_attempts')
        .select(['attempt', 'outcome'])
        .where('task_id', '=', id)
        .orderBy('attempt')
        .execute();
      expect(attempts).toEqual([
        { attempt: 1, outcome: 'failed' },
        { attempt: 2, outcome: 'succeeded' },
      ]);
    } finally {
      await Promise.all(services.map((s) => s.stop()));
      await deleteTopology(prefix);
      await api.close();
    }
  });
});
