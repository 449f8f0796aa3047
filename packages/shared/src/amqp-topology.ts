import type { Channel, ChannelModel, Options } from 'amqplib';
import { DEFAULT_QUEUE } from './task-type';

/** One queue's names: the queue, its dead-letter exchange and the queue behind that. */
export interface QueueNames {
  queue: string;
  deadExchange: string;
  deadQueue: string;
}

/** A queue's names and the exchange every queue is bound to. */
export interface AmqpNames extends QueueNames {
  exchange: string;
}

/**
 * The names of one queue (the default queue unless named); AMQP_PREFIX lets tests (and tenants) share
 * one broker. The default queue keeps the names it had when it was the only one: `tasks`, `tasks.dlx`,
 * `tasks.dead`, so an existing deployment declares the same queues with the same arguments.
 */
export function amqpNames(prefix: string, queue: string = DEFAULT_QUEUE): AmqpNames {
  return {
    exchange: `${prefix}tasks`,
    queue: `${prefix}${queue}`,
    deadExchange: `${prefix}${queue}.dlx`,
    deadQueue: `${prefix}${queue}.dead`,
  };
}

/** What the topology needs to know of a task type: its name (the routing key) and its queue. */
export interface TypeRoute {
  name: string;
  queue: string;
}

/** A queue of the topology: its name as types and WORKER_QUEUES say it, its names, and the types bound to it. */
export interface QueueRoute extends AmqpNames {
  name: string;
  types: string[];
}

/** A queue no type uses any more, kept in the topology until it is deleted (see retiredQueues). */
export interface RetiredQueue extends QueueNames {
  name: string;
}

export interface AmqpTopology {
  exchange: string;
  /** The default queue first, then the others in the order their first type is listed. */
  queues: QueueRoute[];
  /** Queues types moved off: unbound from every type, never declared. */
  retired: RetiredQueue[];
}

/** WORKER_QUEUES may say `default` for the default queue. */
export const DEFAULT_QUEUE_ALIAS = 'default';

// No "." so that `<queue>.dlx` and `<queue>.dead` cannot collide with another queue's names.
const QUEUE_NAME = /^[A-Za-z0-9_-]+$/;
// "*" and "#" are wildcards in a topic binding: a type named so would bind other types' messages.
const TYPE_NAME = /^[^*#\s]+$/;

/**
 * The queues the registered task types need, each bound by the routing keys of its types. The
 * default queue is always there, with or without types, since a task type defaults to it and the
 * doctor and re-drive read it. Throws for a name that cannot be a queue or a routing key.
 */
export function amqpTopology(
  prefix: string,
  types: readonly TypeRoute[],
  retiredQueues: readonly string[] = [],
): AmqpTopology {
  const byQueue = new Map<string, string[]>([[DEFAULT_QUEUE, []]]);
  for (const type of types) {
    if (!TYPE_NAME.test(type.name)) throw new Error(`task type "${type.name}": no "*", "#" or spaces in a type name`);
    if (!QUEUE_NAME.test(type.queue) || type.queue === DEFAULT_QUEUE_ALIAS) {
      throw new Error(
        `task type "${type.name}": queue "${type.queue}" must be letters, digits, "_" or "-", not "default"`,
      );
    }
    byQueue.set(type.queue, [...(byQueue.get(type.queue) ?? []), type.name]);
  }
  for (const name of retiredQueues) {
    // A queue both retired and in use would be unbound from the types that need it.
    if (byQueue.has(name)) throw new Error(`retired queue "${name}" is still the queue of a task type`);
    if (!QUEUE_NAME.test(name)) throw new Error(`retired queue "${name}": letters, digits, "_" or "-"`);
  }
  return {
    exchange: amqpNames(prefix).exchange,
    queues: [...byQueue].map(([name, queueTypes]) => ({ ...amqpNames(prefix, name), name, types: queueTypes })),
    retired: [...new Set(retiredQueues)].map((name) => {
      const { queue, deadExchange, deadQueue } = amqpNames(prefix, name);
      return { name, queue, deadExchange, deadQueue };
    }),
  };
}

/** The queue a type's messages go to, or undefined for a type the topology does not know. */
export function queueOfType(topology: AmqpTopology, type: string): QueueRoute | undefined {
  return topology.queues.find((q) => q.types.includes(type));
}

// After this many deliveries the broker dead-letters a message: one that kills its worker every time.
// Its task is then processing with a lease that runs out, and the worker's sweeper resumes or fails it
// from Postgres. The worker requeues a message only at shutdown, on an unexpected error (while Postgres
// is down it holds the delivery), or when its run lost the task (recordOutcome, attempts.ts), so
// retries do not use up this limit.
export const DELIVERY_LIMIT = 20;

/**
 * Declares the topology; idempotent, so the relay and the worker both run it on every (re)connect.
 * Each queue is bound by its types' names, not `#`: a topic binding cannot say "every type but those
 * of the other queues". Bindings outlive the services that made them, so each queue is also unbound
 * from `#` (the single queue's binding before queues per type) and from the types of the other queues
 * (a type that moved): otherwise their messages would reach two queues. Binding comes before
 * unbinding, so no message of a known type is unroutable in between. A retired queue (a queue every
 * type moved off) is in no queue's list, so it is unbound from every type and `#` here; that needs
 * `model`, for a channel of its own (see unbindRetired).
 */
export async function assertTopology(channel: Channel, topology: AmqpTopology, model?: ChannelModel): Promise<void> {
  const { exchange, queues } = topology;
  await channel.assertExchange(exchange, 'topic', { durable: true });
  for (const q of queues) {
    await assertDeadPath(channel, q);
    await channel.assertQueue(q.queue, queueOptions(q));
    for (const type of q.types) await channel.bindQueue(q.queue, exchange, type);
  }
  for (const q of queues) {
    await channel.unbindQueue(q.queue, exchange, '#');
    for (const other of queues) {
      if (other === q) continue;
      for (const type of other.types) await channel.unbindQueue(q.queue, exchange, type);
    }
  }
  if (topology.retired.length === 0) return;
  if (!model) throw new Error('assertTopology: unbinding retired queues needs the connection');
  const types = topology.queues.flatMap((q) => q.types);
  for (const retired of topology.retired) await unbindRetired(model, exchange, retired.queue, types);
}

/** How a queue is declared: a quorum queue, its dead letters to its dead-letter exchange. */
export const queueOptions = (q: QueueNames): Options.AssertQueue => ({
  durable: true,
  arguments: { 'x-queue-type': 'quorum', 'x-dead-letter-exchange': q.deadExchange, 'x-delivery-limit': DELIVERY_LIMIT },
});

/** How a dead-letter queue is declared. */
export const DEAD_QUEUE_OPTIONS: Options.AssertQueue = { durable: true, arguments: { 'x-queue-type': 'quorum' } };

/** A queue's dead-letter path: its exchange, and its dead-letter queue bound to everything sent there. */
export async function assertDeadPath(channel: Channel, q: QueueNames): Promise<void> {
  await channel.assertExchange(q.deadExchange, 'topic', { durable: true });
  await channel.assertQueue(q.deadQueue, DEAD_QUEUE_OPTIONS);
  await channel.bindQueue(q.deadQueue, q.deadExchange, '#');
}

/**
 * Unbinds a retired queue from `#` and every type, on a channel of its own: a queue already deleted
 * answers 404, which closes the channel it was asked on, and the caller's channel must survive. A 404
 * at any step (also a delete between two unbinds) means there is nothing left to unbind.
 */
async function unbindRetired(model: ChannelModel, exchange: string, queue: string, types: string[]): Promise<void> {
  const ch = await model.createChannel();
  ch.on('error', () => undefined);
  try {
    await ch.checkQueue(queue);
    for (const key of ['#', ...types]) await ch.unbindQueue(queue, exchange, key);
  } catch (err) {
    if ((err as { code?: unknown }).code !== 404) throw err;
  } finally {
    await ch.close().catch(() => undefined);
  }
}

/** A queue a worker consumes, with its prefetch. */
export interface ConsumedQueue {
  route: QueueRoute;
  prefetch: number;
}

/**
 * The queues a worker consumes: those WORKER_QUEUES names (`default` or `tasks` is the default queue),
 * each with its own prefetch, or, unset, every queue of the topology with WORKER_PREFETCH. Throws for a
 * queue no type uses and for one named twice: a worker would otherwise wait on a queue that never fills.
 */
export function consumedQueues(
  topology: AmqpTopology,
  spec: readonly { queue: string; prefetch: number }[] | undefined,
  defaultPrefetch: number,
): ConsumedQueue[] {
  if (!spec) return topology.queues.map((route) => ({ route, prefetch: defaultPrefetch }));
  const seen = new Set<string>();
  return spec.map(({ queue, prefetch }) => {
    const name = queue === DEFAULT_QUEUE_ALIAS ? DEFAULT_QUEUE : queue;
    const route = topology.queues.find((q) => q.name === name);
    if (!route) {
      const known = topology.queues.map((q) => q.name).join(', ');
      throw new Error(`WORKER_QUEUES: no task type uses queue "${queue}" (queues: ${known})`);
    }
    if (seen.has(name)) throw new Error(`WORKER_QUEUES: queue "${name}" is named twice`);
    seen.add(name);
    return { route, prefetch };
  });
}
