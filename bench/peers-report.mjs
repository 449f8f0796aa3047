// The peers section of report.md, and the ratios of taskbox (as three services, and in one process)
// to each peer (also printed by ranges.mjs).
import { n, ms, table } from './lib/format.mjs';

/**
 * The ratios a report shows, as [subject, other]: taskbox to every other system (its variants, itself
 * in one process, the peers), then taskbox in one process to each peer.
 */
export function ratioPairs(names, variants) {
  const pairs = [];
  if (names.includes('taskbox')) pairs.push(...names.filter((x) => x !== 'taskbox').map((x) => ['taskbox', x]));
  const peers = names.filter((x) => !x.startsWith('taskbox') && !(x in variants));
  if (names.includes('taskbox-all-in-one')) pairs.push(...peers.map((x) => ['taskbox-all-in-one', x]));
  return pairs;
}

/** `subject`'s ratios to `peer`: above 1 is better for the subject in e2e, below 1 in CPU and latency. */
export function ratiosTo(results, peer, subject = 'taskbox') {
  const t = results[subject];
  const p = results[peer];
  return {
    e2e: t.e2e.tasksPerSecond / p.e2e.tasksPerSecond,
    e2eVacuumed: t.vacuumed.tasksPerSecond / p.vacuumed.tasksPerSecond,
    // Runs from before the end-to-end phase was metered have no figure.
    cpuE2e: t.e2e.cpu && p.e2e.cpu ? t.e2e.cpu.total / p.e2e.cpu.total : null,
    cpuAtFixed: t.atFixed.cpu.total / p.atFixed.cpu.total,
    p50AtHalf: t.atHalf.commitToStartMs.p50 / p.atHalf.commitToStartMs.p50,
    p50AtFixed: t.atFixed.commitToStartMs.p50 / p.atFixed.commitToStartMs.p50,
  };
}

// A paced phase the system did not keep up with (its backlog grew) is marked: its latency is the backlog's.
const latency = (l, rate) =>
  `${ms(l.commitToStartMs.p50)} / ${ms(l.commitToStartMs.p99)}${l.tasksPerSecond < 0.95 * rate ? ', fell behind' : ''}`;

/** CPU ms per task in all, then by process. */
function cpuSplit(c) {
  const parts = Object.entries(c.msPerTask)
    .filter(([k]) => !['postgres', 'rabbitmq', 'load', 'machine'].includes(k))
    .map(([k, v]) => `${k} ${ms(v)}`);
  const split = [...parts, `Postgres ${ms(c.msPerTask.postgres)}`];
  if (c.total !== c.own + c.msPerTask.postgres) split.push(`RabbitMQ ${ms(c.msPerTask.rabbitmq)}`);
  return `${ms(c.total)} (${split.join(', ')})`;
}

function systemRow(name, r, { fixedRate, cpus }) {
  return [
    name,
    n(r.e2e.tasksPerSecond),
    n(r.vacuumed.tasksPerSecond),
    r.e2e.cpu ? cpuSplit(r.e2e.cpu) : '–',
    `${latency(r.atHalf, r.atHalf.rate)} (${n(r.atHalf.rate)}/s)`,
    latency(r.atFixed, fixedRate),
    cpuSplit(r.atFixed.cpu),
    `${n((r.atFixed.cpu.busyCores / cpus) * 100)} %`,
  ];
}

export function peersSection({ peers, machine }) {
  const { results, tasks, producers, fixedRate, seconds, variants = {} } = peers;
  const names = Object.keys(results);
  const ratios = ratioPairs(names, variants).map(([subject, other]) => [
    `${subject} / ${other}`,
    ratiosTo(results, other, subject),
  ]);
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
        'CPU per task end to end (autovacuum), ms',
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
        'ratio',
        'end to end (autovacuum)',
        'end to end (after VACUUM)',
        'CPU per task end to end',
        `CPU per task at ${fixedRate}/s`,
        'p50 at 50 %',
        `p50 at ${fixedRate}/s`,
      ],
      ratios.map(([p, r]) => [
        p,
        n(r.e2e, 2),
        n(r.e2eVacuumed, 2),
        n(r.cpuE2e, 2),
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

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** What the A/B section shows of each round: its label, how it is read from a round, how it is printed. */
const abFigures = (fixedRate) => [
  ['end to end, tasks/s', (r) => r.e2e.tasksPerSecond, n],
  ['CPU per task end to end, ms', (r) => r.e2e.cpu.total, ms],
  [`CPU per task at ${fixedRate}/s, ms`, (r) => r.atFixed.cpu.total, ms],
  [`commit → start p50 at ${fixedRate}/s, ms`, (r) => r.atFixed.commitToStartMs.p50, ms],
];

/** The A/B section (BENCH_PHASES=ab): each system's medians over the rounds, and the ratios (ratioPairs) round by round. */
export function abSection({ ab }) {
  const { results, rounds, tasks, producers, fixedRate, seconds, variants = {} } = ab;
  const names = Object.keys(results);
  const figures = abFigures(fixedRate);
  const variantNotes = Object.entries(variants).map(
    ([label, v]) => ` \`${label}\` is taskbox at ${v.commit} (${v.dir}).`,
  );
  const ratioRows = ratioPairs(names, variants).map(([subject, other]) => [
    `${subject} / ${other}`,
    ...figures.map(([, get]) => {
      const ratios = results[subject].map((round, i) => get(round) / get(results[other][i]));
      return `${n(median(ratios), 2)} (${ratios.map((r) => n(r, 2)).join(', ')})`;
    }),
  ]);
  return [
    `## A/B in alternation: ${rounds} rounds of ${tasks} tasks from ${producers} producers, then ${seconds} s at ${fixedRate}/s`,
    '',
    'All systems run at once, each on its own database; each round loads them one after another, the order ' +
      'reversed every other round. Medians over the rounds.' +
      variantNotes.join(''),
    '',
    ...table(
      ['system', ...figures.map(([label]) => label)],
      names.map((name) => [name, ...figures.map(([, get, format]) => format(median(results[name].map(get))))]),
    ),
    '',
    ...(ratioRows.length > 0
      ? [
          ...table(['ratio', ...figures.map(([label]) => label.replace(/, (tasks\/s|ms)$/, ''))], ratioRows),
          '',
          'Ratios: the median over the rounds, then each round in order.',
          '',
        ]
      : []),
    ...busyRounds(results, fixedRate),
  ];
}

/**
 * Each round at the fixed rate, busiest machine first: how busy the whole machine was (every process
 * on it, the idle systems and other tenants too) beside each system's p50. On a 2-core machine the
 * p50 follows the busy cores more than the build (bench/README.md).
 */
function busyRounds(results, fixedRate) {
  const rows = Object.entries(results).flatMap(([name, rounds]) =>
    rounds.map((r, i) => ({ name, round: i + 1, busy: r.atFixed.cpu.busyCores, p50: r.atFixed.commitToStartMs.p50 })),
  );
  rows.sort((a, b) => b.busy - a.busy);
  return [
    ...table(
      ['round', 'system', `machine busy at ${fixedRate}/s, cores`, `commit → start p50 at ${fixedRate}/s, ms`],
      rows.map((r) => [String(r.round), r.name, n(r.busy, 2), ms(r.p50)]),
    ),
    '',
  ];
}
