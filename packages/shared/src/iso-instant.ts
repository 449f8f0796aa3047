import { z } from 'zod';

/**
 * A time as POST /tasks, its list filters and enqueueTask take it: ISO 8601 with an offset (without one,
 * a time would be read in the process's time zone), and as Postgres's timestamptz takes it from text: a
 * year from 0001, an offset within ±15:59, and at most nanoseconds (Postgres keeps microseconds and
 * refuses a fraction of a hundred-odd digits). Postgres refuses the rest (SQLSTATE 22008, 22009), which
 * would answer 400 instead of saying which field is wrong, or abort an enqueueTask caller's transaction.
 */
export const isoInstant = z.iso
  .datetime({ offset: true })
  .refine(storableInstant, 'must have a year from 0001, at most 9 digits after the second and an offset within ±15:59');

function storableInstant(value: string): boolean {
  const offset = /([+-])(\d{2}):?(\d{2})?$/.exec(value);
  const fraction = /\.(\d+)/.exec(value)?.[1] ?? '';
  return !value.startsWith('0000') && fraction.length <= 9 && (offset === null || Number(offset[2]) < 16);
}
