// The ceiling: pgbench running the api's own insert, with nothing in between (no HTTP, no JSON, no Node).
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import shared from '../packages/shared/dist/index.js';
import { outDir, runToEnd } from './lib/env.mjs';

// The api's own statement (packages/shared/src/task-insert.ts insertTasksStatement), compiled by Kysely as
// the api sends it. Its one parameter, the JSON of the rows to insert, becomes an expression that makes
// one fresh task per transaction: under load the api puts several requests in one statement, but the
// ceiling stays one task per transaction (bench/README.md).
const oneTask = `jsonb_build_array(jsonb_build_object(
  'id', gen_random_uuid(), 'type', 'echo', 'payload', '{"phase":"pgbench"}', 'max_attempts', 3,
  'timeout_ms', 60000, 'owner', 'pgbench', 'idempotency_key', NULL, 'request_hash', NULL, 'correlation_id', gen_random_uuid(),
  'message_id', gen_random_uuid(), 'message_payload', '{"type":"echo","attempt":1}', 'message_headers', '{}'))::text`;

function apiStatement() {
  const db = shared.createDb(new pg.Pool({ max: 1 }));
  const { sql, parameters } = shared.insertTasksStatement('[]').compile(db);
  const [, channel] = parameters;
  const withNotify = sql
    .replace('$1', `(${oneTask})`)
    .replace('$2', `'${channel}'`)
    // Folded onto one line (below), a -- comment would swallow the rest of the statement.
    .replace(/--[^\n]*/g, '')
    .replace(/\s*\n\s*/g, ' ');
  const wake = /, \(SELECT pg_notify\([^)]*\)\) AS wake/;
  if (parameters.length !== 2 || !wake.test(withNotify)) {
    throw new Error(`the api's insert statement changed shape; update bench/ceiling.mjs:\n${sql}`);
  }
  return { withNotify, withoutNotify: withNotify.replace(wake, '') };
}

const statement = apiStatement();
// pgbench reads one statement per line, so the statement is folded onto one line.
const scripts = {
  // The insert without any NOTIFY: a stricter bound than the api's own statement.
  insert: `${statement.withoutNotify};`,
  // The api's own statement, NOTIFY inside, one request per transaction (the api shares it among the
  // requests that arrive together).
  insertWithNotify: `${statement.withNotify};`,
};

async function pgbench(databaseUrl, name, clients, seconds) {
  const file = path.join(outDir, `pgbench-${name}.sql`);
  await writeFile(file, scripts[name] + '\n');
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
  await pool.query('TRUNCATE tasks CASCADE');
  return { insert, insertWithNotify };
}
