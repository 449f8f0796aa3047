/**
 * Answers `load(key)` from an answer at most `ms` old, with one load in flight per key: however many
 * pages poll, each key costs one load per interval. A failed load is forgotten, so the next call tries
 * again.
 */
export function cachedLoader<V>(ms: number, load: (key: string) => Promise<V>): (key: string) => Promise<V> {
  const entries = new Map<string, { at: number; value: Promise<V> }>();
  return (key) => {
    const now = Date.now();
    for (const [k, e] of entries) if (now - e.at >= ms) entries.delete(k);
    const cached = entries.get(key);
    if (cached) return cached.value;
    const entry = { at: now, value: load(key) };
    entries.set(key, entry);
    entry.value.catch(() => {
      if (entries.get(key) === entry) entries.delete(key);
    });
    return entry.value;
  };
}
