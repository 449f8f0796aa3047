// `node bench/ranges.mjs [N]`: the ranges (min–max) of the peers comparison over the last N runs
// (default 3) kept in bench/out/runs/, as a Markdown table for bench/README.md.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { outDir } from './lib/env.mjs';
import { n, ms, table } from './lib/format.mjs';
import { ratioPairs, ratiosTo } from './peers-report.mjs';

const count = Number(process.argv[2] ?? 3);
const dir = path.join(outDir, 'runs');
// No runs yet (a fresh clone): the same answer as runs without the comparison.
const files = (await readdir(dir).catch((e) => (e.code === 'ENOENT' ? [] : Promise.reject(e))))
  .filter((f) => f.endsWith('.json'))
  .sort();
const runs = [];
for (const file of files) {
  const report = JSON.parse(await readFile(path.join(dir, file), 'utf8'));
  if (report.peers) runs.push(report);
}
const last = runs.slice(-count);
if (last.length === 0) throw new Error(`no run with the peers comparison in ${dir}`);

/** "min–max" of `pick` over the runs, formatted by `format`; one value when they agree. */
function range(pick, format) {
  const values = last.map(pick).sort((a, b) => a - b);
  // A figure that some of the runs did not measure (older reports) has no range.
  if (values.some((v) => v === null || Number.isNaN(v))) return '–';
  const [lo, hi] = [format(values[0]), format(values.at(-1))];
  return lo === hi ? lo : `${lo}–${hi}`;
}

const { fixedRate } = last[0].peers;
const systems = Object.keys(last[0].peers.results);
const result = (name) => (r) => r.peers.results[name];
console.log(`${last.length} runs: ${last.map((r) => `${r.startedAt} (${r.versions.commit})`).join(', ')}\n`);
console.log(
  table(
    [
      'system',
      'end to end, tasks/s',
      '… after VACUUM',
      'CPU per task end to end, ms',
      'commit → start p50 / p99 at 50 %, ms',
      `… at ${fixedRate}/s`,
      `CPU per task at ${fixedRate}/s, ms`,
    ],
    systems.map((name) => {
      const r = result(name);
      const latency = (phase) =>
        `${range((x) => r(x)[phase].commitToStartMs.p50, ms)} / ${range((x) => r(x)[phase].commitToStartMs.p99, ms)}`;
      return [
        name,
        range((x) => r(x).e2e.tasksPerSecond, n),
        range((x) => r(x).vacuumed.tasksPerSecond, n),
        range((x) => r(x).e2e.cpu?.total ?? null, ms),
        latency('atHalf'),
        latency('atFixed'),
        range((x) => r(x).atFixed.cpu.total, ms),
      ];
    }),
  ).join('\n'),
);
console.log();
const ratio = ([subject, other], key) =>
  range(
    (x) => ratiosTo(x.peers.results, other, subject)[key],
    (v) => n(v, 2),
  );
console.log(
  table(
    [
      'ratio',
      'end to end',
      '… after VACUUM',
      'CPU per task end to end',
      `CPU per task at ${fixedRate}/s`,
      'p50 at 50 %',
      `p50 at ${fixedRate}/s`,
    ],
    ratioPairs(systems, last[0].peers.variants ?? {}).map((p) => [
      p.join(' / '),
      ratio(p, 'e2e'),
      ratio(p, 'e2eVacuumed'),
      ratio(p, 'cpuE2e'),
      ratio(p, 'cpuAtFixed'),
      ratio(p, 'p50AtHalf'),
      ratio(p, 'p50AtFixed'),
    ]),
  ).join('\n'),
);
