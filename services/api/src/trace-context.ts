import type { Request } from 'express';

// W3C Trace Context: version-traceid-parentid-flags in lower-case hex; all-zero ids are invalid. Version 00
// is exactly that. A later version (not ff, which is invalid) begins the same way, and what it adds
// follows a '-'.
const VERSION_00 = /^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/;
const LATER_VERSION = /^(?!00|ff)[0-9a-f]{2}-((?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2})(?:-.*)?$/;

/**
 * The request's `traceparent` when it is a valid W3C one, else null (the spec's answer to an invalid
 * one: start a new trace). It is stored on the task and copied into every message of it, so a value of
 * any length or shape, or two headers joined by a comma, would go everywhere the task goes. A later
 * version is read as the spec asks, as version 00, and passed on as one: without what this code cannot read.
 */
export function traceparentOf(req: Request): string | null {
  const value = req.get('traceparent');
  if (value === undefined) return null;
  if (VERSION_00.test(value)) return value;
  const later = LATER_VERSION.exec(value);
  return later ? `00-${later[1]}` : null;
}
