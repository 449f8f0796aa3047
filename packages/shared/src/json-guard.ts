import { isStorableText } from './storable-text';

/**
 * Checks that schemas cannot make, on a parsed JSON body (the api's) or a payload (enqueueTask's).
 * Both are about what happens after validation: Postgres refuses some strings (isStorableText); zod's
 * z.json(), JSON.stringify and Postgres all recurse per level, overflowing the stack at a few thousand
 * levels, which a 64 kB body reaches at 32,000. The walk itself is iterative for that reason.
 */

export const UNSTORABLE_TEXT = 'must not contain NUL characters (\\u0000) or unpaired surrogates';

/** Far deeper than any real payload, far shallower than where anything downstream overflows. */
export const MAX_JSON_DEPTH = 64;

export interface JsonIssue {
  path: string;
  message: string;
}

/** The first string or key Postgres cannot store or zod would drop, or the first value nested too deep, if any. */
export function findJsonIssue(body: unknown): JsonIssue | undefined {
  const stack: { value: unknown; path: string[] }[] = [{ value: body, path: [] }];
  for (let next = stack.pop(); next; next = stack.pop()) {
    const { value, path } = next;
    if (typeof value === 'string') {
      if (!isStorableText(value)) return { path: path.join('.'), message: UNSTORABLE_TEXT };
      continue;
    }
    if (typeof value !== 'object' || value === null) continue;
    if (path.length >= MAX_JSON_DEPTH) {
      return { path: path.join('.'), message: `must not nest deeper than ${MAX_JSON_DEPTH} levels` };
    }
    for (const [key, child] of Object.entries(value)) {
      if (!isStorableText(key)) return { path: path.join('.'), message: `keys ${UNSTORABLE_TEXT}` };
      // zod drops such a key (a guard against prototype pollution): refused, rather than stored without it.
      if (key === '__proto__') return { path: path.join('.'), message: 'must not have a key named __proto__' };
      stack.push({ value: child, path: [...path, key] });
    }
  }
  return undefined;
}
