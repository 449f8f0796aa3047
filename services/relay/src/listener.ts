import { OUTBOX_CHANNEL, createPgListener, type Logger, type PgListener } from '@taskbox/shared';

export type Listener = PgListener;

/**
 * Outbox wake-ups: any NOTIFY on the outbox channel, and every (re)connect, asks the relay loop to
 * drain. The relay also polls, so a lost NOTIFY delays a message by at most one poll interval.
 */
export function createListener(url: string, logger: Logger, onWake: () => void): Listener {
  return createPgListener({ url, channel: OUTBOX_CHANNEL, logger, onNotify: onWake, onConnect: onWake });
}
