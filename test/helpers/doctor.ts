import { execFile } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { checkNames, type CheckStatus } from '@taskbox/shared';

export interface DoctorRun {
  code: number;
  stdout: string;
  /** The status printed for a check, by its name. */
  status(name: string): CheckStatus | undefined;
  /** The whole printed line of a check. */
  line(name: string): string;
}

const main = path.resolve(__dirname, '../../tools/dist/doctor-main.js');
const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Runs the built doctor (`npm test` builds first) as a child process, as `npm run doctor` does. */
export function runDoctor(env: Record<string, string>): Promise<DoctorRun> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [main], { env: { PATH: process.env.PATH ?? '', ...env } }, (err, stdout) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      if (code === -1) return reject(err ?? new Error('doctor did not run'));
      const lines = stdout.split('\n');
      const line = (name: string): string =>
        lines.find((l) => new RegExp(`^(ok|warn|fail)\\s+${escape(name)}\\s`).test(l)) ?? '';
      resolve({
        code,
        stdout,
        line,
        status: (name) => (line(name).split(/\s/)[0] || undefined) as CheckStatus | undefined,
      });
    });
  });
}

/** Every check's status, for a readable failure message. */
export function statuses(run: DoctorRun): Record<string, string | undefined> {
  return Object.fromEntries(Object.values(checkNames).map((n) => [n, run.status(n)]));
}

/** A loopback port with nothing listening on it. */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}
