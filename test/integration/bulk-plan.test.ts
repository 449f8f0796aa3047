import { sql } from 'kysely';
import { lockingQuery } from '../../services/api/src/retry-sql';
import { createTestDatabase, type TestDatabase } from '../helpers/db';

interface PlanNode {
  'Rows Removed by Filter'?: number;
  'Actual Rows'?: number;
  'Node Type'?: string;
  Plans?: PlanNode[];
}

/** Rows a plan read from tasks and dropped: every node's, added up. */
const rowsRead = (node: PlanNode): number =>
  (node['Rows Removed by Filter'] ?? 0) +
  (/Scan/.test(node['Node Type'] ?? '') ? (node['Actual Rows'] ?? 0) : 0) +
  (node.Plans ?? []).reduce((sum, child) => sum + rowsRead(child), 0);

describe('a bulk action on a table of finished tasks', () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database.drop();
  });

  it('reads the tasks it matches, not every older task before them', async () => {
    // A month of finished tasks, then today's backlog: what an operator cancels in an incident.
    await sql`
      INSERT INTO tasks (id, type, payload, status, owner, correlation_id, created_at, finished_at)
      SELECT gen_random_uuid(), 'echo', '{}', 'succeeded', 'anonymous', 'old',
             now() - interval '30 days' + i * interval '1 minute', now() - interval '30 days' + i * interval '1 minute'
      FROM generate_series(1, 20000) AS i`.execute(database.db);
    await sql`
      INSERT INTO tasks (id, type, payload, status, owner, correlation_id)
      SELECT gen_random_uuid(), 'echo', '{}', 'pending', 'anonymous', 'backlog' FROM generate_series(1, 5000)`.execute(
      database.db,
    );
    await sql`ANALYZE tasks`.execute(database.db);
    const pending = sql<boolean>`status = ANY(${['pending']}::text[])`;
    const { rows } = await database.db.transaction().execute((tx) =>
      sql<{
        'QUERY PLAN': { Plan: PlanNode }[];
      }>`EXPLAIN (ANALYZE, FORMAT JSON) ${lockingQuery(pending, 10, true)}`.execute(tx),
    );
    expect(rowsRead(rows[0]!['QUERY PLAN'][0]!.Plan)).toBeLessThan(6000);
  });
});
