// CPU time by process over a phase, from /proc (Linux): how a task's cost splits between the
// services, Postgres, RabbitMQ and the load generator (this process), and what the whole machine
// spent. Postgres and RabbitMQ count only when they run on this machine; elsewhere (or off Linux)
// their figures are null.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';

const clockTicksPerSecond = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' })) || 100;
  } catch {
    return 100;
  }
})();

/** User + system CPU of a process in ms, or null when it is gone (or there is no /proc). */
export function processCpuMs(pid) {
  try {
    // The command name (field 2) may hold spaces; the fields after it start at utime (14th).
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicksPerSecond;
  } catch {
    return null;
  }
}

/** Processes whose command name matches: the Postgres server and its backends, the Erlang VM. */
function pidsNamed(pattern) {
  let entries;
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  return entries.filter((pid) => {
    if (!/^\d+$/.test(pid)) return false;
    try {
      return pattern.test(readFileSync(`/proc/${pid}/comm`, 'utf8'));
    } catch {
      return false;
    }
  });
}

/** Busy CPU of the whole machine in ms: every core's time not idle (steal is another guest's). */
function machineBusyMs() {
  return os.cpus().reduce((sum, { times }) => sum + times.user + times.nice + times.sys + times.irq, 0);
}

const groups = {
  postgres: () => pidsNamed(/^postgres/),
  rabbitmq: () => pidsNamed(/^beam/),
  load: () => [String(process.pid)],
};

function sample(services, found) {
  const perGroup = {};
  for (const [name, child] of Object.entries(services)) perGroup[name] = { [child.pid]: processCpuMs(child.pid) };
  for (const [name, find] of Object.entries(found)) {
    perGroup[name] = Object.fromEntries(find().map((pid) => [pid, processCpuMs(pid)]));
  }
  return { at: performance.now(), machine: machineBusyMs(), perGroup };
}

/**
 * Starts measuring; `stop(tasks)` answers CPU ms per task for each service (`services`: name → child
 * process), postgres, rabbitmq, load and machine, plus the machine's busy cores. A process that
 * started during the phase counts whole; one that ended during it is left out. `only` replaces how a
 * group's processes are found (name → () → pids), e.g. Postgres's backends of one database.
 */
export function cpuMeter(services, only = {}) {
  const found = { ...groups, ...only };
  const before = sample(services, found);
  return {
    stop(tasks) {
      const after = sample(services, found);
      const perTask = {};
      for (const [name, pids] of Object.entries(after.perGroup)) {
        const spent = Object.entries(pids)
          .filter(([, ms]) => ms !== null)
          .map(([pid, ms]) => ms - (before.perGroup[name][pid] ?? 0));
        perTask[name] = spent.length === 0 ? null : spent.reduce((a, b) => a + b, 0) / tasks;
      }
      perTask.machine = (after.machine - before.machine) / tasks;
      return { msPerTask: perTask, busyCores: (after.machine - before.machine) / (after.at - before.at) };
    },
  };
}
