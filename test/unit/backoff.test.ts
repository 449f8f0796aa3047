import { backoffMs } from '@taskbox/shared';

describe('backoffMs', () => {
  it('grows exponentially from the base and never passes the cap', () => {
    const top = () => 1; // the ceiling of the jitter range
    expect([1, 2, 3, 4].map((n) => backoffMs(n, 100, 10_000, top))).toEqual([100, 200, 400, 800]);
    expect(backoffMs(30, 100, 10_000, top)).toBe(10_000);
  });

  it('spreads retries over [0, ceiling] (full jitter) so failures do not retry in lockstep', () => {
    expect(backoffMs(3, 100, 10_000, () => 0)).toBe(0);
    expect(backoffMs(3, 100, 10_000, () => 0.5)).toBe(200);
    const samples = new Set(Array.from({ length: 50 }, () => backoffMs(5, 100, 10_000)));
    expect(samples.size).toBeGreaterThan(10);
  });
});
