import { appendFileSync, existsSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import {
  childPids,
  freePort,
  ownedTempDir,
  pidFromFile,
  runAs,
  signalAndWait,
  systemUser,
  type SystemUser,
} from './local-server';
import { waitFor } from './wait';

export interface PgServer {
  port: number;
  dataDir: string;
  /** Its server log; the standby's also lists every statement, so a test can see what reached it. */
  logFile: string;
}

export interface PgPair {
  primary: PgServer;
  standby: PgServer;
  url(server: PgServer, database?: string): string;
  /** kill -9 of the primary's postmaster and every process it started, by the pid in postmaster.pid. */
  killPrimary(): Promise<void>;
  /** `pg_ctl promote`: the standby becomes a primary that accepts writes. */
  promoteStandby(): Promise<void>;
  /** Stops both (immediate shutdown by the pid in postmaster.pid) and deletes their directories. */
  stop(): Promise<void>;
}

interface Pair {
  user: SystemUser;
  bin: string;
  base: string;
  primary: PgServer;
  standby: PgServer;
}

/** The newest installed Postgres's bin directory (Debian: /usr/lib/postgresql/<major>/bin). */
function postgresBin(): string {
  const root = '/usr/lib/postgresql';
  const majors = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)) : [];
  const bin = majors.sort((a, b) => Number(b) - Number(a)).map((v) => path.join(root, v, 'bin'))[0];
  if (!bin || !existsSync(path.join(bin, 'initdb'))) throw new Error(`no Postgres server binaries under ${root}`);
  return bin;
}

/**
 * A Postgres primary and a streaming standby made with initdb and `pg_basebackup -R -X stream`, on
 * their own ports and data directories under a temp dir, run as the postgres user. `synchronous`
 * makes the standby synchronous (`synchronous_standby_names = '*'`): a commit returns only once the
 * standby has flushed it. The machine's shared Postgres is never touched.
 */
export async function startPgPair(options: { synchronous: boolean }): Promise<PgPair> {
  const user = systemUser('postgres');
  const base = ownedTempDir(user, 'pg');
  const ports = new Set<number>();
  const server = async (name: string): Promise<PgServer> => ({
    port: await freePort(ports),
    dataDir: path.join(base, name),
    logFile: path.join(base, `${name}.log`),
  });
  const pair: Pair = {
    user,
    bin: postgresBin(),
    base,
    primary: await server('primary'),
    standby: await server('standby'),
  };
  try {
    await initPrimary(pair, options.synchronous);
    await cloneStandby(pair, options.synchronous);
  } catch (err) {
    await stopPair(pair);
    throw err;
  }
  return {
    primary: pair.primary,
    standby: pair.standby,
    url: (s, database = 'postgres') => `postgres://postgres@127.0.0.1:${s.port}/${database}`,
    async killPrimary() {
      const pid = postmasterPid(pair.primary);
      if (pid === null) throw new Error('the primary is not running: nothing to kill');
      await signalAndWait([pid, ...childPids(pid)], 'SIGKILL');
    },
    async promoteStandby() {
      await pgCtl(pair, ['promote', '-w', '-t', '60', '-D', pair.standby.dataDir]);
    },
    stop: () => stopPair(pair),
  };
}

function pgCtl(pair: Pair, args: string[]): Promise<string> {
  return runAs(pair.user, path.join(pair.bin, 'pg_ctl'), args, { PATH: '/usr/bin:/bin' });
}

async function startServer(pair: Pair, server: PgServer): Promise<void> {
  await pgCtl(pair, ['start', '-w', '-t', '60', '-D', server.dataDir, '-l', server.logFile]).catch((err: unknown) => {
    throw new Error(`Postgres on port ${server.port} could not start: ${String(err)}`);
  });
}

function settings(server: PgServer, lines: string[]): void {
  appendFileSync(path.join(server.dataDir, 'postgresql.conf'), `\n${lines.join('\n')}\n`);
}

async function initPrimary(pair: Pair, synchronous: boolean): Promise<void> {
  const { primary } = pair;
  const args = ['-D', primary.dataDir, '-U', 'postgres', '-A', 'trust', '--encoding=UTF8', '--locale=C', '-N'];
  await runAs(pair.user, path.join(pair.bin, 'initdb'), args, { PATH: '/usr/bin:/bin' });
  settings(primary, [
    `port = ${primary.port}`,
    `listen_addresses = '127.0.0.1'`,
    `unix_socket_directories = '${pair.base}'`,
    'wal_level = replica',
    'max_wal_senders = 4',
    `synchronous_standby_names = '${synchronous ? '*' : ''}'`,
  ]);
  appendFileSync(path.join(primary.dataDir, 'pg_hba.conf'), '\nhost replication all 127.0.0.1/32 trust\n');
  await startServer(pair, primary);
}

async function cloneStandby(pair: Pair, synchronous: boolean): Promise<void> {
  const { primary, standby } = pair;
  const args = ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', standby.dataDir];
  await runAs(pair.user, path.join(pair.bin, 'pg_basebackup'), [...args, '-R', '-X', 'stream', '-c', 'fast'], {
    PATH: '/usr/bin:/bin',
  });
  settings(standby, [
    `port = ${standby.port}`,
    // Once promoted it has no standby of its own: waiting for one would hang every commit. Patroni
    // does the same when the last synchronous standby is gone (synchronous_mode without _strict).
    `synchronous_standby_names = ''`,
    `log_statement = 'all'`,
  ]);
  await startServer(pair, standby);
  const expected = synchronous ? 'sync' : 'async';
  await waitFor(`the standby to stream (${expected})`, async () => {
    const client = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${primary.port}/postgres` });
    await client.connect();
    try {
      const { rows } = await client.query<{ sync_state: string }>(
        `SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'`,
      );
      return rows[0]?.sync_state === expected;
    } finally {
      await client.end();
    }
  });
}

function postmasterPid(server: PgServer): number | null {
  return pidFromFile(path.join(server.dataDir, 'postmaster.pid'), server.dataDir);
}

async function stopPair(pair: Pair): Promise<void> {
  const pids = [pair.standby, pair.primary].map(postmasterPid).filter((p): p is number => p !== null);
  await signalAndWait(pids, 'SIGQUIT');
  rmSync(pair.base, { recursive: true, force: true });
}
