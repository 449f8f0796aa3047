import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import { amqpNames } from '@taskbox/shared';
import { amqpUrl } from '../helpers/amqp';
import type { LogLine } from '../helpers/services';
import { startStack, type Stack } from '../helpers/stack';

describe('one correlation id follows a task through api, relay and worker logs', () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack(
      { RETRY_BASE_MS: '20' },
      { relay: { LOG_LEVEL: 'debug' }, worker: { LOG_LEVEL: 'debug' } },
    );
  });

  afterAll(async () => {
    await stack.stop();
  });

  it('echoes X-Request-Id and puts it, with the task id and message id, on every log line about the task, retries included', async () => {
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const res = await fetch(`${stack.urls.api}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'my-corr-123', traceparent },
      body: JSON.stringify({ type: 'flaky', payload: { failTimes: 1 } }),
    });
    expect(res.status).toBe(202);
    expect(res.headers.get('x-request-id')).toBe('my-corr-123');
    const task = (await res.json()) as { id: string; correlationId: string };
    expect(task.correlationId).toBe('my-corr-123');

    await stack.worker.waitForLog('the task to succeed', (l) => l.taskId === task.id && l.message === 'task succeeded');
    const outbox = await stack.database.db
      .selectFrom('outbox')
      .select(['message_id', 'headers'])
      .where('task_id', '=', task.id)
      .execute();
    const messageIds = outbox.map((o) => o.message_id);
    expect(messageIds).toHaveLength(2); // the first attempt and its retry
    // The retry, written by the worker without a request, stays in the request's trace.
    expect(outbox.map((o) => o.headers)).toEqual([
      { correlationId: 'my-corr-123', traceparent },
      { correlationId: 'my-corr-123', traceparent },
    ]);

    const about = (logs: LogLine[]) => logs.filter((l) => JSON.stringify(l).includes(task.id));
    const accepted = about(stack.api.logs);
    expect(accepted).toEqual([expect.objectContaining({ message: 'task accepted', correlationId: 'my-corr-123' })]);
    expect(messageIds).toContain(accepted[0]!.messageId);

    const relayLines = about(stack.relay.logs);
    const workerLines = about(stack.worker.logs);
    expect(relayLines.map((l) => l.message)).toEqual(['message published', 'message published']);
    expect(workerLines.map((l) => l.message)).toEqual(
      expect.arrayContaining(['task started', 'task attempt failed; retry scheduled', 'task succeeded']),
    );
    for (const line of [...relayLines, ...workerLines]) {
      expect(line).toMatchObject({ taskId: task.id, correlationId: 'my-corr-123' });
      expect(messageIds).toContain(line.messageId);
    }
    expect(new Set(workerLines.map((l) => l.messageId))).toEqual(new Set(messageIds));
  });

  /** The traceparent stored on the task submitted with this header, and the one its message carries. */
  async function traceparentsFor(traceparent: string) {
    const res = await fetch(`${stack.urls.api}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', traceparent },
      body: JSON.stringify({ type: 'echo', payload: {} }),
    });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    const task = await stack.database.db
      .selectFrom('tasks')
      .select('traceparent')
      .where('id', '=', id)
      .executeTakeFirstOrThrow();
    const outbox = await stack.database.db
      .selectFrom('outbox')
      .select('headers')
      .where('task_id', '=', id)
      .executeTakeFirstOrThrow();
    return { task: task.traceparent, message: (outbox.headers as { traceparent?: string }).traceparent ?? null };
  }

  const valid = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

  it('keeps a traceparent that is not a valid W3C one off the task and its messages', async () => {
    const invalid = [
      `00-${'a'.repeat(14_000)}`,
      `${valid}, ${valid}`, // two headers, joined
      `${valid}-more`, // version 00 has nothing after the flags
      valid.toUpperCase(),
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      `ff${valid.slice(2)}`,
      `01${valid.slice(2)}, ${valid}`, // a later version, joined to another header
    ];
    for (const traceparent of invalid) {
      expect(await traceparentsFor(traceparent)).toEqual({ task: null, message: null });
    }
  });

  it('passes a later version of traceparent on as version 00, the trace and parent kept', async () => {
    expect(await traceparentsFor(`cc${valid.slice(2)}-what-version-cc-adds`)).toEqual({ task: valid, message: valid });
    expect(await traceparentsFor(`01${valid.slice(2)}`)).toEqual({ task: valid, message: valid });
  });

  it('names the task, message and correlation of a message it dead-letters unread, from its properties', async () => {
    const connection = await amqp.connect(amqpUrl());
    try {
      const channel = await connection.createConfirmChannel();
      const taskId = randomUUID();
      const properties = { messageId: 'm-unread', correlationId: 'c-unread', headers: { 'x-task-id': taskId } };
      channel.publish(amqpNames(stack.prefix).exchange, 'echo', Buffer.from('not json{'), properties);
      await channel.waitForConfirms();
      const line = await stack.worker.waitForLog('the dead letter', (l) => l.message === 'message dead-lettered');
      expect(line).toMatchObject({ taskId, messageId: 'm-unread', correlationId: 'c-unread', service: 'worker' });
    } finally {
      await connection.close();
    }
  });

  it('generates a request id when none is sent, and answers with it', async () => {
    const res = await fetch(`${stack.urls.api}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'echo', payload: {} }),
    });
    const id = res.headers.get('x-request-id');
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(((await res.json()) as { correlationId: string }).correlationId).toBe(id);
  });

  it('stops api, relay and worker with exit code 0', async () => {
    expect(await stack.stop()).toEqual([0, 0, 0]);
  });
});
