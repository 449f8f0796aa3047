/**
 * Answers `load(key)` from an earlier answer while it is fresh, with one load in flight per key: however
 * many pages poll, each key costs one load per interval. An answer is fresh for `minMs` from the start of
 * its load, or for `freshFor(answer)` when that is longer (a count over a large table, countReuseMs). A
 * failed load is forgotten, so the next call tries again.
 */
export function cachedLoader<V>(
  minMs: number,
  load: (key: string) => Promise<V>,
  freshFor: (answer: V) => number = () => 0,
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
      (answer) => (entry.freshUntil = now + Math.max(minMs, freshFor(answer))),
      () => {
        if (entries.get(key) === entry) entries.delete(key);
      },
    );
    return entry.value;
  };
}

/**
 * How long a count over `rows` rows is reused, so that counting keeps Postgres busy at most a twentieth
 * of the time however often it is asked: a count reads about 6 000 rows a millisecond here (270 ms for
 * 1.6 million tasks), and is reused for twenty times that. By the rows, not by the time the count took,
 * which a busy machine or a wait for a connection would stretch.
 */
export function countReuseMs(rows: number): number {
  return Math.round((20 * rows) / 6000);
}
