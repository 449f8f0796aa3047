import { PassThrough } from 'node:stream';
import winston from 'winston';
import { createLogger, type Config } from '@taskbox/shared';

/** Logs one line about a task with the given format and returns what was written. */
async function oneLine(format: Config['LOG_FORMAT']): Promise<string> {
  const logger = createLogger('worker', { LOG_LEVEL: 'info', LOG_FORMAT: format });
  const out = new PassThrough();
  const chunks: string[] = [];
  out.on('data', (c: Buffer) => chunks.push(c.toString('utf8')));
  logger.clear().add(new winston.transports.Stream({ stream: out }));
  logger.child({ taskId: 't-1', messageId: 'm-1', correlationId: 'my-corr-123' }).info('task started', { attempt: 1 });
  await new Promise((resolve) => setImmediate(resolve));
  return chunks.join('');
}

describe('LOG_FORMAT', () => {
  it('json (the default) writes one JSON object per line with the task context', async () => {
    const line = JSON.parse(await oneLine('json')) as Record<string, unknown>;
    expect(line).toMatchObject({
      level: 'info',
      message: 'task started',
      service: 'worker',
      taskId: 't-1',
      messageId: 'm-1',
      correlationId: 'my-corr-123',
      attempt: 1,
    });
    expect(typeof line.timestamp).toBe('string');
  });

  it('pretty writes a readable line for a laptop: time, service, level, message, then the context', async () => {
    const text = await oneLine('pretty');
    expect(() => JSON.parse(text)).toThrow();
    // eslint-disable-next-line no-control-regex
    const plain = text.replace(/\u001b\[\d+m/g, '').trim();
    expect(plain).toMatch(/^\d\d:\d\d:\d\d\.\d{3} worker info task started /);
    expect(plain).toContain('"correlationId":"my-corr-123"');
    expect(plain).toContain('"taskId":"t-1"');
  });
});
