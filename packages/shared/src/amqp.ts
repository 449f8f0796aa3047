import amqp, { type Channel, type ChannelModel, type RecoveringChannelModel, type Replies } from 'amqplib';
import { toError } from './errors';
import { withTimeout, type Service } from './lifecycle';
import { brokerNodes } from './broker-nodes';
import type { Logger } from './logger';

/** How long a check of the broker (a channel, a declare, a message) waits for its answer. */
export const BROKER_ANSWER_MS = 5000;

/**
 * Runs `call` on a channel of its own, since the broker closes the channel of a call it refuses: its
 * answer, or the broker's refusal when that is 404 NOT_FOUND or 406 PRECONDITION_FAILED (amqplib puts
 * the reply code on the error); rejects when the broker does not answer within `timeoutMs`.
 */
export async function onOwnChannel<T>(
  model: ChannelModel,
  what: string,
  call: (ch: Channel) => Promise<T>,
  timeoutMs = BROKER_ANSWER_MS,
): Promise<{ answer: T } | { refused: Error }> {
  const ch = await withTimeout(model.createChannel(), timeoutMs, 'opening a channel');
  ch.on('error', () => undefined);
  try {
    return { answer: await withTimeout(call(ch), timeoutMs, what) };
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 404 || code === 406) return { refused: toError(err) };
    throw err;
  } finally {
    await ch.close().catch(() => undefined);
  }
}

/** A passive declare of `queue` (its ready messages and consumers): null when the queue does not exist. */
export async function inspectQueue(model: ChannelModel, queue: string): Promise<Replies.AssertQueue | null> {
  const checked = await onOwnChannel(model, `checking queue ${queue}`, (ch) => ch.checkQueue(queue));
  return 'answer' in checked ? checked.answer : null;
}

/**
 * The socket options of every taskbox AMQP connection (the benchmark's comparisons use them too).
 * Without TCP_NODELAY, Nagle's algorithm holds a publish's frames until the broker's delayed ACK:
 * publish → delivery on a quorum queue took about 33 ms instead of 2 (bench/README.md).
 */
export const amqpSocketOptions = { noDelay: true, keepAlive: true };

/**
 * Runs after every (re)connect with the new connection. `rebuild` is for a channel the broker broke
 * while the connection lives on: a consumer it cancelled (its queue deleted), a channel it closed (a
 * 404 on a deleted exchange), publishes it keeps returning as unroutable.
 */
export type AmqpSetup = (model: ChannelModel, rebuild: (reason: string) => void) => Promise<void>;

// Bounds the TCP connect and handshake: a node whose host went silent would otherwise hold each
// attempt for the kernel's SYN retries (about two minutes) before the next node is tried.
const CONNECT_TIMEOUT_MS = 5000;

/**
 * Connects with amqplib's built-in recovery: capped exponential backoff with jitter, forever.
 * `setup` runs after every (re)connect and must open fresh channels: a channel never survives a
 * reconnect. Logs one line per state change, with the password redacted.
 *
 * A broken channel is healed by the same path as a lost connection: `rebuild` closes the connection,
 * and recovery reconnects and runs `setup`, which declares the topology again (a deleted queue or
 * exchange comes back), opens new channels and consumes again. One mechanism, already proven by the
 * outage tests, instead of a second one per channel; a reconnect costs milliseconds, and the broker
 * requeues whatever the closed channels had not settled, which the worker absorbs.
 *
 * With several URLs (the nodes of a cluster, AMQP_URLS) it starts at the first and moves to the next
 * after every failed attempt and every lost connection (see brokerNodes).
 */
export async function connectAmqp(
  urls: string | readonly string[],
  logger: Logger,
  setup: AmqpSetup,
): Promise<RecoveringChannelModel> {
  const nodes = brokerNodes(typeof urls === 'string' ? [urls] : urls);
  let connected = false;
  let rebuilding = false;
  // What a line already says of the broker (out of reach, or refusing the topology): further failed
  // attempts of the same kind add nothing to it.
  let reportedDown: false | 'unreachable' | 'refused' = false;
  const rebuildFor = (model: ChannelModel) => {
    let asked = false;
    return (reason: string): void => {
      if (asked) return;
      asked = true;
      rebuilding = true;
      logger.warn('rabbitmq channel broken; reconnecting to declare the topology and open new channels', { reason });
      // A model already closed is being replaced anyway: its reconnect is not this rebuild's.
      model.close().catch(() => (rebuilding = false));
    };
  };
  const connection = await amqp.connect(nodes.target, {
    ...amqpSocketOptions,
    timeout: CONNECT_TIMEOUT_MS,
    recovery: {
      initialDelay: 200,
      maxDelay: 5000,
      factor: 2,
      jitter: 0.3,
      waitForConnect: false,
      setup: (model: ChannelModel) => {
        // amqplib listens for this connection's errors only once the setup has succeeded: a reset while
        // the setup runs would be an 'error' with no listener, which crashes the process. Here it fails
        // the setup instead, and the connection is tried again.
        model.on('error', (err: Error) =>
          logger.debug('rabbitmq connection error during setup', { error: err.message }),
        );
        return setup(model, rebuildFor(model));
      },
    },
  });
  connection.on('connect', () => {
    connected = true;
    reportedDown = false;
    logger.info(rebuilding ? 'rabbitmq channels rebuilt' : 'rabbitmq connected', { url: nodes.current() });
    rebuilding = false;
  });
  connection.on('disconnect', (err: Error) => {
    if (connected && !rebuilding) {
      logger.warn('rabbitmq connection lost; reconnecting', { url: nodes.current(), error: err.message });
      reportedDown = 'unreachable';
    }
    connected = false;
    nodes.next();
  });
  connection.on('connect-failed', (err: Error) => {
    // Reached, but a queue of the topology exists declared otherwise: no retry mends that, an operator does.
    const kind = /PRECONDITION_FAILED/.test(err.message) ? 'refused' : 'unreachable';
    const context = { url: nodes.current(), error: err.message };
    if (reportedDown === kind) logger.debug('rabbitmq connect attempt failed', context);
    else if (kind === 'refused')
      logger.error('rabbitmq refuses the topology; retrying (npm run doctor names what differs)', context);
    else logger.warn('rabbitmq unreachable; retrying', context);
    reportedDown = kind;
    nodes.next();
  });
  connection.on('error', (err: Error) => logger.debug('rabbitmq connection error', { error: err.message }));
  connection.on('blocked', (reason: string) => logger.warn('rabbitmq blocked the connection', { reason }));
  connection.on('unblocked', () => logger.info('rabbitmq unblocked the connection'));
  return connection;
}

/** The broker connection as a part of a service: start connects (recovering forever), stop closes it. */
export function amqpConnection(urls: readonly string[], logger: Logger, setup: AmqpSetup): Service {
  let connection: RecoveringChannelModel | null = null;
  return {
    async start() {
      connection ??= await connectAmqp(urls, logger, setup);
    },
    async stop() {
      await connection?.close().catch(() => undefined);
    },
  };
}
