import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib';
import {
  assertTopology,
  isTransientDbError,
  parseTaskMessage,
  toError,
  withTimeout,
  type AmqpSetup,
  type AmqpTopology,
  type ConsumedQueue,
  type Logger,
  type QueueRoute,
  type Service,
  type TaskMessage,
} from '@taskbox/shared';
import {
  BROKER_ANSWER_MS,
  createUnhandledCounts,
  deadLetter,
  deliveryLogContext,
  type DeadLetterReason,
  type UnhandledCounts,
} from './dead-letters';
import { beginAttempt, runAttempt, type AttemptDeps } from './attempts';
import { whilePostgresDown } from './outcomes';

/**
 * Consuming begins in `setup`, which the broker connection runs, so `start` has nothing to do; `stop`
 * stops taking messages, waits for the runs in flight up to the grace, then signals the rest: a run
 * that stops is recorded as interrupted and its message acked after that commit; the message of one
 * that cannot be recorded is requeued, never acked unfinished.
 */
export interface Consumer extends Service {
  /**
   * amqplib recovery calls this after every (re)connect: a fresh channel and a fresh consumer tag.
   * `rebuild` asks for that again when the broker cancels the consumer or closes the channel.
   */
  setup: AmqpSetup;
  ready(): boolean;
}

export interface ConsumerOptions {
  /** Declared on every (re)connect, so that every queue a type needs exists whatever this worker consumes. */
  topology: AmqpTopology;
  /** The queues this worker consumes, each with its prefetch (WORKER_QUEUES). */
  queues: ConsumedQueue[];
  /** How long stop() waits for runs in flight before it abandons them. */
  graceMs: number;
  /** Called when the grace is over: runs must stop retrying (a Postgres that is down) and return. */
  giveUp(): void;
}

/**
 * A consumer tag unique across hosts, processes and reconnects. The external job id is
 * `<consumer tag>:<delivery tag>`; delivery tags restart at 1 on every channel, so the tag must differ
 * on every channel this worker ever opens.
 */
export function newConsumerTag(): string {
  return `worker-${os.hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

function parseMessage(msg: ConsumeMessage): TaskMessage | DeadLetterReason {
  const parsed = parseTaskMessage(msg.content);
  return parsed.ok ? parsed.message : { code: parsed.problem, detail: parsed.detail };
}

export function createConsumer(options: ConsumerOptions, deps: AttemptDeps, logger: Logger): Consumer {
  const state: ConsumerState = {
    options,
    deps,
    logger,
    channel: null,
    consumerTags: [],
    consumingAll: false,
    stopping: false,
    settingUp: null,
    inFlight: new Set(),
    unhandled: createUnhandledCounts(),
  };
  return {
    setup(model, rebuild) {
      if (state.stopping) return Promise.resolve();
      // stop() waits for a setup in progress, so that no consumer starts after it has cancelled.
      state.settingUp = consume(state, model, rebuild);
      return state.settingUp;
    },
    ready: () => state.channel !== null && state.consumingAll,
    async start() {},
    stop: () => stopConsuming(state),
  };
}

interface ConsumerState {
  options: ConsumerOptions;
  deps: AttemptDeps;
  logger: Logger;
  channel: ConfirmChannel | null;
  consumerTags: string[];
  /** Every queue has its consumer on `channel` (/readyz): false while a setup is starting them. */
  consumingAll: boolean;
  stopping: boolean;
  settingUp: Promise<void> | null;
  inFlight: Set<Promise<void>>;
  unhandled: UnhandledCounts;
}

/** deadLetter on the channel that delivered the message, while it is still this consumer's. */
function deadLetterOn(
  state: ConsumerState,
  ch: ConfirmChannel,
  route: QueueRoute,
  msg: ConsumeMessage,
  why: DeadLetterReason,
  log: Logger,
): Promise<void> {
  return deadLetter(ch, () => ch === state.channel, route, msg, why, { metrics: state.deps.metrics, log });
}

/**
 * Acks or requeues on the channel that delivered the message. After a reconnect that channel is
 * gone and the broker has already requeued the message; its redelivery is absorbed by decide(). While
 * its connection closes (a rebuild), amqplib refuses to send before the channel's close event: the
 * same, the broker requeues it.
 */
export function ackOrRequeue(
  current: () => boolean,
  ch: ConfirmChannel,
  msg: ConsumeMessage,
  how: 'ack' | 'requeue',
  log: Logger,
): void {
  if (!current()) {
    log.info('delivery not settled: its channel closed; the redelivery will be absorbed', { how });
    return;
  }
  try {
    if (how === 'ack') ch.ack(msg);
    else ch.nack(msg, false, true);
  } catch (err) {
    log.info('delivery not settled: its connection is closing; the redelivery will be absorbed', {
      how,
      error: toError(err).message,
    });
  }
}

async function handle(
  state: ConsumerState,
  ch: ConfirmChannel,
  tag: string,
  route: QueueRoute,
  msg: ConsumeMessage,
): Promise<void> {
  const { deps } = state;
  const current = (): boolean => ch === state.channel;
  const externalJobId = `${tag}:${msg.fields.deliveryTag}`;
  const base = deliveryLogContext(msg);
  const parsed = parseMessage(msg);
  if ('code' in parsed) {
    deps.metrics.deliveries.inc({ outcome: 'dead-letter', queue: route.name });
    return deadLetterOn(state, ch, route, msg, parsed, state.logger.child(base));
  }
  const log = state.logger.child({ ...base, taskId: parsed.taskId, externalJobId });

  const begin = await whilePostgresDown(deps, log, () => beginAttempt(deps, parsed, externalJobId));
  deps.metrics.deliveries.inc({ outcome: begin.action === 'started' ? 'run' : begin.action, queue: route.name });
  switch (begin.action) {
    case 'dead-letter':
      return deadLetterOn(state, ch, route, msg, { code: begin.reason }, log);
    case 'fail':
      log.error('task failed without running', { reason: begin.reason });
      if (begin.reason === 'unknown-type') return deadLetterOn(state, ch, route, msg, { code: 'unknown-type' }, log);
      return ackOrRequeue(current, ch, msg, 'ack', log);
    case 'cancel':
      log.info('task cancelled: its run had stopped after a cancel was requested', { attempt: parsed.attempt });
      return ackOrRequeue(current, ch, msg, 'ack', log);
    case 'skip':
      log.info('duplicate delivery absorbed', { reason: begin.reason, attempt: parsed.attempt });
      return ackOrRequeue(current, ch, msg, 'ack', log);
    case 'started': {
      // Ack only after the outcome is committed (invariant 3); an abandoned run is requeued, and its
      // redelivery resumes the task as a new attempt or is absorbed if the task moved on.
      const result = await runAttempt(deps, begin, log);
      return ackOrRequeue(current, ch, msg, result === 'recorded' ? 'ack' : 'requeue', log);
    }
  }
}

function startHandling(
  state: ConsumerState,
  ch: ConfirmChannel,
  tag: string,
  route: QueueRoute,
  msg: ConsumeMessage,
): void {
  const log = state.logger.child(deliveryLogContext(msg));
  const run = handle(state, ch, tag, route, msg)
    .then(() => state.unhandled.handled(msg))
    .catch((err: unknown) => {
      const error = toError(err).message;
      // Not handled: an unexpected error (dead-lettered once it keeps coming), or Postgres still down
      // when the worker stops.
      if (!state.stopping && !isTransientDbError(err) && state.unhandled.failed(msg)) {
        return deadLetterOn(state, ch, route, msg, { code: 'unhandled', detail: error }, log);
      }
      // Given back after a pause, so that a persistent error does not spin.
      log.warn('delivery not handled; requeueing', { error });
      return new Promise<void>((resolve) => setTimeout(resolve, 1000)).then(() =>
        ackOrRequeue(() => ch === state.channel, ch, msg, 'requeue', log),
      );
    })
    .finally(() => state.inFlight.delete(run));
  state.inFlight.add(run);
}

/**
 * A fresh confirm channel with the topology, and on it one consumer per queue under a new tag, each
 * with its own prefetch: basic.qos without `global` applies to the consumers started after it, so
 * a queue of slow tasks cannot take the slots of another queue's quick ones.
 */
async function consume(state: ConsumerState, model: ChannelModel, rebuild: (reason: string) => void): Promise<void> {
  const { topology, queues } = state.options;
  const ch = await model.createConfirmChannel();
  // A channel error is the broker closing this channel (an ack it does not accept, say).
  ch.on('error', (err: Error) => rebuild(`consume channel closed by the broker: ${err.message}`));
  ch.on('close', () => {
    if (state.channel === ch) state.channel = null;
  });
  await assertTopology(ch, topology, model);
  // Set before the first consumer: a delivery settles only on the current channel (ackOrRequeue),
  // and the first queue's messages may arrive while the next consumers are being started.
  state.channel = ch;
  state.consumingAll = false;
  const tags: string[] = [];
  state.consumerTags = tags;
  for (const { route, prefetch } of queues) {
    await ch.prefetch(prefetch);
    const tag = newConsumerTag();
    await ch.consume(
      route.queue,
      (msg) => {
        if (msg !== null) return startHandling(state, ch, tag, route, msg);
        // The broker cancelled the consumer: its queue was deleted, or its leader moved away.
        if (state.channel === ch) state.channel = null;
        rebuild(`the broker cancelled consumer ${tag} of ${route.queue} (queue deleted?)`);
      },
      { consumerTag: tag },
    );
    tags.push(tag);
  }
  state.consumingAll = true;
  // One line once every queue is consumed: a reader waiting for it knows that all of them are.
  const consumed = queues.map(({ route, prefetch }, i) => ({ queue: route.queue, prefetch, consumerTag: tags[i] }));
  state.logger.info('consuming', { queues: consumed });
}

async function stopConsuming(state: ConsumerState): Promise<void> {
  const { graceMs, giveUp } = state.options;
  const { inFlight } = state;
  state.stopping = true;
  await state.settingUp?.catch(() => undefined);
  const ch = state.channel;
  if (ch) {
    for (const tag of state.consumerTags) {
      await withTimeout(ch.cancel(tag), BROKER_ANSWER_MS, 'cancelling a consumer').catch(() => undefined);
    }
  }
  const drained = Promise.all([...inFlight]);
  const graceOver = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), graceMs).unref());
  if ((await Promise.race([drained, graceOver])) === 'timeout') {
    state.logger.warn('runs still in flight at the shutdown deadline; abandoning them', { runs: inFlight.size });
    giveUp();
    state.deps.leases.abortAll('shutdown');
    await Promise.all([...inFlight]);
  }
  giveUp();
}
