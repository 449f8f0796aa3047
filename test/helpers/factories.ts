import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { insertOutbox, outboxMessage, TASK_CHANNEL, taskChanged, type Db, type TaskStatus } from '@taskbox/shared';

export interface TaskFixture {
  id?: string;
  type?: string;
  payload?: unknown;
  status?: TaskStatus;
  attempts?: number;
  maxAttempts?: number;
  owner?: string;
  leaseExpired?: boolean;
  /** Also write the outbox row for the next attempt. */
  withOutbox?: boolean;
}

/** Inserts a task in any state, as a test needs it (bypassing the api). */
export async function insertTaskFixture(db: Db, f: TaskFixture = {}): Promise<string> {
  const id = f.id ?? randomUUID();
  const type = f.type ?? 'echo';
  const status = f.status ?? 'pending';
  await db
    .insertInto('tasks')
    .values({
      id,
      type,
      payload: JSON.stringify(f.payload ?? {}),
      status,
      attempts: f.attempts ?? 0,
      max_attempts: f.maxAttempts ?? 3,
      owner: f.owner ?? 'anonymous',
      correlation_id: `corr-${id}`,
      lease_until:
        status === 'processing' ? sql<Date>`now() + ${f.leaseExpired ? '-1 minute' : '1 minute'}::interval` : null,
    })
    .execute();
  if (f.withOutbox)
    await insertOutbox(db, [outboxMessage({ id, type }, (f.attempts ?? 0) + 1, { correlationId: `corr-${id}` })]);
  return id;
}

/** What the worker does: change the task (a new version), then announce it after the commit. */
export async function changeTask(db: Db, id: string, change: { status: TaskStatus; progress?: number }): Promise<void> {
  await db
    .updateTable('tasks')
    .set({ ...change, ...taskChanged })
    .where('id', '=', id)
    .execute();
  await sql`SELECT pg_notify(${TASK_CHANNEL}, ${id})`.execute(db);
}

export const progressTask = (db: Db, id: string, fraction: number): Promise<void> =>
  changeTask(db, id, { status: 'processing', progress: fraction });
