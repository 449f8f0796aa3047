import { OverloadedError } from './errors';

export interface BatcherOptions<I> {
  /** Most items one call of `run` gets. */
  maxSize: number;
  /**
   * Most bytes one call of `run` gets, `of` giving an item's: an item over `max` goes alone. A
   * statement carrying many large values could otherwise run past the statement timeout, where each
   * alone would not, and fail every item of the batch on every try.
   */
  bytes?: { of: (item: I) => number; max: number };
  /** Most batches in flight at once; items arriving while all are busy wait for the next. */
  concurrency: number;
  /**
   * Whether the items of a batch that failed with this error are run again one by one, to find the
   * bad one. Not for an error every item would meet again (the database is down): those reject the
   * whole batch at once, and each caller retries or answers as it would for a single item.
   */
  retryAlone: (err: unknown) => boolean;
  /** Most items waiting for a slot; one more is refused at once with an OverloadedError. */
  maxQueue?: number;
  /** Longest an item waits for a slot; past it the item is refused with an OverloadedError, unsent. */
  maxWaitMs?: number;
}

/**
 * Group commit in the application. Items that arrive while `concurrency` batches are in flight wait
 * and go together in the next call of `run`, which must answer one result per item, in order. An idle
 * batcher runs an item at once, so batching adds no delay at low load and grows with the load by
 * itself. On this machine every round trip to Postgres costs more CPU than the statement it carries
 * (the benchmark's profiles show a third of each service in socket writes), so a batch of N costs
 * little more than one item.
 *
 * If a batch fails with an error `retryAlone` accepts, its items run again one after another in the same
 * slot, so that one bad item (a value Postgres refuses) fails only its own caller, with its own error.
 *
 * The queue is bounded in length (maxQueue) and in time (maxWaitMs): when every slot is held (by a
 * locked table, say) waiting callers are refused with an OverloadedError before their item is sent,
 * so a refusal never hides a write. An item already sent waits for its statement, which the pool's
 * statement timeout bounds.
 */
export function createBatcher<I, O>(
  run: (items: I[]) => Promise<O[]>,
  options: BatcherOptions<I>,
): (item: I) => Promise<O> {
  const state: BatcherState<I, O> = {
    run,
    options,
    queue: [],
    maxQueue: options.maxQueue ?? Infinity,
    maxWaitMs: options.maxWaitMs ?? Infinity,
    inFlight: 0,
    expiry: null,
  };
  return (item) =>
    new Promise<O>((resolve, reject) => {
      if (state.queue.length >= state.maxQueue) {
        reject(new OverloadedError(`${state.queue.length} requests are already waiting for the database`));
        return;
      }
      state.queue.push({ item, resolve, reject, deadline: Date.now() + state.maxWaitMs });
      dispatch(state);
    });
}

interface Waiting<I, O> {
  item: I;
  resolve: (result: O) => void;
  reject: (err: unknown) => void;
  deadline: number;
}

interface BatcherState<I, O> {
  run: (items: I[]) => Promise<O[]>;
  options: BatcherOptions<I>;
  /** In arrival order. */
  queue: Waiting<I, O>[];
  maxQueue: number;
  maxWaitMs: number;
  inFlight: number;
  expiry: NodeJS.Timeout | null;
}

function dispatch<I, O>(state: BatcherState<I, O>): void {
  while (state.inFlight < state.options.concurrency && state.queue.length > 0) {
    state.inFlight++;
    void runBatch(state, state.queue.splice(0, batchLength(state))).finally(() => {
      state.inFlight--;
      dispatch(state);
    });
  }
  if (state.queue.length > 0 && !state.expiry && state.maxWaitMs !== Infinity) expire(state);
}

/** How many items from the queue's head make the next batch: at least one, within maxSize and `bytes`. */
function batchLength<I, O>({ queue, options: { maxSize, bytes } }: BatcherState<I, O>): number {
  if (!bytes) return maxSize;
  let length = 0;
  let total = 0;
  for (const { item } of queue) {
    total += bytes.of(item);
    if (length === maxSize || (length > 0 && total > bytes.max)) break;
    length++;
  }
  return length;
}

async function runBatch<I, O>(state: BatcherState<I, O>, batch: Waiting<I, O>[]): Promise<void> {
  try {
    await runAndResolve(state, batch);
  } catch (err) {
    if (batch.length === 1 || !state.options.retryAlone(err)) {
      batch.forEach((w) => w.reject(err));
      return;
    }
    for (const entry of batch) await runAndResolve(state, [entry]).catch((alone: unknown) => entry.reject(alone));
  }
}

async function runAndResolve<I, O>(state: BatcherState<I, O>, batch: Waiting<I, O>[]): Promise<void> {
  const results = await state.run(batch.map((w) => w.item));
  if (results.length !== batch.length) {
    throw new Error(`a batch of ${batch.length} got ${results.length} results`);
  }
  batch.forEach((w, i) => w.resolve(results[i] as O));
}

/** Refuses the items whose wait ran out; the queue is in arrival order, so they are at its head. */
function expire<I, O>(state: BatcherState<I, O>): void {
  state.expiry = null;
  const now = Date.now();
  const { queue } = state;
  while (queue.length > 0 && (queue[0] as Waiting<I, O>).deadline <= now) {
    const expired = queue.shift() as Waiting<I, O>;
    expired.reject(new OverloadedError(`waited ${state.maxWaitMs} ms for a free database slot`));
  }
  const head = queue[0];
  if (head && state.maxWaitMs !== Infinity) {
    state.expiry = setTimeout(() => expire(state), head.deadline - now);
    state.expiry.unref();
  }
}
