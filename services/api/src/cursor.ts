import { z } from 'zod';
import { HttpProblem } from './problem';
import { idSchema } from './schemas';

/**
 * The keyset cursor of GET /tasks: base64url of [created_at as Postgres text, id]. The text keeps
 * microseconds (a JS Date would round to milliseconds and skip or repeat rows).
 */

// Exactly what `created_at::text` yields (ISO DateStyle): "2024-05-01 12:34:56.123456+00", the fraction
// omitted when zero, the offset in the session's TimeZone ("+00", "+05:30", "-03"). JS Date.parse is
// no check: it takes "1", which Postgres refuses as a timestamptz (SQLSTATE 22007).
const PG_TIMESTAMPTZ =
  /^(\d{4})-(\d{2})-(\d{2}) ([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?[+-](0\d|1[0-5])(:[0-5]\d){0,2}$/;

const cursorSchema = z.tuple([z.string().max(64), idSchema]);

/** Whether the text is a timestamp the api emitted, down to the calendar (no 31 February). */
function isPgTimestamp(text: string): boolean {
  const match = PG_TIMESTAMPTZ.exec(text);
  if (!match) return false;
  const [year, month, day] = match.slice(1, 4).map(Number) as [number, number, number];
  const date = new Date(Date.UTC(year, month - 1, day));
  return date.getUTCFullYear() === year && date.getUTCMonth() === month - 1 && date.getUTCDate() === day;
}

export function encodeCursor(row: { cursor_created_at: string; id: string }): string {
  return Buffer.from(JSON.stringify([row.cursor_created_at, row.id])).toString('base64url');
}

export function decodeCursor(cursor: string): { createdAt: string; id: string } {
  try {
    const [createdAt, id] = cursorSchema.parse(JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')));
    if (!isPgTimestamp(createdAt)) throw new Error('bad timestamp');
    return { createdAt, id };
  } catch {
    throw new HttpProblem(400, 'Invalid Cursor', 'the cursor is not one this api returned');
  }
}
