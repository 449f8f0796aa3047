import winston from 'winston';
import type { Config } from './config';

export type Logger = winston.Logger;

export function createLogger(service: string, config: Pick<Config, 'LOG_LEVEL' | 'LOG_FORMAT'>): Logger {
  const format =
    config.LOG_FORMAT === 'pretty'
      ? winston.format.combine(
          winston.format.timestamp({ format: 'HH:mm:ss.SSS' }),
          winston.format.colorize(),
          winston.format.printf(({ timestamp, level, message, service: s, ...rest }) => {
            const extra = Object.keys(rest).length > 0 ? ` ${JSON.stringify(rest)}` : '';
            return `${String(timestamp)} ${String(s)} ${level} ${String(message)}${extra}`;
          }),
        )
      : winston.format.combine(
          winston.format.timestamp(),
          winston.format.errors({ stack: true }),
          winston.format.json(),
        );
  return winston.createLogger({
    level: config.LOG_LEVEL,
    defaultMeta: { service },
    format,
    transports: [new winston.transports.Console()],
  });
}
