import { sql, type RawBuilder } from 'kysely';
import type { TaskStatus } from '@taskbox/shared';

/** What GET /tasks and the bulk actions filter on: every given field must match. */
export interface TaskFilter {
  /** null or absent: every owner (only ever for an admin: listOwner in viewer.ts). */
  owner?: string | null;
  type?: string;
  status?: TaskStatus;
  createdAfter?: string;
  createdBefore?: string;
  /** Part of the error's name or message, in any case. */
  errorContains?: string;
}

/** The filter as conditions on `tasks`, values as parameters. */
export function filterConditions(filter: TaskFilter): RawBuilder<boolean>[] {
  const parts: RawBuilder<boolean>[] = [];
  if (filter.owner) parts.push(sql`owner = ${filter.owner}`);
  if (filter.type) parts.push(sql`type = ${filter.type}`);
  if (filter.status) parts.push(sql`status = ${filter.status}`);
  if (filter.createdAfter) parts.push(sql`created_at >= ${filter.createdAfter}::timestamptz`);
  if (filter.createdBefore) parts.push(sql`created_at < ${filter.createdBefore}::timestamptz`);
  if (filter.errorContains) {
    // strpos, not LIKE: the text is matched as given, "%" and "_" included. "error IS NOT NULL" lets a
    // list read tasks_errored or tasks_owner_errored (migration 0014), only the tasks that have an error.
    const error = sql`lower(concat_ws(' ', error->>'name', error->>'message'))`;
    parts.push(sql`error IS NOT NULL`, sql`strpos(${error}, lower(${filter.errorContains})) > 0`);
  }
  return parts;
}

/** Conditions joined with AND; true for none. */
export function allOf(parts: RawBuilder<boolean>[]): RawBuilder<boolean> {
  return parts.length === 0 ? sql<boolean>`true` : sql<boolean>`${sql.join(parts, sql` AND `)}`;
}
