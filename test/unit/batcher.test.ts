import { OverloadedError, createBatcher } from '@taskbox/shared';

/** A `run` whose calls stay open until the test releases them, recording what each call got. */
function controlledRun(fail: (items: number[]) => boolean = () => false) {
  const calls: { items: number[]; release: () => void }[] = [];
  const run = (items: number[]) =>
    new Promise<string[]>((resolve, reject) => {
      calls.push({
        items,
        release: () =>
          fail(items) ? reject(new Error(`bad batch ${items.join(',')}`)) : resolve(items.map((i) => `r${i}`)),
      });
    });
  return { run, calls };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

describe('createBatcher', () => {
  it('runs an item at once when idle, and groups the items that arrive while every slot is busy', async () => {
    const { run, calls } = controlledRun();
    const submit = createBatcher(run, { maxSize: 3, concurrency: 1, retryAlone: () => true });
    const first = submit(1);
    const rest = [2, 3, 4, 5].map((i) => submit(i));
    await flush();
    expect(calls.map((c) => c.items)).toEqual([[1]]);

    calls[0]!.release();
    await expect(first).resolves.toBe('r1');
    await flush();
    expect(calls.map((c) => c.items)).toEqual([[1], [2, 3, 4]]);

    calls[1]!.release();
    await flush();
    calls[2]!.release();
    expect(calls.map((c) => c.items)).toEqual([[1], [2, 3, 4], [5]]);
    await expect(Promise.all(rest)).resolves.toEqual(['r2', 'r3', 'r4', 'r5']);
  });

  it('keeps a batch within `bytes.max`, and sends an item over it alone', async () => {
    const { run, calls } = controlledRun();
    // An item's bytes are its value: 1..3 fit together in 10, 20 goes alone, 4 and 5 follow it, 6 does not fit with them.
    const submit = createBatcher(run, {
      maxSize: 10,
      concurrency: 1,
      retryAlone: () => true,
      bytes: { of: (item) => item, max: 10 },
    });
    const results = [0, 1, 2, 3, 20, 4, 5, 6].map((i) => submit(i));
    for (let released = 0; released < 5; released++) {
      await flush();
      calls[released]!.release();
    }
    await expect(Promise.all(results)).resolves.toEqual(['r0', 'r1', 'r2', 'r3', 'r20', 'r4', 'r5', 'r6']);
    expect(calls.map((c) => c.items)).toEqual([[0], [1, 2, 3], [20], [4, 5], [6]]);
  });

  it('keeps up to `concurrency` batches in flight', async () => {
    const { run, calls } = controlledRun();
    const submit = createBatcher(run, { maxSize: 10, concurrency: 2, retryAlone: () => true });
    const results = [1, 2, 3, 4].map((i) => submit(i));
    await flush();
    expect(calls.map((c) => c.items)).toEqual([[1], [2]]);
    calls[1]!.release();
    await flush();
    expect(calls.map((c) => c.items)).toEqual([[1], [2], [3, 4]]);
    calls.forEach((c) => c.release());
    await flush();
    await expect(Promise.all(results)).resolves.toEqual(['r1', 'r2', 'r3', 'r4']);
  });

  it('runs the items of a failed batch again one by one, so only the bad item fails, with its own error', async () => {
    const { run, calls } = controlledRun((items) => items.includes(3));
    const submit = createBatcher(run, { maxSize: 10, concurrency: 1, retryAlone: () => true });
    const first = submit(1);
    const settled = Promise.allSettled([2, 3, 4].map((i) => submit(i)));
    await flush();
    calls[0]!.release();
    await first;
    await flush();
    calls[1]!.release();
    for (let n = 2; n < 5; n++) {
      await flush();
      expect(calls).toHaveLength(n + 1); // one at a time: the slot stays taken until all have run
      calls[n]!.release();
    }
    expect(calls.map((c) => c.items)).toEqual([[1], [2, 3, 4], [2], [3], [4]]);
    const outcomes = await settled;
    expect(outcomes.map((o) => (o.status === 'fulfilled' ? o.value : (o.reason as Error).message))).toEqual([
      'r2',
      'bad batch 3',
      'r4',
    ]);
  });

  it('fails the whole batch at once with an error that retryAlone refuses (every item would meet it)', async () => {
    const { run, calls } = controlledRun((items) => items.length > 1);
    const submit = createBatcher(run, { maxSize: 10, concurrency: 1, retryAlone: () => false });
    const first = submit(1);
    const settled = Promise.allSettled([2, 3].map((i) => submit(i)));
    await flush();
    calls[0]!.release();
    await first;
    await flush();
    calls[1]!.release();
    const outcomes = await settled;
    expect(outcomes.map((o) => o.status === 'rejected' && (o.reason as Error).message)).toEqual([
      'bad batch 2,3',
      'bad batch 2,3',
    ]);
    expect(calls).toHaveLength(2);
  });

  it('refuses an item at once when maxQueue items already wait, and never sends it', async () => {
    const { run, calls } = controlledRun();
    const submit = createBatcher(run, { maxSize: 10, concurrency: 1, retryAlone: () => true, maxQueue: 2 });
    const inFlight = submit(1);
    const waiting = [submit(2), submit(3)];
    await expect(submit(4)).rejects.toBeInstanceOf(OverloadedError);
    await flush();
    calls[0]!.release();
    await inFlight;
    await flush();
    calls[1]!.release();
    await expect(Promise.all(waiting)).resolves.toEqual(['r2', 'r3']);
    expect(calls.map((c) => c.items)).toEqual([[1], [2, 3]]);
  });

  it('refuses items that waited maxWaitMs for a slot before they are sent, and sends the ones that arrive later', async () => {
    const { run, calls } = controlledRun();
    const submit = createBatcher(run, { maxSize: 10, concurrency: 1, retryAlone: () => true, maxWaitMs: 50 });
    const inFlight = submit(1);
    const early = Promise.allSettled([submit(2), submit(3)]);
    await new Promise((resolve) => setTimeout(resolve, 30));
    const late = submit(4);
    const outcomes = await early;
    expect(outcomes.map((o) => o.status === 'rejected' && o.reason instanceof OverloadedError)).toEqual([true, true]);
    calls[0]!.release();
    await inFlight;
    await flush();
    calls[1]!.release();
    await expect(late).resolves.toBe('r4');
    expect(calls.map((c) => c.items)).toEqual([[1], [4]]);
  });
});
