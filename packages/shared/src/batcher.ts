export interface BatcherOptions {
  /** Most items one call of `run` gets. */
  maxSize: number;
  /** Most calls of `run` in flight at once; items arriving while all are busy wait for the next. */
  concurrency: number;
}

/**
 * Group commit in the application. Items that arrive while `concurrency` batches are in flight wait
 * and go together in the next call of `run`, which must answer one result per item, in order. An idle
 * batcher runs an item at once, so batching adds no delay at low load and grows with the load by
 * itself. On this machine every round trip to Postgres costs more CPU than the statement it carries
 * (the benchmark's profiles show a third of each service in socket writes), so a batch of N costs
 * little more than one item.
 *
 * If a batch fails, each of its items is run again alone, so one bad item (a value Postgres refuses)
 * fails only its own caller, with its own error.
 */
export function createBatcher<I, O>(
  run: (items: I[]) => Promise<O[]>,
  options: BatcherOptions,
): (item: I) => Promise<O> {
  interface Waiting {
    item: I;
    resolve: (result: O) => void;
    reject: (err: unknown) => void;
  }
  const queue: Waiting[] = [];
  let inFlight = 0;

  async function runAlone(entry: Waiting): Promise<void> {
    try {
      const [result] = await run([entry.item]);
      entry.resolve(result as O);
    } catch (err) {
      entry.reject(err);
    }
  }

  async function runBatch(batch: Waiting[]): Promise<void> {
    if (batch.length === 1) return runAlone(batch[0] as Waiting);
    let results: O[];
    try {
      results = await run(batch.map((w) => w.item));
    } catch {
      await Promise.all(batch.map(runAlone));
      return;
    }
    batch.forEach((w, i) => w.resolve(results[i] as O));
  }

  function dispatch(): void {
    while (inFlight < options.concurrency && queue.length > 0) {
      inFlight++;
      void runBatch(queue.splice(0, options.maxSize)).finally(() => {
        inFlight--;
        dispatch();
      });
    }
  }

  return (item) =>
    new Promise<O>((resolve, reject) => {
      queue.push({ item, resolve, reject });
      dispatch();
    });
}
