import type { Response } from 'express';
import { HttpProblem } from './problem';

/** Who asks: an owner sees and acts on their own tasks only, an admin on every owner's. */
export interface Viewer {
  owner: string;
  admin: boolean;
}

/** Set by authenticate() or a stream token; a route behind neither has no viewer, which is a bug. */
export function viewer(res: Response): Viewer {
  const { owner, admin } = res.locals as { owner?: unknown; admin?: unknown };
  if (typeof owner !== 'string') throw new Error('no authenticated owner on this request');
  return { owner, admin: admin === true };
}

/**
 * The owner whose tasks a list shows: the caller's own; for an admin, the one `?owner=` names, or null
 * for every owner. The only place a list loses its owner filter, so only an admin's ever does.
 */
export function listOwner(who: Viewer, requested: string | undefined): string | null {
  if (who.admin) return requested ?? null;
  if (requested !== undefined && requested !== who.owner) {
    throw new HttpProblem(403, 'Forbidden', "only an admin may see another owner's tasks");
  }
  return who.owner;
}

/** Refuses a caller who is not an admin (403: the route exists, and says so). */
export function requireAdmin(who: Viewer): void {
  if (!who.admin) throw new HttpProblem(403, 'Forbidden', 'this needs an admin token');
}

/**
 * The log fields of an action on a task: who acted, as an admin or not, on whose task, and the id of the
 * request that asked (X-Request-Id, or the one the api gave it).
 */
export function actor(
  res: Response,
  taskOwner: string,
): { by: string; admin: boolean; owner: string; requestId: string } {
  const who = viewer(res);
  return { by: who.owner, admin: who.admin, owner: taskOwner, requestId: res.locals.requestId as string };
}
