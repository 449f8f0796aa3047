// The ceiling: pgbench running the api's own insert, with nothing in between (no HTTP, no JSON, no Node).
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { outDir, runToEnd } from './lib/env.mjs';

// The api's transaction for one task (services/api/src/task-sql.ts insertTasks): task and outbox row
// in one data-modifying CTE, returning the task row for the response. Under load the api puts several
// requests in one such statement; the ceiling stays one task per transaction (bench/README.md).
const insertCte = `WITH inserted AS (
  INSERT INTO tasks (id, type, payload, max_attempts, owner, idempotency_key, request_hash, correlation_id)
  VALUES (gen_random_uuid(), 'echo', '{"phase":"pgbench"}'::jsonb, 3, 'pgbench', NULL, NULL, gen_random_uuid()::text)
  RETURNING *
), queued AS (
  INSERT INTO outbox (message_id, task_id, routing_key, payload, headers)
  SELECT gen_random_uuid(), id, type, jsonb_build_object('taskId', id, 'type', type, 'attempt', 1), '{}'::jsonb
  FROM inserted
)`;

// pgbench reads one statement per line, so the statement is folded onto one line.
const scripts = {
  // The insert without any NOTIFY: a stricter bound than the api's own statement.
  insert: `${insertCte} SELECT * FROM inserted;`,
  // The api's own statement, NOTIFY inside, one request per transaction (the api shares it among the
  // requests that arrive together).
  insertWithNotify: `${insertCte} SELECT i.*, pg_notify('taskbox_outbox', '') FROM inserted i;`,
};

async function pgbench(databaseUrl, name, clients, seconds) {
  const file = path.join(outDir, `pgbench-${name}.sql`);
  await writeFile(file, scripts[name].replace(/\s*\n\s*/g, ' ') + '\n');
  const out = await runToEnd(process.env.PGBENCH ?? 'pgbench', [
    '-n',
    '-M',
    'extended',
    '-f',
    file,
    '-c',
    String(clients),
    '-j',
    '2',
    '-T',
    String(seconds),
    databaseUrl,
  ]);
  const tps = /tps = ([\d.]+) \(without initial connection time\)/.exec(out);
  const latency = /latency average = ([\d.]+) ms/.exec(out);
  if (!tps) throw new Error(`pgbench printed no tps:\n${out}`);
  return { clients, seconds, perSecond: Number(tps[1]), latencyAvgMs: latency ? Number(latency[1]) : null };
}

/** Both variants at the api's concurrency, then empties the tables for the next phase. */
export async function measureCeiling({ databaseUrl, pool, clients, seconds }) {
  const insert = await pgbench(databaseUrl, 'insert', clients, seconds);
  const insertWithNotify = await pgbench(databaseUrl, 'insertWithNotify', clients, seconds);
  await pool.query('TRUNCATE tasks, task_attempts, outbox');
  return { insert, insertWithNotify };
}
