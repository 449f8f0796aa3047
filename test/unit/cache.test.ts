import { cachedLoader } from '@taskbox/shared';

/** A load that takes `ms` (fake time) and answers how many loads have begun. */
function slowLoad(ms: number) {
  const begun: string[] = [];
  const load = (key: string) => {
    begun.push(key);
    const n = begun.length;
    return new Promise<number>((resolve) => setTimeout(() => resolve(n), ms));
  };
  return { load, begun };
}

describe('a cached loader', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('reuses an answer for its minimum; scaled, a slow one for twenty times as long as it took', async () => {
    const quick = slowLoad(10);
    const get = cachedLoader(1000, quick.load);
    const first = get('k');
    await jest.advanceTimersByTimeAsync(10);
    expect(await first).toBe(1);
    await jest.advanceTimersByTimeAsync(980);
    expect(await get('k')).toBe(1);
    await jest.advanceTimersByTimeAsync(10);
    void get('k');
    expect(quick.begun).toHaveLength(2);

    // A count that takes 3 s is asked every second: it runs once a minute, not back to back.
    const slow = slowLoad(3000);
    const counts = cachedLoader(1000, slow.load, { scaled: true });
    for (let second = 0; second < 62; second++) {
      void counts('every owner');
      await jest.advanceTimersByTimeAsync(1000);
    }
    expect(slow.begun).toHaveLength(2);

    // Not scaled (a load that waits, not one that works): asked again once its minimum has passed.
    const waits = slowLoad(3000);
    const checks = cachedLoader(1000, waits.load);
    for (let second = 0; second < 62; second++) {
      void checks('checks');
      await jest.advanceTimersByTimeAsync(1000);
    }
    expect(waits.begun.length).toBeGreaterThan(15);
  });

  it('shares one load per key among the callers that ask while it runs, and forgets a failed one', async () => {
    let fail = true;
    const begun: string[] = [];
    const get = cachedLoader(10, async (key) => {
      begun.push(key);
      await new Promise((resolve) => setTimeout(resolve, 50));
      if (fail) throw new Error('statement timeout');
      return key;
    });
    const asked = [get('a'), get('a'), get('b')];
    await jest.advanceTimersByTimeAsync(20);
    asked.push(get('a'));
    await jest.advanceTimersByTimeAsync(30);
    const answers = await Promise.allSettled(asked);
    expect(answers.map((a) => a.status)).toEqual(['rejected', 'rejected', 'rejected', 'rejected']);
    expect(begun).toEqual(['a', 'b']);
    fail = false;
    const again = get('a');
    await jest.advanceTimersByTimeAsync(50);
    expect(await again).toBe('a');
    expect(begun).toEqual(['a', 'b', 'a']);
  });
});
