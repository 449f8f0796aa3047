// One system at a fixed rate, looked at from inside Postgres: `node bench/probe.mjs [system] [rate] [seconds]`
// (defaults: taskbox, 200, 15; systems as in BENCH_SYSTEMS). Prints the commit → start p50, the CPU per
// task of the system's processes and of Postgres's processes grouped by their last statement (a pooled
// backend runs several kinds; its last one names it), and per task the WAL written and flushed and each
// table's writes. Fresh database, removed at the end. Linux only (CPU from /proc). Postgres's backends
// report WAL and table counts about once a second, so those are right to a percent or so.
import { processCpuMs } from './lib/cpu.mjs';
import { echo, phaseStats, systemsOf } from './peers.mjs';
import { cleanupAll, createBenchDatabase, sleep } from './lib/env.mjs';
import { pacedLoad } from './lib/load.mjs';

const [name = 'taskbox', rate = '200', seconds = '15'] = process.argv.slice(2);

async function snapshot(db, system) {
  const q = (text) => db.pool.query(text).then((r) => r.rows);
  const backends = await q(`
    SELECT pid, backend_type, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) AS query
    FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL`);
  return {
    backends: backends.map((b) => ({ ...b, cpu: processCpuMs(b.pid) })),
    processes: Object.fromEntries(Object.entries(system.processes).map(([k, child]) => [k, processCpuMs(child.pid)])),
    wal: (await q('SELECT wal_records, wal_bytes, wal_sync FROM pg_stat_wal'))[0],
    tables: await q('SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables'),
  };
}

const db = await createBenchDatabase();
let system;
try {
  system = await systemsOf({})[name].start(db, { api: {}, relay: {}, worker: {} });
  await pacedLoad({ url: system.url, body: echo('warmup'), rate: Number(rate), seconds: 3 });
  await sleep(2000);
  const before = await snapshot(db, system);
  const load = await pacedLoad({ url: system.url, body: echo('probe'), rate: Number(rate), seconds: Number(seconds) });
  const { commitToStartMs } = await phaseStats(db, system, 'probe', load.ok);
  const after = await snapshot(db, system);
  const perTask = (x) => (x / load.ok).toFixed(3);
  console.log(`${name}, ${load.ok} tasks at ${rate}/s: commit → start p50 ${commitToStartMs.p50.toFixed(2)} ms`);
  console.log('CPU per task, ms:');
  for (const [k, ms] of Object.entries(after.processes)) console.log(`  ${perTask(ms - before.processes[k])}  ${k}`);
  const groups = new Map();
  for (const b of after.backends) {
    const was = before.backends.find((x) => x.pid === b.pid)?.cpu ?? 0;
    const key = `postgres ${b.backend_type}${b.backend_type === 'client backend' ? `: ${b.query}` : ''}`;
    groups.set(key, (groups.get(key) ?? 0) + (b.cpu ?? was) - was);
  }
  for (const [k, ms] of [...groups].sort((a, b) => b[1] - a[1])) if (ms > 0) console.log(`  ${perTask(ms)}  ${k}`);
  const wal = (k) => perTask(Number(after.wal[k]) - Number(before.wal[k]));
  console.log(`WAL per task: ${wal('wal_records')} records, ${wal('wal_bytes')} bytes, ${wal('wal_sync')} flushes`);
  console.log('rows per task: inserted, updated (of them HOT), deleted');
  for (const t of after.tables) {
    const was = before.tables.find((x) => x.relname === t.relname);
    const d = (k) => perTask(Number(t[k]) - Number(was?.[k] ?? 0));
    if (d('n_tup_ins') > 0 || d('n_tup_upd') > 0 || d('n_tup_del') > 0)
      console.log(`  ${t.relname}: ${d('n_tup_ins')}, ${d('n_tup_upd')} (${d('n_tup_hot_upd')}), ${d('n_tup_del')}`);
  }
} finally {
  await system?.stop();
  await cleanupAll();
}
