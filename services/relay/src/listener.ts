import pg from 'pg';
import { OUTBOX_CHANNEL, backoffMs, sleep, toError, type Logger } from '@taskbox/shared';

export interface Listener {
  start(): void;
  stop(): Promise<void>;
  listening(): boolean;
}

const HEARTBEAT_MS = 10_000;

/**
 * LISTENs for outbox wake-ups on a dedicated pg.Client (a pooled client would be handed to others
 * and lose the LISTEN). After a disconnect it reconnects with capped, jittered backoff on a NEW client
 * and calls `onWake` right after each (re)connect, because NOTIFYs sent while it was away are gone.
 * A heartbeat checks pg_listening_channels() so a half-open connection does not silently stop wake-ups.
 *
 * Wake-ups are an optimisation: the relay also polls, so a lost NOTIFY delays a message by at most one
 * poll interval. LISTEN does not work through a transaction-pooling PgBouncer; point DATABASE_URL at
 * Postgres directly or at a session-pooled port, or rely on polling.
 */
export function createListener(url: string, logger: Logger, onWake: () => void): Listener {
  let client: pg.Client | null = null;
  let stopping = false;
  let running: Promise<void> | null = null;
  const stopController = new AbortController();

  async function connectOnce(): Promise<pg.Client> {
    const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
    c.on('error', () => undefined); // surfaced through 'end' below
    await c.connect();
    c.on('notification', () => onWake());
    await c.query(`LISTEN ${OUTBOX_CHANNEL}`);
    return c;
  }

  async function run(): Promise<void> {
    let failures = 0;
    while (!stopping) {
      try {
        client = await connectOnce();
        if (failures > 0) logger.info('outbox listener reconnected');
        failures = 0;
        onWake();
        await heartbeatUntilBroken(client);
      } catch (err) {
        if (stopping) break;
        if (failures === 0)
          logger.warn('outbox listener lost its connection; polling until it is back', {
            error: toError(err).message,
          });
        failures++;
      } finally {
        const c = client;
        client = null;
        await c?.end().catch(() => undefined);
      }
      if (!stopping) await sleep(backoffMs(failures, 250, 10_000), stopController.signal);
    }
  }

  async function heartbeatUntilBroken(c: pg.Client): Promise<void> {
    const ended = new Promise<never>((_, reject) => c.once('end', () => reject(new Error('connection ended'))));
    ended.catch(() => undefined);
    while (!stopping) {
      await Promise.race([sleep(HEARTBEAT_MS, stopController.signal), ended]);
      if (stopping) return;
      const { rows } = await Promise.race([c.query<{ ch: string }>('SELECT pg_listening_channels() AS ch'), ended]);
      if (!rows.some((r) => r.ch === OUTBOX_CHANNEL)) throw new Error('no longer listening');
    }
  }

  return {
    start() {
      if (running || stopping) return;
      running = run();
    },
    async stop() {
      stopping = true;
      stopController.abort();
      await client?.end().catch(() => undefined);
      await running;
    },
    listening: () => client !== null,
  };
}
