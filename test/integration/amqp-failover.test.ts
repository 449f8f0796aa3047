import { PassThrough } from 'node:stream';
import type { ChannelModel, RecoveringChannelModel } from 'amqplib';
import winston from 'winston';
import { connectAmqp, createLogger } from '@taskbox/shared';
import { amqpUrl } from '../helpers/amqp';
import { closedPort } from '../helpers/doctor';
import { startFaultProxy, type FaultProxy } from '../helpers/proxy';
import { waitFor } from '../helpers/wait';

type Line = { level: string; message: string; url?: string };

/** A debug logger whose lines the test reads. */
function capturingLogger() {
  const logger = createLogger('test', { LOG_LEVEL: 'debug', LOG_FORMAT: 'json' });
  const out = new PassThrough();
  const lines: Line[] = [];
  out.on('data', (chunk: Buffer) => {
    for (const text of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(text) as Line);
  });
  logger.clear().add(new winston.transports.Stream({ stream: out }));
  return { logger, lines };
}

/** The broker URL with another password, to check that none reaches the logs. */
function withPassword(url: string, password: string): string {
  const u = new URL(url);
  u.password = password;
  return u.toString();
}

describe('AMQP_URLS failover', () => {
  const proxies: FaultProxy[] = [];
  let connection: RecoveringChannelModel | undefined;
  const broker = new URL(amqpUrl());

  async function proxy(): Promise<FaultProxy> {
    const p = await startFaultProxy(broker.hostname, Number(broker.port || 5672));
    proxies.push(p);
    return p;
  }

  /** Connects to `urls`; each setup opens a channel, proving the connection works, and is counted. */
  async function connect(urls: string[]) {
    const { logger, lines } = capturingLogger();
    const setups: ChannelModel[] = [];
    connection = await connectAmqp(urls, logger, async (model) => {
      await (await model.createChannel()).close();
      setups.push(model);
    });
    const connectedTo = () => lines.filter((l) => l.message === 'rabbitmq connected').map((l) => l.url);
    return { lines, setups, connectedTo };
  }

  afterEach(async () => {
    await connection?.close();
    connection = undefined;
    for (const p of proxies.splice(0)) await p.close();
  });

  it('connects to the first node that answers, and never logs a password', async () => {
    const dead = `amqp://guest:s3cret@127.0.0.1:${await closedPort()}`;
    const { lines, setups, connectedTo } = await connect([dead, amqpUrl()]);

    await waitFor('a connection through the second URL', () => setups.length === 1);
    expect(connectedTo()).toEqual([withPassword(amqpUrl(), '***')]);
    expect(lines.some((l) => l.message === 'rabbitmq unreachable; retrying' && /:\*\*\*@/.test(l.url ?? ''))).toBe(
      true,
    );
    const logged = JSON.stringify(lines);
    expect(logged).not.toContain('s3cret');
    expect(logged).not.toContain(`:${broker.password}@`);
  });

  it('survives the broker resetting the connection while its setup runs, and sets up again once back', async () => {
    const p = await proxy();
    const { logger, lines } = capturingLogger();
    let attempts = 0;
    const set: ChannelModel[] = [];
    connection = await connectAmqp([p.url(amqpUrl())], logger, async (model) => {
      attempts += 1;
      // The first attempt loses its connection in the middle of its setup: an 'error' on the model
      // before amqplib listens for it, which crashed the process (the test with it) before.
      if (attempts === 1) await p.cut();
      await (await model.createChannel()).close();
      set.push(model);
    });
    await waitFor('the first setup to fail', () => lines.some((l) => l.message === 'rabbitmq unreachable; retrying'));
    await p.restore();
    await waitFor('a setup that works', () => set.length === 1, 20_000);
    expect(attempts).toBeGreaterThanOrEqual(2);
  });

  it('moves to the next node when its node goes silent (a frozen host), within two default heartbeats', async () => {
    const [a, b] = [await proxy(), await proxy()];
    const { setups, connectedTo } = await connect([a.url(amqpUrl()), b.url(amqpUrl())]);
    await waitFor('connected through the first node', () => setups.length === 1);
    a.blackhole();
    // RabbitMQ's own heartbeat (60 s) would take two minutes; at 10 s two missed beats take about 20.
    await waitFor('connected through the second node', () => setups.length === 2, 35_000);
    expect(connectedTo().at(-1)).toBe(withPassword(b.url(amqpUrl()), '***'));
  }, 45_000);

  it('moves to the next node when its node goes away, and from the last back to the first', async () => {
    const [first, second] = [await proxy(), await proxy()];
    const urls = [first.url(amqpUrl()), second.url(amqpUrl())];
    const { lines, setups, connectedTo } = await connect(urls);
    await waitFor('connected to the first node', () => setups.length === 1);

    await first.cut();
    await waitFor('reconnected through the second node', () => setups.length === 2);
    await first.restore();
    await second.cut();
    await waitFor('reconnected through the first node again', () => setups.length === 3);

    const redacted = urls.map((u) => withPassword(u, '***'));
    expect(connectedTo()).toEqual([redacted[0], redacted[1], redacted[0]]);
    expect(lines.filter((l) => l.message === 'rabbitmq connection lost; reconnecting')).toHaveLength(2);
  });
});
