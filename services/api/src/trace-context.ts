import type { Request } from 'express';

// W3C Trace Context: version-traceid-parentid-flags in lower-case hex; version ff and all-zero ids are invalid.
const TRACEPARENT = /^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/;

/**
 * The request's `traceparent` when it is a valid W3C one, else null (the spec's answer to an invalid
 * one: start a new trace). It is stored on the task and copied into every message of it, so a value of
 * any length or shape, or two headers joined by a comma, would go everywhere the task goes.
 */
export function traceparentOf(req: Request): string | null {
  const value = req.get('traceparent');
  return value !== undefined && TRACEPARENT.test(value) ? value : null;
}
