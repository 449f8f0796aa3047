import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { amqpUrl, deleteTopology, testPrefix } from '../helpers/amqp';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { closedPort } from '../helpers/doctor';
import { waitFor } from '../helpers/wait';

const root = path.resolve(__dirname, '../..');

describe('npm start on a laptop', () => {
  let database: TestDatabase;
  let prefix: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    prefix = testPrefix();
  });
  afterAll(async () => {
    await database.drop();
    await deleteTopology(prefix);
  });

  /** scripts/start-all.mjs, detached: its own process group, which a test signals as a terminal does. */
  function startAll(env: Record<string, string> = {}) {
    const child = spawn(process.execPath, [path.join(root, 'scripts/start-all.mjs')], {
      cwd: root,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        PATH: process.env.PATH ?? '',
        DATABASE_URL: database.url,
        AMQP_URL: amqpUrl(),
        AMQP_PREFIX: prefix,
        PORT: '0',
        HEALTH_PORT: '0',
        ...env,
      },
    });
    const lines: string[] = [];
    readline.createInterface({ input: child.stdout! }).on('line', (line) => lines.push(line));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    return { child, lines, exited };
  }

  it('exits 1 when a service cannot start, after stopping the others', async () => {
    const { lines, exited } = startAll({ PORT: 'not-a-port' });
    expect(await exited).toBe(1);
    expect(lines.some((l) => /^\[\w+ *\] exited \(1\)$/.test(l))).toBe(true);
  }, 60_000);

  it('drains every service once and exits 0 on Ctrl-C, which the terminal sends to the whole process group', async () => {
    const { child, lines, exited } = startAll();
    await waitFor(
      'all three started',
      () =>
        lines.some((l) => l.includes('"consuming"')) &&
        lines.some((l) => l.includes('"worker started"')) &&
        lines.some((l) => l.includes('"relay started"')) &&
        lines.some((l) => l.includes('"api listening"')),
    );

    process.kill(-(child.pid as number), 'SIGINT');
    expect(await exited).toBe(0);
    for (const name of ['api', 'relay', 'worker']) {
      expect(lines).toContain(`[${name.padEnd(6)}] exited (0)`);
    }
    expect(lines.filter((l) => l.includes('second signal'))).toEqual([]);
    expect(lines.filter((l) => l.includes('"message":"stopped"'))).toHaveLength(3);
  }, 60_000);

  it('given one HEALTH_PORT, serves the relay’s health on it and the worker’s on the next port', async () => {
    const port = await closedPort();
    const { child, lines, exited } = startAll({ HEALTH_PORT: String(port) });
    const listening = (name: string, on: number) =>
      lines.some(
        (l) =>
          l.startsWith(`[${name.padEnd(6)}]`) && l.includes('"health server listening"') && l.includes(`"port":${on}`),
      );
    await waitFor(
      'all three started, the relay and the worker on their health ports',
      () =>
        listening('relay', port) &&
        listening('worker', port + 1) &&
        // The last lines at start: a signal before them could come before the shutdown is wired.
        ['"api listening"', '"relay started"', '"worker started"'].every((line) => lines.some((l) => l.includes(line))),
    );
    expect((await fetch(`http://127.0.0.1:${port + 1}/healthz`)).status).toBe(200);
    process.kill(-(child.pid as number), 'SIGINT');
    expect(await exited).toBe(0);
  }, 60_000);
});
