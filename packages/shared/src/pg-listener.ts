import pg from 'pg';
import { toError } from './errors';
import { LISTEN_BACKOFF, backoffMs, sleep, unlessAborted, withTimeout, type Service } from './lifecycle';
import type { Logger } from './logger';

export interface PgListener extends Service {
  listening(): boolean;
}

export interface PgListenerOptions {
  url: string;
  /** One channel, or several on the same connection. */
  channel: string | readonly string[];
  logger: Logger;
  /** Called with each NOTIFY payload on the channel(s). */
  onNotify(payload: string, channel: string): void;
  /** Called after each (re)connect: NOTIFYs sent while disconnected are gone, so look again. */
  onConnect(): void;
}

const HEARTBEAT_MS = 10_000;
// A half-open connection (the server vanished without a FIN) never answers: give up and reconnect.
const HEARTBEAT_TIMEOUT_MS = 5000;

/**
 * LISTENs on a dedicated pg.Client (a pooled client would be handed to others and lose the LISTEN).
 * After a disconnect it reconnects with capped, jittered backoff on a NEW client and calls `onConnect`
 * right after each (re)connect. A heartbeat checks pg_listening_channels() so a half-open connection
 * does not silently stop the notifications.
 *
 * Notifications are an optimisation: every user of this polls or times out anyway, so a lost NOTIFY
 * costs latency, never correctness. LISTEN does not work through a transaction-pooling PgBouncer;
 * point DATABASE_URL at Postgres directly or at a session-pooled port.
 */
export function createPgListener(options: PgListenerOptions): PgListener {
  const { url, logger, onNotify, onConnect } = options;
  const channels: readonly string[] = typeof options.channel === 'string' ? [options.channel] : options.channel;
  const channel = channels.join(',');
  let client: pg.Client | null = null;
  let running: Promise<void> | null = null;
  const stopController = new AbortController();
  const { signal: stop } = stopController;

  async function run(): Promise<void> {
    let failures = 0;
    while (!stop.aborted) {
      try {
        client = await connectOnce(url, channels, onNotify);
        if (failures > 0) logger.info('listener reconnected', { channel });
        failures = 0;
        onConnect();
        await heartbeatUntilBroken(client, channels, stop);
      } catch (err) {
        if (stop.aborted) break;
        if (failures === 0)
          logger.warn('listener lost its connection; polling until it is back', {
            channel,
            error: toError(err).message,
          });
        failures++;
      } finally {
        const c = client;
        client = null;
        await c?.end().catch(() => undefined);
      }
      if (!stop.aborted) await sleep(backoffMs(failures, LISTEN_BACKOFF), stop);
    }
  }

  return {
    async start() {
      if (running || stop.aborted) return;
      running = run();
    },
    async stop() {
      stopController.abort();
      await client?.end().catch(() => undefined);
      await running;
    },
    listening: () => client !== null,
  };
}

async function connectOnce(
  url: string,
  channels: readonly string[],
  onNotify: PgListenerOptions['onNotify'],
): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  c.on('error', () => undefined); // surfaced through 'end' below
  await c.connect();
  c.on('notification', (n) => {
    if (channels.includes(n.channel)) onNotify(n.payload ?? '', n.channel);
  });
  try {
    for (const name of channels) await c.query(`LISTEN ${pg.escapeIdentifier(name)}`);
  } catch (err) {
    // Refused (a standby in recovery, after a failover): this connection is closed, not left open.
    await c.end().catch(() => undefined);
    throw err;
  }
  return c;
}

/** Returns when stopped; throws when the connection ends, stops answering or no longer listens. */
async function heartbeatUntilBroken(c: pg.Client, channels: readonly string[], stop: AbortSignal): Promise<void> {
  // An abort, not a promise that rejects: the connection lives for hours, and each heartbeat waits on it.
  const ended = new AbortController();
  c.once('end', () => ended.abort());
  while (!stop.aborted) {
    await unlessAborted(sleep(HEARTBEAT_MS, stop), ended.signal);
    if (stop.aborted) return;
    if (ended.signal.aborted) throw new Error('connection ended');
    const query = c.query<{ ch: string }>('SELECT pg_listening_channels() AS ch');
    const answer = await unlessAborted(withTimeout(query, HEARTBEAT_TIMEOUT_MS, 'heartbeat'), ended.signal);
    if (!answer) throw new Error('connection ended');
    if (!channels.every((name) => answer.rows.some((r) => r.ch === name))) throw new Error('no longer listening');
  }
}
