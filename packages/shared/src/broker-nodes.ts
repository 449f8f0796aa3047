import type { Options } from 'amqplib';
import { redactUrl } from './config';

/**
 * The heartbeat asked for when the URL names none, in seconds. Without one amqplib takes the server's
 * (RabbitMQ: 60), and a node that goes silent (a frozen host, a dropped route) is noticed only after two
 * missed beats: two minutes in which nothing is published or consumed. At 10 s it takes about 20 s, and
 * the connection then moves to the next node of AMQP_URLS.
 */
const DEFAULT_HEARTBEAT_S = 10;

/**
 * An `amqp://` URL as the fields of amqplib's connect-options object, read the way amqplib reads the
 * URL itself: credentials decoded (both absent means guest/guest), the vhost left escaped (amqplib
 * unescapes it), and the tuning parameters it takes from the query string; `heartbeat` defaults to
 * DEFAULT_HEARTBEAT_S.
 */
export function connectOptions(url: string): Options.Connect {
  const u = new URL(url);
  const number = (name: string): number | undefined => {
    const value = u.searchParams.get(name);
    return value === null ? undefined : Number(value);
  };
  const credentials = u.username !== '' || u.password !== '';
  return {
    protocol: u.protocol.slice(0, -1),
    hostname: u.hostname.replace(/^\[|\]$/g, ''),
    port: u.port ? Number(u.port) : undefined,
    username: credentials ? decodeURIComponent(u.username) : undefined,
    password: credentials ? decodeURIComponent(u.password) : undefined,
    vhost: u.pathname.slice(1) || undefined,
    heartbeat: number('heartbeat') ?? DEFAULT_HEARTBEAT_S,
    frameMax: number('frameMax'),
    channelMax: number('channelMax'),
    locale: u.searchParams.get('locale') ?? undefined,
  };
}

export interface BrokerNodes {
  /** What amqplib connects with; `next()` rewrites it in place. */
  readonly target: Options.Connect;
  /** The node `target` points at, password redacted. */
  current(): string;
  /** Points `target` at the next node, after the last back at the first. */
  next(): void;
}

/**
 * The nodes of a cluster in order, for amqplib's recovery. Its `connect(url, { recovery })` keeps the
 * one address it was given and has no list (lib/recovery.js reconnects through a closure over it), but
 * it reads that address's fields anew on every attempt when the address is an options object: moving
 * the object to the next node after each failed attempt or lost connection is the whole failover. The
 * integration test amqp-failover.test.ts proves it, so an amqplib that stops rereading fails there.
 */
export function brokerNodes(urls: readonly string[]): BrokerNodes {
  if (urls.length === 0) throw new Error('no RabbitMQ node to connect to');
  const targets = urls.map(connectOptions);
  let index = 0;
  const target: Options.Connect = { ...targets[0] };
  return {
    target,
    current: () => redactUrl(urls[index] ?? ''),
    next() {
      index = (index + 1) % urls.length;
      Object.assign(target, targets[index]);
    },
  };
}
