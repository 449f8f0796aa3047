import { cachedLoader, countReuseMs } from '@taskbox/shared';

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

  it('reuses an answer for its minimum, or for as long as freshFor says of it when that is longer', async () => {
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

    // A count of 26 million tasks, asked every second: it runs again after a minute and a half, not
    // back to back, however long it took.
    const counted = slowLoad(3000);
    const counts = cachedLoader(1000, counted.load, () => countReuseMs(26_000_000));
    for (let second = 0; second < 80; second++) {
      void counts('every owner');
      await jest.advanceTimersByTimeAsync(1000);
    }
    expect(counted.begun).toHaveLength(1);
    await jest.advanceTimersByTimeAsync(10_000);
    void counts('every owner');
    expect(counted.begun).toHaveLength(2);
  });

  it('reuses a count for a second per 300 000 rows', () => {
    expect(countReuseMs(300_000)).toBe(1000);
    expect(countReuseMs(26_000_000)).toBe(86_667);
    expect(countReuseMs(5)).toBeLessThan(1000);
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
