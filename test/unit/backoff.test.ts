import { backoffMs } from '@taskbox/shared';

const policy = { baseMs: 100, maxMs: 10_000 };

describe('backoffMs', () => {
  it('grows exponentially from the base and never passes the cap', () => {
    const top = () => 1; // the ceiling of the jitter range
    expect([1, 2, 3, 4].map((n) => backoffMs(n, policy, top))).toEqual([100, 200, 400, 800]);
    expect(backoffMs(30, policy, top)).toBe(10_000);
  });

  it('spreads retries over [0, ceiling] (full jitter) so failures do not retry in lockstep', () => {
    expect(backoffMs(3, policy, () => 0)).toBe(0);
    expect(backoffMs(3, policy, () => 0.5)).toBe(200);
    const samples = new Set(Array.from({ length: 50 }, () => backoffMs(5, policy)));
    expect(samples.size).toBeGreaterThan(10);
  });
});
