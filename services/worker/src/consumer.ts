import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib';
import {
  assertTopology,
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
import type { deadLetterCodes } from './metrics';
import { beginAttempt, runAttempt, whilePostgresDown, type AttemptDeps } from './attempts';

/**
 * Consuming begins in `setup`, which the broker connection runs, so `start` has nothing to do; `stop`
 * stops taking messages, waits for the runs in flight up to the grace, then abandons the rest (their
 * messages are requeued, never acked unfinished).
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

/** Why a message goes to the dead-letter queue: a code for metrics and alerts, and what was wrong. */
export interface DeadLetterReason {
  code: (typeof deadLetterCodes)[number];
  detail?: string;
}

/** The x-dead-letter-reason header: the code, then the detail. */
const reasonHeader = (r: DeadLetterReason): string => (r.detail ? `${r.code}: ${r.detail}` : r.code);

function parseMessage(msg: ConsumeMessage): TaskMessage | DeadLetterReason {
  const parsed = parseTaskMessage(msg.content);
  return parsed.ok ? parsed.message : { code: parsed.problem, detail: parsed.detail };
}

// How long the broker may take to confirm a dead-letter publish or a consumer cancel before the worker
// stops waiting: a blocked connection would otherwise hold a delivery, or the shutdown, for good.
const BROKER_ANSWER_MS = 10_000;

export function createConsumer(options: ConsumerOptions, deps: AttemptDeps, logger: Logger): Consumer {
  const { topology, queues, graceMs, giveUp } = options;
  let channel: ConfirmChannel | null = null;
  let consumerTags: string[] = [];
  // Every queue has its consumer on `channel` (/readyz): false while a setup is starting them.
  let consumingAll = false;
  let stopping = false;
  let settingUp: Promise<void> | null = null;
  const inFlight = new Set<Promise<void>>();

  /** Publishes the message to its queue's dead-letter exchange with a reason header, then acks it. */
  async function deadLetter(
    ch: ConfirmChannel,
    route: QueueRoute,
    msg: ConsumeMessage,
    why: DeadLetterReason,
    log: Logger,
  ): Promise<void> {
    const reason = reasonHeader(why);
    deps.metrics.deadLetters.inc({ reason: why.code, queue: route.name });
    log.error('message dead-lettered', { reason, routingKey: msg.fields.routingKey });
    try {
      const confirmed = new Promise<void>((resolve, reject) => {
        ch.publish(
          route.deadExchange,
          msg.fields.routingKey,
          msg.content,
          { ...msg.properties, headers: { ...msg.properties.headers, 'x-dead-letter-reason': reason } },
          (err) => (err ? reject(toError(err)) : resolve()),
        );
      });
      await withTimeout(confirmed, BROKER_ANSWER_MS, 'dead-letter confirm');
      ch.ack(msg);
    } catch (err) {
      // The broker's own dead-lettering (queue's x-dead-letter-exchange) still keeps the message.
      log.warn('dead-letter publish failed; rejecting to the queue dead-letter exchange', {
        error: toError(err).message,
      });
      ch.nack(msg, false, false);
    }
  }

  /**
   * Acks or requeues on the channel that delivered the message. After a reconnect that channel is
   * gone and the broker has already requeued the message; its redelivery is absorbed by decide().
   */
  function ackOrRequeue(ch: ConfirmChannel, msg: ConsumeMessage, how: 'ack' | 'requeue', log: Logger): void {
    if (ch !== channel) {
      log.info('delivery not settled: its channel closed; the redelivery will be absorbed', { how });
      return;
    }
    if (how === 'ack') ch.ack(msg);
    else ch.nack(msg, false, true);
  }

  async function handle(ch: ConfirmChannel, tag: string, route: QueueRoute, msg: ConsumeMessage): Promise<void> {
    const externalJobId = `${tag}:${msg.fields.deliveryTag}`;
    const base = {
      messageId: msg.properties.messageId as string | undefined,
      correlationId: msg.properties.correlationId as string | undefined,
    };
    const parsed = parseMessage(msg);
    if ('code' in parsed) return deadLetter(ch, route, msg, parsed, logger.child(base));
    const log = logger.child({ ...base, taskId: parsed.taskId, externalJobId });

    const begin = await whilePostgresDown(deps, log, () => beginAttempt(deps, parsed, externalJobId));
    deps.metrics.deliveries.inc({ outcome: begin.action === 'started' ? 'run' : begin.action, queue: route.name });
    switch (begin.action) {
      case 'dead-letter':
        return deadLetter(ch, route, msg, { code: begin.reason }, log);
      case 'fail':
        log.error('task failed without running', { reason: begin.reason });
        if (begin.reason === 'unknown-type') return deadLetter(ch, route, msg, { code: 'unknown-type' }, log);
        return ackOrRequeue(ch, msg, 'ack', log);
      case 'skip':
        log.info('duplicate delivery absorbed', { reason: begin.reason, attempt: parsed.attempt });
        return ackOrRequeue(ch, msg, 'ack', log);
      case 'started': {
        // Ack only after the outcome is committed (invariant 3); an abandoned run is requeued, and its
        // redelivery resumes the task as a new attempt or is absorbed if the task moved on.
        const result = await runAttempt(deps, begin, log);
        return ackOrRequeue(ch, msg, result === 'recorded' ? 'ack' : 'requeue', log);
      }
    }
  }

  function startHandling(ch: ConfirmChannel, tag: string, route: QueueRoute, msg: ConsumeMessage): void {
    const log = logger.child({
      messageId: msg.properties.messageId as string | undefined,
      correlationId: msg.properties.correlationId as string | undefined,
      taskId: msg.properties.headers?.['x-task-id'] as string | undefined,
    });
    const run = handle(ch, tag, route, msg)
      .catch((err: unknown) => {
        // Not handled (an unexpected error, or Postgres still down when the worker stops): give the
        // message back, after a pause so that a persistent error does not spin.
        log.warn('delivery not handled; requeueing', { error: toError(err).message });
        return new Promise<void>((resolve) => setTimeout(resolve, 1000)).then(() =>
          ackOrRequeue(ch, msg, 'requeue', log),
        );
      })
      .finally(() => inFlight.delete(run));
    inFlight.add(run);
  }

  /**
   * A fresh confirm channel with the topology, and on it one consumer per queue under a new tag, each
   * with its own prefetch: basic.qos without `global` applies to the consumers started after it, so
   * a queue of slow tasks cannot take the slots of another queue's quick ones.
   */
  async function consume(model: ChannelModel, rebuild: (reason: string) => void): Promise<void> {
    const ch = await model.createConfirmChannel();
    // A channel error is the broker closing this channel (an ack it does not accept, say).
    ch.on('error', (err: Error) => rebuild(`consume channel closed by the broker: ${err.message}`));
    ch.on('close', () => {
      if (channel === ch) channel = null;
    });
    await assertTopology(ch, topology, model);
    // Set before the first consumer: a delivery settles only on the current channel (ackOrRequeue),
    // and the first queue's messages may arrive while the next consumers are being started.
    channel = ch;
    consumingAll = false;
    const tags: string[] = [];
    consumerTags = tags;
    for (const { route, prefetch } of queues) {
      await ch.prefetch(prefetch);
      const tag = newConsumerTag();
      await ch.consume(
        route.queue,
        (msg) => {
          if (msg !== null) return startHandling(ch, tag, route, msg);
          // The broker cancelled the consumer: its queue was deleted, or its leader moved away.
          if (channel === ch) channel = null;
          rebuild(`the broker cancelled consumer ${tag} of ${route.queue} (queue deleted?)`);
        },
        { consumerTag: tag },
      );
      tags.push(tag);
    }
    consumingAll = true;
    // One line once every queue is consumed: a reader waiting for it knows that all of them are.
    const consumed = queues.map(({ route, prefetch }, i) => ({ queue: route.queue, prefetch, consumerTag: tags[i] }));
    logger.info('consuming', { queues: consumed });
  }

  return {
    setup(model, rebuild) {
      if (stopping) return Promise.resolve();
      // stop() waits for a setup in progress, so that no consumer starts after it has cancelled.
      settingUp = consume(model, rebuild);
      return settingUp;
    },
    ready: () => channel !== null && consumingAll,
    async start() {},
    async stop() {
      stopping = true;
      await settingUp?.catch(() => undefined);
      const ch = channel;
      if (ch) {
        for (const tag of consumerTags) {
          await withTimeout(ch.cancel(tag), BROKER_ANSWER_MS, 'cancelling a consumer').catch(() => undefined);
        }
      }
      const drained = Promise.all([...inFlight]);
      const graceOver = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), graceMs).unref());
      if ((await Promise.race([drained, graceOver])) === 'timeout') {
        logger.warn('runs still in flight at the shutdown deadline; abandoning them', { runs: inFlight.size });
        giveUp();
        deps.leases.abortAll('shutdown');
        await Promise.all([...inFlight]);
      }
      giveUp();
    },
  };
}
