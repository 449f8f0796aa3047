// The peers section of report.md, and taskbox's ratios to each peer (also printed by ranges.mjs).
import { n, ms, table } from './lib/format.mjs';

/** taskbox's ratios to `peer`: above 1 is better for taskbox in e2e, below 1 in CPU and latency. */
export function ratiosTo(results, peer) {
  const t = results.taskbox;
  const p = results[peer];
  return {
    e2e: t.e2e.tasksPerSecond / p.e2e.tasksPerSecond,
    e2eVacuumed: t.vacuumed.tasksPerSecond / p.vacuumed.tasksPerSecond,
    cpuAtFixed: t.atFixed.cpu.total / p.atFixed.cpu.total,
    p50AtHalf: t.atHalf.commitToStartMs.p50 / p.atHalf.commitToStartMs.p50,
    p50AtFixed: t.atFixed.commitToStartMs.p50 / p.atFixed.commitToStartMs.p50,
  };
}

// A paced phase the system did not keep up with (its backlog grew) is marked: its latency is the backlog's.
const latency = (l, rate) =>
  `${ms(l.commitToStartMs.p50)} / ${ms(l.commitToStartMs.p99)}${l.tasksPerSecond < 0.95 * rate ? ', fell behind' : ''}`;

function systemRow(name, r, { fixedRate, cpus }) {
  const c = r.atFixed.cpu;
  const parts = Object.entries(c.msPerTask)
    .filter(([k]) => !['postgres', 'rabbitmq', 'load', 'machine'].includes(k))
    .map(([k, v]) => `${k} ${ms(v)}`);
  const split = [...parts, `Postgres ${ms(c.msPerTask.postgres)}`];
  if (c.total !== c.own + c.msPerTask.postgres) split.push(`RabbitMQ ${ms(c.msPerTask.rabbitmq)}`);
  return [
    name,
    n(r.e2e.tasksPerSecond),
    n(r.vacuumed.tasksPerSecond),
    `${latency(r.atHalf, r.atHalf.rate)} (${n(r.atHalf.rate)}/s)`,
    latency(r.atFixed, fixedRate),
    `${ms(c.total)} (${split.join(', ')})`,
    `${n((c.busyCores / cpus) * 100)} %`,
  ];
}

export function peersSection({ peers, machine }) {
  const { results, tasks, producers, fixedRate, seconds, variants = {} } = peers;
  const names = Object.keys(results);
  const others = results.taskbox ? names.filter((name) => name !== 'taskbox') : [];
  const ratios = others.map((p) => [p, ratiosTo(results, p)]);
  const variantNotes = Object.entries(variants).map(
    ([label, v]) => ` \`${label}\` is taskbox at ${v.commit} (${v.dir}).`,
  );
  return [
    `## taskbox and its peers: ${tasks} no-op tasks from ${producers} producers, then ${seconds} s paced loads`,
    '',
    'Every system behind the same HTTP load generator, on its own fresh database. Latency runs from the task ' +
      "row's commit to the worker's start, both read from the database. End to end runs from the first " +
      "task's commit to the last task's start. The first end-to-end phase runs with autovacuum as deployed " +
      '(no VACUUM before it); the second after a VACUUM of the whole database.' +
      variantNotes.join(''),
    '',
    ...table(
      [
        'system',
        'end to end, tasks/s (autovacuum)',
        '… after VACUUM',
        'commit → start at 50 %, p50 / p99 ms',
        `… at ${fixedRate}/s`,
        `CPU per task at ${fixedRate}/s, ms`,
        `machine busy at ${fixedRate}/s`,
      ],
      names.map((name) => systemRow(name, results[name], { fixedRate, cpus: machine.cpus })),
    ),
    '',
    `CPU per task: the system's own processes, the Postgres backends of its database and the shared background ones, ` +
      `and RabbitMQ for the systems that use it; not the load generator. The machine has ${machine.cpus} cores.`,
    '',
    ...table(
      [
        'taskbox / …',
        'end to end (autovacuum)',
        'end to end (after VACUUM)',
        `CPU per task at ${fixedRate}/s`,
        'p50 at 50 %',
        `p50 at ${fixedRate}/s`,
      ],
      ratios.map(([p, r]) => [
        p,
        n(r.e2e, 2),
        n(r.e2eVacuumed, 2),
        n(r.cpuAtFixed, 2),
        n(r.p50AtHalf, 2),
        n(r.p50AtFixed, 2),
      ]),
    ),
    '',
    "Targets (issue 18): end to end ≥ 1.0× graphile-worker and ≥ 0.8× naive; CPU per task ≤ 1.2× naive's; p50 ≤ 2× naive's.",
    '',
  ];
}
