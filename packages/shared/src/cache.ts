// With `scaled`, an answer is fresh for at least this many times as long as its load took: a load that
// grows with a table (a count over every task) then keeps Postgres busy at most a twentieth of the
// time per key, however often it is asked and however large the table grows.
const LOAD_SHARE = 20;

/**
 * Answers `load(key)` from an earlier answer while it is fresh, with one load in flight per key: however
 * many pages poll, each key costs one load per interval. An answer is fresh for `minMs` from the start of
 * its load; `scaled`, for LOAD_SHARE times as long as the load took when that is longer. Not for a load
 * that mostly waits (the doctor's checks wait out timeouts while the broker is down): its answer would
 * stay stale for minutes. A failed load is forgotten, so the next call tries again.
 */
export function cachedLoader<V>(
  minMs: number,
  load: (key: string) => Promise<V>,
  { scaled = false } = {},
): (key: string) => Promise<V> {
  const entries = new Map<string, { freshUntil: number; value: Promise<V> }>();
  return (key) => {
    const now = Date.now();
    for (const [k, e] of entries) if (now >= e.freshUntil) entries.delete(k);
    const cached = entries.get(key);
    if (cached) return cached.value;
    const entry = { freshUntil: Infinity, value: load(key) };
    entries.set(key, entry);
    entry.value.then(
      () => (entry.freshUntil = now + Math.max(minMs, scaled ? LOAD_SHARE * (Date.now() - now) : 0)),
      () => {
        if (entries.get(key) === entry) entries.delete(key);
      },
    );
    return entry.value;
  };
}
