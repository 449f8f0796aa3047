import { sql, type RawBuilder } from 'kysely';
import { matching } from '../../services/api/src/bulk-sql';
import { lockingQuery } from '../../services/api/src/retry-sql';
import { listQuery } from '../../services/api/src/task-sql';
import { finishedAttemptsDeletion } from '../../services/relay/src/task-sql';
import { createTestDatabase, type TestDatabase } from '../helpers/db';

interface PlanNode {
  'Rows Removed by Filter'?: number;
  'Actual Rows'?: number;
  'Node Type'?: string;
  Alias?: string;
  Plans?: PlanNode[];
}

/** Rows a plan read from its scans, kept or dropped: every node's, added up. */
const rowsRead = (node: PlanNode): number =>
  (node['Rows Removed by Filter'] ?? 0) +
  (/Scan/.test(node['Node Type'] ?? '') ? (node['Actual Rows'] ?? 0) : 0) +
  (node.Plans ?? []).reduce((sum, child) => sum + rowsRead(child), 0);

/**
 * What an operator asks of a table that holds a month of finished tasks: each statement reads the
 * tasks it is about, not every task before them. Counted from EXPLAIN ANALYZE, never timed.
 */
describe('statements on a month of tasks', () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase();
    await sql`
      INSERT INTO tasks (id, type, payload, status, owner, correlation_id, created_at, finished_at, error)
      SELECT gen_random_uuid(), 'echo', '{}', CASE WHEN i % 200 = 0 THEN 'failed' ELSE 'succeeded' END,
             'anonymous', 'old', now() - interval '30 days' + i * interval '1 minute',
             now() - interval '30 days' + i * interval '1 minute',
             CASE WHEN i = 200 THEN '{"name": "Error", "message": "needle"}'::jsonb
                  WHEN i % 200 = 0 THEN '{"name": "Error", "message": "boom"}'::jsonb END
      FROM generate_series(1, 20000) AS i`.execute(database.db);
    // Today's backlog, what an operator cancels in an incident.
    await sql`
      INSERT INTO tasks (id, type, payload, status, owner, correlation_id)
      SELECT gen_random_uuid(), 'echo', '{}', 'pending', 'anonymous', 'backlog' FROM generate_series(1, 5000)`.execute(
      database.db,
    );
    // Each finished task's attempt, started and finished when the task finished.
    await sql`
      INSERT INTO task_attempts (task_id, attempt, external_job_id, started_at, finished_at, outcome)
      SELECT id, 1, 'c:1', finished_at, finished_at, status FROM tasks WHERE finished_at IS NOT NULL`.execute(
      database.db,
    );
    await sql`ANALYZE tasks`.execute(database.db);
    await sql`ANALYZE task_attempts`.execute(database.db);
  });
  afterAll(async () => {
    await database.drop();
  });

  it('a bulk action on a filter an index has reads the tasks it matches, not every older task before them', async () => {
    // Cancel today's backlog; retry the failures that carry a message. Without such a filter a bulk
    // action scans the table and sorts what matches, which still ends within the statement timeout.
    const requests = [matching('cancel', { status: 'pending' }), matching('retry', { errorContains: 'needle' })];
    for (const [i, where] of requests.entries()) {
      const { rows } = await database.db.transaction().execute((tx) =>
        sql<{
          'QUERY PLAN': { Plan: PlanNode }[];
        }>`EXPLAIN (ANALYZE, FORMAT JSON) ${lockingQuery(where, 10, true)}`.execute(tx),
      );
      expect([i, rowsRead(rows[0]!['QUERY PLAN'][0]!.Plan) < 6000]).toEqual([i, true]);
    }
  });

  it('a list filtered by error text reads the tasks that have an error, not every task', async () => {
    for (const owner of [null, 'anonymous']) {
      const list = listQuery(database.db, { owner, errorContains: 'needle', limit: 20 });
      const [plan] = (await list.explain('json', sql`analyze`)) as unknown as { 'QUERY PLAN': { Plan: PlanNode }[] }[];
      // The owner beside the figure, so that a failure says which list read too much.
      expect([owner, rowsRead(plan!['QUERY PLAN'][0]!.Plan) < 1000]).toEqual([owner, true]);
    }
    const found = await listQuery(database.db, { owner: null, errorContains: 'NEEDLE', limit: 20 }).execute();
    expect(found.map((t) => t.error)).toEqual([{ name: 'Error', message: 'needle' }]);
  });

  it("retention's sweep of finished attempts reads those it deletes, not every attempt, each minute", async () => {
    const day = 86_400_000;
    // None past 31 days; 1 440 past 29 days (the month's first day), fewer than the batch of 2 000.
    for (const [retentionMs, deleted] of [
      [31 * day, 0],
      [29 * day, 1440],
    ] as const) {
      const plan = await explainRolledBack(finishedAttemptsDeletion(retentionMs, 2000));
      // The search for the batch, the IN's subquery: the delete that follows finds each row by its key,
      // or, on a table as small as this one, by a scan of its own.
      const search = subquery(plan)!;
      expect([deleted, search['Actual Rows'], rowsRead(search) <= 2 * deleted + 10]).toEqual([deleted, deleted, true]);
    }
  });

  const subquery = (node: PlanNode): PlanNode | undefined =>
    node.Alias === 'ANY_subquery' ? node : (node.Plans ?? []).map(subquery).find((n) => n !== undefined);

  const rolledBack = new Error('rolled back');

  /** The plan of a statement that writes, run by EXPLAIN ANALYZE in a transaction then rolled back. */
  async function explainRolledBack(statement: RawBuilder<unknown>): Promise<PlanNode> {
    let plan: PlanNode | undefined;
    await database.db
      .transaction()
      .execute(async (tx) => {
        const { rows } = await sql<{
          'QUERY PLAN': { Plan: PlanNode }[];
        }>`EXPLAIN (ANALYZE, FORMAT JSON) ${statement}`.execute(tx);
        plan = rows[0]!['QUERY PLAN'][0]!.Plan;
        throw rolledBack;
      })
      .catch((err: unknown) => {
        if (err !== rolledBack) throw err;
      });
    return plan!;
  }
});
