// What the comparison servers (naive-server.mjs, peers/*-server.mjs) share: one HTTP shape, one task
// row, and one record of when a worker started a task. The row goes into taskbox's own `tasks` table
// (the database is migrated as for taskbox), so that every system writes the same row and the bench
// reads every system's latency with the same query.
import http from 'node:http';

/** The task row every comparison server writes: its created_at is its transaction's time. */
export const INSERT_TASK = `INSERT INTO tasks (id, type, payload, owner, correlation_id)
  VALUES ($1, 'echo', $2::jsonb, 'bench', $3) RETURNING *`;

// A worker's start, as taskbox's worker records it in task_attempts.started_at: its transaction's time.
const START_TABLE = `CREATE TABLE IF NOT EXISTS bench_starts (
  task_id uuid PRIMARY KEY, started_at timestamptz NOT NULL DEFAULT now())`;

/** Creates the table in which the comparison workers record their starts. */
export async function createStartTable(pool) {
  await pool.query(START_TABLE);
}

/**
 * Records that a worker started `taskId`, if its row is there: answers false when it is not (a
 * message that overtook its task's commit). A second start of the same task keeps the first.
 */
export async function recordStart(pool, taskId) {
  const { rowCount } = await pool.query(
    `INSERT INTO bench_starts (task_id) SELECT id FROM tasks WHERE id = $1 ON CONFLICT DO NOTHING`,
    [taskId],
  );
  return rowCount === 1;
}

/** Runs `fn(client)` in one transaction on a client of `pool`: COMMIT when it resolves, else ROLLBACK. */
export async function inTransaction(pool, fn) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (d) => (data += d));
    req.on('end', () => resolve(data));
    req.on('error', reject);
  });
}

/**
 * Serves `POST /<route>` for each of `routes` (name → async (payloadJson) → task row, answered 202)
 * and `GET /stats` (`stats()` as JSON) on PORT. On SIGTERM: stops listening, awaits `close()`, exits.
 */
export function serveTasks({ routes, stats = () => ({}), close }) {
  const server = http.createServer(async (req, res) => {
    try {
      if (req.method === 'GET' && req.url === '/stats') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats()));
        return;
      }
      const route = routes[req.url.slice(1)];
      if (req.method !== 'POST' || !route) {
        res.writeHead(404).end();
        return;
      }
      const body = JSON.parse(await readBody(req));
      const row = await route(JSON.stringify(body.payload ?? {}));
      res.writeHead(202, { 'content-type': 'application/json' }).end(JSON.stringify(row));
    } catch (err) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err));
    }
  });
  server.listen(Number(process.env.PORT), '127.0.0.1');
  process.on('SIGTERM', () => {
    server.close();
    close().finally(() => process.exit(0));
  });
}
