import type { ChannelModel, Options } from 'amqplib';
import { inspectQueue, onOwnChannel } from './amqp';
import { DEAD_QUEUE_OPTIONS, queueOptions, type AmqpTopology } from './amqp-topology';
import type { Db } from './db';
import { checkNames, formatAge, result, type CheckResult } from './doctor-checks';
import { noHandlerFailures } from './doctor-sql';

// The doctor's checks of the queues, one queue per line of detail: the exchange and every queue the
// registered task types need, their consumers, their dead letters, and tasks no worker could run.

export async function checkTopology(model: ChannelModel, topology: AmqpTopology): Promise<CheckResult> {
  const missing: string[] = [];
  const exchanges = [topology.exchange, ...topology.queues.map((q) => q.deadExchange)];
  for (const exchange of exchanges) {
    const checked = await onOwnChannel(model, `checking exchange ${exchange}`, (ch) => ch.checkExchange(exchange));
    if ('refused' in checked) missing.push(`exchange ${exchange}`);
  }
  // A queue declared otherwise (a classic queue of the same name) makes every declare of the topology
  // fail: the relay and the worker then publish and consume nothing, on any queue.
  const differing: string[] = [];
  const queues = topology.queues.flatMap((q): [string, Options.AssertQueue][] => [
    [q.queue, queueOptions(q)],
    [q.deadQueue, DEAD_QUEUE_OPTIONS],
  ]);
  for (const [queue, options] of queues) {
    if ((await inspectQueue(model, queue)) === null) missing.push(`queue ${queue}`);
    else {
      const declared = await onOwnChannel(model, `checking queue ${queue}`, (ch) => ch.assertQueue(queue, options));
      if ('refused' in declared) {
        differing.push(`${queue} (${declared.refused.message.replace(/^.*PRECONDITION_FAILED - (.*?)"?$/, '$1')})`);
      }
    }
  }
  if (differing.length > 0) {
    return result(
      checkNames.topology,
      'fail',
      `declared with other arguments: ${differing.join(', ')}`,
      'the relay and the worker cannot declare their topology beside it (they log "rabbitmq refuses the topology"): ' +
        'move its messages elsewhere if they matter, delete the queue, and the services declare it again',
    );
  }
  if (missing.length > 0) {
    return result(
      checkNames.topology,
      'fail',
      `missing ${missing.join(', ')}`,
      'start the relay or the worker with the same AMQP_PREFIX: they declare it on connect',
    );
  }
  const names = topology.queues.map((q) => q.queue).join(', ');
  return result(checkNames.topology, 'ok', `exchange ${topology.exchange}, queues ${names} and their dead letters`);
}

/**
 * Consumers on every queue. A queue with types and no consumer holds their tasks until a worker
 * consumes it: the api accepts them and no running worker handles them, so the hint names the types.
 */
export async function checkConsumers(model: ChannelModel, topology: AmqpTopology): Promise<CheckResult> {
  const name = checkNames.consumers;
  const details: string[] = [];
  const unconsumed: string[] = [];
  for (const route of topology.queues) {
    const q = await inspectQueue(model, route.queue);
    if (!q) return result(name, 'fail', `queue ${route.queue} does not exist`, `see "${checkNames.topology}"`);
    details.push(`${q.consumerCount} on ${route.queue}, ${q.messageCount} messages ready`);
    if (q.consumerCount === 0 && route.types.length > 0) {
      unconsumed.push(`types ${route.types.join(', ')} (queue ${route.name})`);
    }
  }
  if (unconsumed.length > 0) {
    const hint =
      `no running worker handles ${unconsumed.join('; ')}: start a worker (npm run start:worker) with this ` +
      'AMQP_PREFIX whose WORKER_QUEUES names the queue (unset: every queue); see its logs';
    return result(name, 'fail', details.join('; '), hint);
  }
  return result(name, 'ok', details.join('; '));
}

export async function checkDeadLetters(model: ChannelModel, topology: AmqpTopology): Promise<CheckResult> {
  const name = checkNames.deadLetters;
  const waiting: string[] = [];
  let count = 0;
  for (const { deadQueue } of topology.queues) {
    const q = await inspectQueue(model, deadQueue);
    if (!q) return result(name, 'fail', `queue ${deadQueue} does not exist`, `see "${checkNames.topology}"`);
    if (q.messageCount > 0) waiting.push(`${q.messageCount} waiting in ${deadQueue}`);
    count += q.messageCount;
  }
  if (count > 0) {
    const hint =
      'see what re-driving would do with `npm run redrive -- --dry-run` (or the dashboard), then re-drive; ' +
      'the x-dead-letter-reason header and the worker error log say why they died';
    return { ...result(name, 'warn', waiting.join('; '), hint), count };
  }
  const deadQueues = topology.queues.map((q) => q.deadQueue).join(', ');
  return { ...result(name, 'ok', `none in ${deadQueues}`), count };
}

/**
 * Retired queues (retiredQueues of @taskbox/tasks) that still exist. Unbound, they take no new
 * messages, but no worker consumes them and neither re-drive nor the other checks read them: what
 * they hold waits there until an operator deletes the queue (or shovels it back to the exchange).
 */
export async function checkRetiredQueues(model: ChannelModel, topology: AmqpTopology): Promise<CheckResult> {
  const name = checkNames.retiredQueues;
  if (topology.retired.length === 0) return result(name, 'ok', 'none retired');
  const holding: string[] = [];
  const empty: string[] = [];
  for (const queue of topology.retired.flatMap((r) => [r.queue, r.deadQueue])) {
    const q = await inspectQueue(model, queue);
    if (q && q.messageCount > 0) holding.push(`${q.messageCount} in ${queue}`);
    else if (q) empty.push(queue);
  }
  if (holding.length > 0) {
    const hint =
      'no worker consumes a retired queue: delete it (and its .dead and .dlx); the relay republishes a ' +
      'pending task whose message is lost (see "stranded tasks republished"); then drop it from retiredQueues';
    return result(name, 'warn', `retired, still holding messages: ${holding.join(', ')}`, hint);
  }
  if (empty.length > 0) return result(name, 'ok', `empty, can be deleted: ${empty.join(', ')}`);
  return result(name, 'ok', `deleted: ${topology.retired.map((r) => r.name).join(', ')}`);
}

const DAY_MS = 86_400_000;

/**
 * Tasks that failed in the last 24h because the worker that received them had no handler: a type the
 * api accepts and a worker of an older version does not know.
 */
export async function checkNoHandler(db: Db): Promise<CheckResult> {
  const name = checkNames.noHandler;
  const failures = await noHandlerFailures(db, DAY_MS);
  if (failures.length === 0) return result(name, 'ok', `none in the last ${formatAge(DAY_MS / 1000)}`);
  const detail = failures.map((f) => `${f.count} of type ${f.type} (task ${f.example})`).join('; ');
  return result(
    name,
    'fail',
    `${detail} failed in the last 24h with "no handler for task type"`,
    'a worker without these types consumes their queue: deploy the worker version the api runs, then ' +
      'retry the tasks (POST /tasks/{id}/retry, or in bulk from the dashboard)',
  );
}
