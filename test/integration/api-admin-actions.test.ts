import { gzipSync } from 'node:zlib';
import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import { sql } from 'kysely';
import request from 'supertest';
import { amqpNames, assertTopology, insertOutbox, loadConfig, outboxMessage, type TaskStatus } from '@taskbox/shared';
import { amqpUrl, deleteTopology, testPrefix, testTopology } from '../helpers/amqp';
import { startTestApi, type TestApi } from '../helpers/api';
import { insertTaskFixture } from '../helpers/factories';
import { capturingLogger } from '../helpers/log';

const ROOT = { authorization: 'Bearer tok-root' };
const ALICE = { authorization: 'Bearer tok-alice' };
const BULK_MAX = 5;

describe('api: admin bulk actions, re-drive, counts and checks', () => {
  let api: TestApi;
  const prefix = testPrefix();
  const capture = capturingLogger();

  beforeAll(async () => {
    api = await startTestApi(
      { auth: loadConfig({ AUTH_TOKENS: 'tok-root:root:admin,tok-alice:alice' }), logger: capture.logger },
      { amqpPrefix: prefix, bulkMax: BULK_MAX },
    );
  });
  afterAll(async () => {
    await api.close();
    await deleteTopology(prefix);
  });

  // Each test works on its own task type, so their tasks never meet in a filter.
  async function tasks(n: number, f: { type: string; status: TaskStatus; owner?: string; error?: string }) {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const id = await insertTaskFixture(api.database.db, { attempts: 1, owner: 'alice', ...f });
      if (f.error) {
        const error = JSON.stringify({ name: 'Error', message: f.error });
        await api.database.db.updateTable('tasks').set({ error }).where('id', '=', id).execute();
      }
      ids.push(id);
    }
    return ids;
  }
  const statusOf = async (ids: string[]) =>
    (await api.database.db.selectFrom('tasks').select('status').where('id', 'in', ids).execute()).map((r) => r.status);
  const bulk = (action: 'retry' | 'cancel', body: object, headers = ROOT) =>
    request(api.app).post(`/admin/tasks/${action}`).set(headers).send(body);

  it('answers 403 to a non-admin on every admin endpoint, and changes nothing', async () => {
    const ids = await tasks(2, { type: 'forbidden', status: 'failed' });
    const calls = [
      bulk('retry', { filter: { type: 'forbidden' } }, ALICE),
      bulk('cancel', {}, ALICE),
      request(api.app).post('/admin/dead-letters/redrive').set(ALICE).send({}),
      request(api.app).get('/admin/status').set(ALICE),
    ];
    for (const res of await Promise.all(calls)) expect(res.status).toBe(403);
    expect(await statusOf(ids)).toEqual(['failed', 'failed']);
  });

  it('counts what a bulk retry would take on a dry run, and changes nothing', async () => {
    const ids = await tasks(3, { type: 'dry', status: 'failed' });
    await tasks(1, { type: 'dry', status: 'succeeded' });
    const res = await bulk('retry', { filter: { type: 'dry' }, dryRun: true });
    expect(res.body).toEqual({ action: 'retry', dryRun: true, matched: 3, acted: 0, limit: BULK_MAX });
    expect(await statusOf(ids)).toEqual(['failed', 'failed', 'failed']);
  });

  it('refuses a body that is not JSON (415) or none at all (400), and acts on nothing: never a dry run taken for a real one', async () => {
    const ids = await tasks(2, { type: 'not-json', status: 'pending' });
    const dryRun = JSON.stringify({ filter: { type: 'not-json' }, dryRun: true });
    const calls = [
      request(api.app).post('/admin/tasks/cancel').set(ROOT).set('content-type', 'text/plain').send(dryRun),
      request(api.app).post('/admin/tasks/cancel').set(ROOT).type('form').send({ dryRun: 'true' }),
      request(api.app).post('/admin/dead-letters/redrive').set(ROOT).set('content-type', 'text/plain').send(dryRun),
      request(api.app).post('/admin/tasks/cancel').set(ROOT),
      // A JSON body that is empty once decoded, though its Content-Length is not zero.
      request(api.app)
        .post('/admin/tasks/cancel')
        .set(ROOT)
        .set({ 'content-type': 'application/json', 'content-encoding': 'gzip' })
        .send(gzipSync(Buffer.alloc(0))),
    ];
    const answers = await Promise.all(calls);
    expect(answers.map((res) => [res.status, res.headers['content-type']])).toEqual([
      [415, expect.stringMatching(/^application\/problem\+json/)],
      [415, expect.stringMatching(/^application\/problem\+json/)],
      [415, expect.stringMatching(/^application\/problem\+json/)],
      [400, expect.stringMatching(/^application\/problem\+json/)],
      [400, expect.stringMatching(/^application\/problem\+json/)],
    ]);
    expect(answers[3]!.body).toMatchObject({
      title: 'Missing Body',
      detail: 'send the filter as an application/json body',
    });
    expect(await statusOf(ids)).toEqual(['pending', 'pending']);
  });

  it('retries at most BULK_ACTION_MAX tasks per call, oldest first, and the rest on the next call', async () => {
    const ids = await tasks(7, { type: 'capped', status: 'failed' });
    const first = await bulk('retry', { filter: { type: 'capped' } });
    expect(first.body).toMatchObject({ matched: 7, acted: 5 });
    expect(await statusOf(ids.slice(0, 5))).toEqual(Array(5).fill('pending'));
    expect(await statusOf(ids.slice(5))).toEqual(['failed', 'failed']);
    expect((await bulk('retry', { filter: { type: 'capped' } })).body).toMatchObject({ matched: 2, acted: 2 });
    const outbox = await api.database.db
      .selectFrom('outbox')
      .select(['task_id', 'message_id'])
      .where('task_id', 'in', ids)
      .execute();
    expect(outbox).toHaveLength(7);
    // Each retried task's line names the message of its next attempt, and the task's correlation id.
    const retried = capture.lines.filter((l) => l.message === 'task retried' && ids.includes(l.taskId as string));
    expect(retried.map((l) => [l.taskId, l.messageId, l.correlationId]).sort()).toEqual(
      outbox.map((o) => [o.task_id, o.message_id, `corr-${o.task_id}`]).sort(),
    );
    expect((await bulk('retry', { limit: BULK_MAX + 1 })).status).toBe(422);
    expect((await bulk('retry', { filter: { status: 'pending' } })).status).toBe(422);
  });

  it('takes only the tasks that match every filter (owner, status, created before and after, error text), as GET /tasks lists them', async () => {
    const before = new Date().toISOString();
    const [timeout] = await tasks(1, { type: 'filtered', status: 'failed', error: 'upstream TIMEOUT after 30 s' });
    await tasks(1, { type: 'filtered', status: 'failed', error: 'bad input' });
    await tasks(1, { type: 'filtered', status: 'failed', owner: 'bob', error: 'timeout' });
    await tasks(1, { type: 'filtered', status: 'cancelled', error: 'timeout' });
    const filter = { type: 'filtered', owner: 'alice', status: 'failed', errorContains: 'timeout' };
    const matched = async (extra: object) =>
      (await bulk('retry', { filter: { ...filter, ...extra }, dryRun: true })).body.matched as number;
    expect(await matched({ createdAfter: before })).toBe(1);
    expect(await matched({ createdBefore: before })).toBe(0);
    expect(await matched({ errorContains: '%' })).toBe(0);
    // The list takes the same filter, so a page shows what a bulk action would take.
    const listed = await request(api.app).get('/tasks').query(filter).set(ROOT);
    expect(listed.body.items.map((t: { id: string }) => t.id)).toEqual([timeout]);
    expect((await bulk('retry', { filter })).body).toMatchObject({ matched: 1, acted: 1 });
    expect(await statusOf([timeout as string])).toEqual(['pending']);
  });

  it('cancels pending tasks at once and asks processing ones to stop, and logs each with the admin’s name', async () => {
    const [pending] = await tasks(1, { type: 'cancelled-in-bulk', status: 'pending' });
    const [running] = await tasks(1, { type: 'cancelled-in-bulk', status: 'processing' });
    const res = await bulk('cancel', { filter: { type: 'cancelled-in-bulk' } });
    expect(res.body).toMatchObject({ matched: 2, acted: 2 });
    const rows = await api.database.db
      .selectFrom('tasks')
      .select(['id', 'status', sql<boolean>`cancel_requested_at IS NOT NULL`.as('asked')])
      .where('type', '=', 'cancelled-in-bulk')
      .execute();
    expect(rows).toEqual(
      expect.arrayContaining([
        { id: pending, status: 'cancelled', asked: true },
        { id: running, status: 'processing', asked: true },
      ]),
    );
    const lines = capture.lines.filter((l) => l.taskId === pending || l.taskId === running);
    expect(lines).toEqual([
      expect.objectContaining({ by: 'root', admin: true, owner: 'alice', bulk: true }),
      expect.objectContaining({ by: 'root', admin: true, owner: 'alice', bulk: true }),
    ]);
    // Each with the task's correlation id, and the id of the request that asked.
    expect(lines.map((l) => [l.correlationId, l.requestId])).toEqual([
      [`corr-${lines[0]!.taskId as string}`, res.headers['x-request-id']],
      [`corr-${lines[1]!.taskId as string}`, res.headers['x-request-id']],
    ]);
    expect(capture.lines.find((l) => l.message === 'bulk cancel')).toMatchObject({ by: 'root', acted: 2 });
    // The running task was asked once: a second call finds nothing left to cancel.
    expect((await bulk('cancel', { filter: { type: 'cancelled-in-bulk' } })).body).toMatchObject({
      matched: 0,
      acted: 0,
    });
  });

  it('removes the unpublished messages of the pending tasks it cancels, and keeps the published ones', async () => {
    const ids = await tasks(2, { type: 'scheduled-in-bulk', status: 'pending' });
    const published = ids[1] as string;
    const messages = ids.map((id) => outboxMessage({ id, type: 'scheduled-in-bulk' }, 2, { correlationId: null }));
    // Due in an hour, as a scheduled task's; the second one's was published already.
    await insertOutbox(api.database.db, messages, 3_600_000);
    await api.database.db
      .updateTable('outbox')
      .set({ published_at: sql`now()` })
      .where('task_id', '=', published)
      .execute();
    expect((await bulk('cancel', { filter: { type: 'scheduled-in-bulk' } })).body).toMatchObject({ acted: 2 });
    const left = await api.database.db.selectFrom('outbox').select('task_id').where('task_id', 'in', ids).execute();
    expect(left).toEqual([{ task_id: published }]);
  });

  it('counts tasks by type and status: the caller’s own, or for an admin every owner’s or one owner’s', async () => {
    await tasks(2, { type: 'counted', status: 'succeeded' });
    await tasks(1, { type: 'counted', status: 'succeeded', owner: 'bob' });
    const counted = async (path: string, headers: Record<string, string>) =>
      ((await request(api.app).get(path).set(headers)).body.counts as { type: string; count: number }[])
        .filter((c) => c.type === 'counted')
        .map((c) => c.count);
    expect(await counted('/tasks/counts', ALICE)).toEqual([2]);
    expect(await counted('/tasks/counts', ROOT)).toEqual([3]);
    expect(await counted('/tasks/counts?owner=bob', ROOT)).toEqual([1]);
    expect((await request(api.app).get('/tasks/counts?owner=bob').set(ALICE)).status).toBe(403);
    // Pages that poll share a count: it says when it began.
    const { countedAt } = (await request(api.app).get('/tasks/counts').set(ALICE)).body as { countedAt: string };
    expect(Date.parse(countedAt)).toBeLessThanOrEqual(Date.now());
  });

  it('gives an admin the outbox backlog and the doctor’s checks, with hints', async () => {
    const res = await request(api.app).get('/admin/status').set(ROOT);
    expect(res.status).toBe(200);
    expect(res.body.outbox).toEqual({ count: expect.any(Number), oldestAgeSeconds: expect.any(Number) });
    const byName = new Map((res.body.checks as { name: string }[]).map((c) => [c.name, c]));
    expect(byName.get('database reachable')).toMatchObject({ status: 'ok' });
    // No relay or worker ever declared this test's queues: the doctor says so, and what to do.
    expect(byName.get('topology declared')).toMatchObject({
      status: 'fail',
      hint: expect.stringMatching(/start the relay or the worker/),
    });
  });

  it('re-drives the dead letters: republishes those whose task is pending, drops the rest with a reason', async () => {
    const connection = await amqp.connect(amqpUrl());
    try {
      const channel = await connection.createConfirmChannel();
      const names = amqpNames(prefix);
      await assertTopology(channel, testTopology(prefix));
      const [pending] = await tasks(1, { type: 'echo', status: 'pending' });
      const [done] = await tasks(1, { type: 'echo', status: 'succeeded' });
      for (const body of [
        { taskId: pending, type: 'echo', attempt: 2 },
        { taskId: done, type: 'echo', attempt: 1 },
      ]) {
        channel.publish(names.deadExchange, 'echo', Buffer.from(JSON.stringify(body)), { messageId: randomUUID() });
      }
      await channel.waitForConfirms();
      const redrive = (body: object) => request(api.app).post('/admin/dead-letters/redrive').set(ROOT).send(body);

      expect((await redrive({ dryRun: true })).body).toEqual({
        dryRun: true,
        republished: 1,
        dropped: { 'task succeeded': 1 },
      });
      expect((await channel.checkQueue(names.deadQueue)).messageCount).toBe(2);
      expect((await redrive({})).body).toEqual({ dryRun: false, republished: 1, dropped: { 'task succeeded': 1 } });
      expect((await channel.checkQueue(names.deadQueue)).messageCount).toBe(0);
      const outbox = await api.database.db
        .selectFrom('outbox')
        .select('payload')
        .where('task_id', 'in', [pending as string, done as string])
        .execute();
      expect(outbox).toEqual([{ payload: { taskId: pending, type: 'echo', attempt: 2 } }]);
      expect(capture.lines.find((l) => l.message === 'dead letters re-driven' && l.dryRun === false)).toMatchObject({
        by: 'root',
        admin: true,
      });
    } finally {
      await connection.close();
    }
  });

  it('answers 503 with Retry-After, not 500, when RabbitMQ stops the re-drive (a dead-letter queue deleted)', async () => {
    const connection = await amqp.connect(amqpUrl());
    try {
      const channel = await connection.createChannel();
      await assertTopology(channel, testTopology(prefix));
      await channel.deleteQueue(amqpNames(prefix).deadQueue);
      const res = await request(api.app).post('/admin/dead-letters/redrive').set(ROOT).send({});
      expect(res.status).toBe(503);
      expect(res.headers['retry-after']).toBe('5');
      expect(res.body.detail).toMatch(
        /^RabbitMQ stopped the re-drive \(.*NOT_FOUND.*\); until then it re-drove 0; dropped none$/,
      );
    } finally {
      await connection.close();
    }
  });
});
