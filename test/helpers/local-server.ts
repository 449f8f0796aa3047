import { execFile, execFileSync } from 'node:child_process';
import { chownSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { waitFor } from './wait';

/**
 * Helpers for the extra RabbitMQ nodes and Postgres servers that fault tests start next to the
 * machine's shared ones. Those run the same binaries, so a process is only ever signalled by the pid its
 * own pid file records, and only after checking that the process was started for this test.
 */

export interface SystemUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** The system account a server runs as (rabbitmq, postgres); fails clearly when it does not exist. */
export function systemUser(name: string): SystemUser {
  let entry: string;
  try {
    entry = execFileSync('getent', ['passwd', name]).toString().trim();
  } catch {
    throw new Error(`no "${name}" user on this machine: install the server package that creates it`);
  }
  const [, , uid, gid, , home] = entry.split(':');
  return { name, uid: Number(uid), gid: Number(gid), home: home ?? '/' };
}

/** A fresh directory under the OS temp dir, owned by `user`. */
export function ownedTempDir(user: SystemUser, label: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), `taskbox-${label}-`));
  chownSync(dir, user.uid, user.gid);
  return dir;
}

/** Runs a program as `user` with exactly `env`; rejects with its output when it fails. */
export function runAs(
  user: SystemUser,
  file: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const options = { uid: user.uid, gid: user.gid, env, cwd: user.home, timeout: timeoutMs };
    execFile(file, args, options, (err, stdout, stderr) => {
      if (err) reject(new Error(`${path.basename(file)} ${args.join(' ')} failed: ${err.message}\n${stdout}${stderr}`));
      else resolve(stdout);
    });
  });
}

/** A loopback port nothing listens on, below Linux's ephemeral range and away from Erlang CLI ports. */
export async function freePort(taken: Set<number>): Promise<number> {
  for (;;) {
    // 35672-35682 is where rabbitmqctl listens while it runs; 32768+ is where outgoing connections bind.
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (taken.has(port) || port === 25672) continue;
    const free = await new Promise<boolean>((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '0.0.0.0', () => server.close(() => resolve(true)));
    });
    if (free) {
      taken.add(port);
      return port;
    }
  }
}

/** True once no process has this pid (a zombie waiting for its parent counts as gone). */
export function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** Whether the process was started for this test: its command line or environment names `mark`. */
function startedFor(pid: number, mark: string): boolean {
  try {
    return [`/proc/${pid}/cmdline`, `/proc/${pid}/environ`].some((f) => readFileSync(f, 'utf8').includes(mark));
  } catch {
    return false;
  }
}

/** The pid on the first line of a pid file, if the file exists and its process was started for `mark`. */
export function pidFromFile(pidFile: string, mark: string): number | null {
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  } catch {
    return null;
  }
  return Number.isInteger(pid) && pid > 0 && !processGone(pid) && startedFor(pid, mark) ? pid : null;
}

/** The live children of a process (a Postgres postmaster's backends and walsenders). */
export function childPids(pid: number): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .map(Number)
    .filter((child) => {
      try {
        const stat = readFileSync(`/proc/${child}/stat`, 'utf8');
        return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid;
      } catch {
        return false;
      }
    });
}

/**
 * Signals the processes and waits until they are gone; SIGKILL after `graceMs` if a gentler signal
 * was not enough.
 */
export async function signalAndWait(pids: number[], signal: NodeJS.Signals, graceMs = 30_000): Promise<void> {
  const send = (sig: NodeJS.Signals) => {
    for (const pid of pids) if (!processGone(pid)) process.kill(pid, sig);
  };
  send(signal);
  const allGone = () => pids.every(processGone);
  try {
    await waitFor(`pids ${pids.join(', ')} to exit after ${signal}`, allGone, graceMs, 50);
  } catch (err) {
    if (signal === 'SIGKILL') throw err;
    send('SIGKILL');
    await waitFor(`pids ${pids.join(', ')} to exit after SIGKILL`, allGone, 10_000, 50);
  }
}
