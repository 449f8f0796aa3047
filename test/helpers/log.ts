import { Writable } from 'node:stream';
import winston from 'winston';
import type { Logger } from '@taskbox/shared';
import type { LogLine } from './services';

/** A logger for an in-process part that keeps its JSON lines, for tests that assert on what was logged. */
export function capturingLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()) as LogLine);
      done();
    },
  });
  const logger = winston.createLogger({
    level: 'info',
    format: winston.format.json(),
    transports: [new winston.transports.Stream({ stream })],
  });
  return { logger, lines };
}
