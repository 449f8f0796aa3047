import type { IncomingMessage } from 'node:http';
import express, { type Request, type RequestHandler } from 'express';
import { HttpProblem } from './problem';

const JSON_TYPES = ['application/json', 'application/*+json'];

// The length of each request's body as express.json read it, after Content-Encoding (a gzip of
// nothing is nothing): the headers alone cannot say whether a body was empty.
const bodyBytes = new WeakMap<IncomingMessage, number>();

/**
 * express.json for the api's request bodies, noting how long each one was for jsonBody. Not strict: a
 * body of valid JSON that is not an object (`null`, `123`) is parsed, and the route's schema answers
 * that it must be an object, as for an array; strict parsing called it malformed JSON.
 */
export function jsonParser(limit: string): RequestHandler {
  const verify = (req: IncomingMessage, _res: unknown, buf: Buffer) => void bodyBytes.set(req, buf.length);
  return express.json({ limit, type: JSON_TYPES, strict: false, verify });
}

/**
 * The parsed body of a POST that must send JSON. express.json leaves any other body unread, so without
 * this check a bulk action's `{"dryRun": true}` sent as text/plain would run as a real one on every
 * task. An empty body is a 400, not a wrong media type, and never stands for `{}`.
 */
export function jsonBody(req: Request, what: string): unknown {
  const json = req.is(JSON_TYPES);
  // Another media type is not read: its headers say whether anything was sent.
  const sent = json
    ? (bodyBytes.get(req) ?? 0) > 0
    : req.get('transfer-encoding') !== undefined || Number(req.get('content-length') ?? 0) > 0;
  if (!sent) throw new HttpProblem(400, 'Missing Body', `send ${what} as an application/json body`);
  if (!json) throw new HttpProblem(415, 'Unsupported Media Type', `send ${what} as application/json`);
  return req.body;
}
