// report.md and latency.svg from the report object that run.mjs also writes as report.json.
import { ms, n, table } from './lib/format.mjs';
import { abSection, peersSection } from './peers-report.mjs';

function apiSection(r) {
  const { ceiling, api, ratios } = r;
  return [
    `## 1–2. api vs the ceiling (${api.connections} connections, ${api.seconds} s each)`,
    '',
    ...table(
      ['what', 'per second', 'latency'],
      [
        ['pgbench: the api insert alone', n(ceiling.insert.perSecond), `avg ${ms(ceiling.insert.latencyAvgMs)} ms`],
        [
          'pgbench: insert with pg_notify inside',
          n(ceiling.insertWithNotify.perSecond),
          `avg ${ms(ceiling.insertWithNotify.latencyAvgMs)} ms`,
        ],
        ['api POST /tasks (202s)', n(api.perSecond), `p50 ${ms(api.latencyMs.p50)} / p99 ${ms(api.latencyMs.p99)} ms`],
      ],
    ),
    '',
    `api / insert with pg_notify inside (the api's own statement, one request per transaction): **${n(ratios.apiVsInsertWithNotify, 2)}** (target ≥ 0.8${ratios.apiVsInsertWithNotify > 1 ? '; above 1 because concurrent requests share one statement and its NOTIFY' : ''})`,
    `api / insert alone (no NOTIFY at all, a stricter bound): **${n(ratios.apiVsInsert, 2)}**`,
    '',
  ];
}

function e2eSection({ e2e }) {
  const phases = [
    ['firehose (closed-loop)', e2e.firehose],
    ...e2e.search.map((t) => [`paced ${n(t.rate)}/s: ${t.sustained ? 'sustained' : 'fell behind'}`, t]),
    ...e2e.levels.map((l) => [`${l.fraction * 100} % of max (${n(l.targetRate)}/s)`, l]),
    [`trickle (${n(e2e.trickle.load.targetRate)}/s)`, e2e.trickle],
  ];
  const rows = phases.map(([label, l]) => [
    label,
    n(l.tasksPerSecond),
    `${l.succeeded}/${l.tasks}`,
    `${ms(l.commitToStartMs.p50)} / ${ms(l.commitToStartMs.p95)} / ${ms(l.commitToStartMs.p99)}`,
    `${ms(l.commitToSucceededMs.p50)} / ${ms(l.commitToSucceededMs.p95)} / ${ms(l.commitToSucceededMs.p99)}`,
    `${ms(l.commitToMarkedPublishedMs.p50)} / ${ms(l.commitToMarkedPublishedMs.p99)}`,
    `${ms(l.load.latencyMs.p50)} / ${ms(l.load.latencyMs.p99)}`,
  ]);
  return [
    '## 3. End to end: api → relay → worker → succeeded (echo)',
    '',
    `Maximum sustained: **${n(e2e.max.tasksPerSecond)} tasks/s** (the highest paced load the chain kept up with: ≥ 95 % of it done, commit → start p99 ≤ 500 ms; target ≥ 1 000).`,
    '',
    ...table(
      [
        'load',
        'tasks/s',
        'succeeded',
        'commit → start p50/p95/p99 ms',
        'commit → succeeded p50/p95/p99 ms',
        'commit → marked published p50/p99 ms',
        'api p50/p99 ms',
      ],
      rows,
    ),
    '',
    'Target at 50 %: commit → start p50 ≤ 5 ms, p99 ≤ 25 ms. The trickle sends each task alone to an idle chain: its latency is what the chain takes with no load at all. "Marked published" is after the broker\'s confirm, so the worker often starts first.',
    '',
    `Worker deliveries that found no task: ${e2e.notFound.unknownTaskLogged} logged, ${e2e.notFound.deadLettered} dead-lettered (must be 0).`,
    '',
    '![latency over load](latency.svg)',
    '',
  ];
}

function cpuSection({ e2e, brokerFloor, machine }) {
  const levels = [
    [`max sustained (${n(e2e.max.rate)}/s)`, e2e.max],
    ...e2e.levels.map((l) => [`${l.fraction * 100} % (${n(l.targetRate)}/s)`, l]),
    [`trickle (${n(e2e.trickle.load.targetRate)}/s)`, e2e.trickle],
  ];
  const parts = ['api', 'relay', 'worker', 'postgres', 'rabbitmq', 'load', 'machine'];
  const rows = levels.map(([label, l]) => [
    label,
    n(l.tasksPerSecond),
    ...parts.map((p) => ms(l.cpu.msPerTask[p])),
    n(l.cpu.busyCores, 2),
  ]);
  const { cpu } = brokerFloor;
  const budget = (machine.cpus * 1000) / cpu.rate;
  return [
    '## Where the CPU goes: ms of CPU per task, by process',
    '',
    ...table(
      ['load', 'tasks/s', 'api', 'relay', 'worker', 'postgres', 'rabbitmq', 'load generator', 'machine', 'busy cores'],
      rows,
    ),
    '',
    `At ${n(cpu.rate)} tasks/s, ${machine.cpus} cores leave **${ms(budget)} ms** of CPU per task for everything on the machine. ` +
      `RabbitMQ alone, passing ${n(cpu.rate)} persistent messages/s through a quorum queue with confirms and acks and nothing else, ` +
      `used **${n(cpu.msPerMessage.rabbitmq, 2)} ms** per message, and its bare amqplib client ${n(cpu.msPerMessage.client, 2)} ms. ` +
      '"machine" is every core\'s busy time, whatever ran it; the load generator is this benchmark process.',
    '',
  ];
}

function floorSection({ brokerFloor }) {
  const row = (name, f) => [
    name,
    `${ms(f.confirmMs.p50)} / ${ms(f.confirmMs.p99)}`,
    `${ms(f.deliverMs.p50)} / ${ms(f.deliverMs.p99)}`,
  ];
  return [
    '## The broker floor: one persistent message at a time',
    '',
    ...table(
      ['queue', 'publish → confirm p50/p99 ms', 'publish → delivery p50/p99 ms'],
      [
        row('quorum (as taskbox declares it)', brokerFloor.quorum),
        row('classic, for contrast', brokerFloor.classic),
        row('quorum, TCP_NODELAY off (amqplib default)', brokerFloor.quorumWithoutNoDelay),
      ],
    ),
    '',
    'A quorum queue confirms and delivers only after its log is fsynced: commit → worker start cannot be lower.',
    "The services connect with TCP_NODELAY; the last row shows what Nagle's algorithm would add.",
    '',
  ];
}

function relaySection({ relay }) {
  return [
    `## 4. Relay alone: ${relay.relay.rows} pre-inserted outbox rows`,
    '',
    ...table(
      ['publisher', 'messages/s', 'seconds'],
      [
        [
          `relay (claim, publish, confirm, mark; ${n(relay.relay.waitingForConfirmsSeconds, 1)} s waiting for confirms over ${relay.relay.batches} batches, lanes overlap)`,
          n(relay.relay.perSecond),
          n(relay.relay.seconds, 1),
        ],
        [`bare amqplib confirm loop, batches of ${relay.batchSize}`, n(relay.bare.perSecond), n(relay.bare.seconds, 1)],
      ],
    ),
    '',
    `relay / bare: **${n(relay.ratio, 2)}** (target ≥ 0.5)`,
    '',
  ];
}

function naiveSection({ api, naive }) {
  const row = (name, load, consumer) => [
    name,
    n(load.perSecond),
    `${ms(load.latencyMs.p50)} / ${ms(load.latencyMs.p99)}`,
    consumer,
  ];
  const a = naive['commit-then-publish'];
  const b = naive['publish-before-commit'];
  return [
    '## 5. The naive designs under the same load',
    '',
    ...table(
      ['design', 'per second', 'api p50/p99 ms', 'consumer found no task'],
      [
        row('taskbox: task + outbox in one statement', api, 'see section 3'),
        row(
          'commit, then publish + confirm in the request',
          a.load,
          `${a.consumer.notFound} of ${a.consumer.found + a.consumer.notFound}`,
        ),
        row(
          'publish + confirm, then commit',
          b.load,
          `${b.consumer.notFound} of ${b.consumer.found + b.consumer.notFound}`,
        ),
      ],
    ),
    '',
  ];
}

function scaleSection({ scale }) {
  const row = (s) => [`${s.replicas} + ${s.replicas}`, n(s.perSecond), s.seconds.toFixed(1), s.rerun, s.republished];
  return [
    `## 6. Scaling out: ${scale.one.tasks} queued sleep tasks (${scale.one.sleepMs} ms each, prefetch ${scale.one.prefetch} per worker)`,
    '',
    ...table(
      ['relays + workers', 'tasks/s', 'seconds', 'tasks run twice', 'rows published twice'],
      [row(scale.one), row(scale.three)],
    ),
    '',
    `3 + 3 / 1 + 1: **${scale.ratio.toFixed(2)}**`,
    '',
  ];
}

const coreSections = (r) => [
  ...apiSection(r),
  ...floorSection(r),
  ...e2eSection(r),
  ...cpuSection(r),
  ...relaySection(r),
  ...naiveSection(r),
  ...scaleSection(r),
];

export function renderMarkdown(r) {
  return [
    '# taskbox benchmark',
    '',
    `${r.startedAt}, ${r.machine.cpus} CPUs (${r.machine.model}), load average at start ${r.machine.loadAverage}. ` +
      `Command: \`${r.command}\`. Settings: ${JSON.stringify(r.settings)}.`,
    '',
    `Commit ${r.versions.commit}, Postgres ${r.versions.postgres}, RabbitMQ ${r.versions.rabbitmq}, Node ${r.versions.node}.`,
    '',
    ...(r.e2e ? coreSections(r) : []),
    ...(r.peers ? peersSection(r) : []),
    ...(r.ab ? abSection(r) : []),
  ].join('\n');
}

const W = 640;
const H = 360;
const PAD = { left: 60, right: 150, top: 30, bottom: 50 };

/** Latency percentiles (commit → worker start, commit → succeeded) over the paced load levels. */
export function renderSvg({ e2e, brokerFloor }) {
  const levels = e2e.levels;
  const series = [
    ['start p50', 'commitToStartMs', 'p50', '#1f77b4', ''],
    ['start p99', 'commitToStartMs', 'p99', '#1f77b4', '6 4'],
    ['succeeded p50', 'commitToSucceededMs', 'p50', '#d62728', ''],
    ['succeeded p99', 'commitToSucceededMs', 'p99', '#d62728', '6 4'],
  ];
  const maxX = Math.max(...levels.map((l) => l.tasksPerSecond), 1);
  // The quorum queue's own publish → delivery p50: the line no commit → start latency can go under.
  const floor = brokerFloor.quorum.deliverMs.p50;
  const maxY = Math.max(floor, ...levels.flatMap((l) => series.map(([, k, p]) => l[k][p] ?? 0))) * 1.1;
  const x = (v) => PAD.left + (v / maxX) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / maxY) * (H - PAD.top - PAD.bottom);
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${PAD.left}" y="18" font-size="14">End-to-end latency over load (echo tasks)</text>`,
    `<line x1="${PAD.left}" y1="${y(0)}" x2="${x(maxX)}" y2="${y(0)}" stroke="black"/>`,
    `<line x1="${PAD.left}" y1="${y(0)}" x2="${PAD.left}" y2="${PAD.top}" stroke="black"/>`,
    `<text x="${(PAD.left + x(maxX)) / 2}" y="${H - 12}" text-anchor="middle">tasks/s sustained</text>`,
    `<text x="14" y="${(H - PAD.bottom + PAD.top) / 2}" transform="rotate(-90 14 ${(H - PAD.bottom + PAD.top) / 2})" text-anchor="middle">ms after commit</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const v = (maxY / 4) * i;
    out.push(`<text x="${PAD.left - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(v < 10 ? 1 : 0)}</text>`);
    out.push(`<line x1="${PAD.left}" y1="${y(v)}" x2="${x(maxX)}" y2="${y(v)}" stroke="#ddd"/>`);
  }
  for (const l of levels) {
    out.push(
      `<text x="${x(l.tasksPerSecond).toFixed(1)}" y="${y(0) + 16}" text-anchor="middle">${l.tasksPerSecond.toFixed(0)} (${l.fraction * 100} %)</text>`,
    );
  }
  out.push(
    `<line x1="${PAD.left}" y1="${y(floor)}" x2="${x(maxX)}" y2="${y(floor)}" stroke="#888" stroke-dasharray="2 3"/>`,
  );
  out.push(`<text x="${x(maxX) + 4}" y="${y(floor) + 4}" fill="#888">broker floor</text>`);
  series.forEach(([label, key, p, color, dash], i) => {
    const points = levels.map((l) => `${x(l.tasksPerSecond).toFixed(1)},${y(l[key][p] ?? 0).toFixed(1)}`).join(' ');
    out.push(
      `<polyline points="${points}" fill="none" stroke="${color}" stroke-width="2" stroke-dasharray="${dash}"/>`,
    );
    const ly = PAD.top + 10 + i * 18;
    out.push(
      `<line x1="${W - PAD.right + 10}" y1="${ly}" x2="${W - PAD.right + 40}" y2="${ly}" stroke="${color}" stroke-width="2" stroke-dasharray="${dash}"/>`,
    );
    out.push(`<text x="${W - PAD.right + 46}" y="${ly + 4}">${label}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}
