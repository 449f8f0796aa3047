import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawnChild, waitUntilListening, type Child } from '../../tools/src/harness';
import { waitFor } from '../helpers/wait';

// Small stand-ins for a service, so that each of the harness's paths can be made to happen.
const scripts = {
  // Listens on PORT and logs one line to stdout and one to stderr; exits 0 on SIGTERM.
  listener: `const server = require('node:http').createServer().listen(Number(process.env.PORT), '127.0.0.1', () => {
    console.log(JSON.stringify({ message: 'listening', port: server.address().port, seen: process.env.SEEN, leaked: process.env.LEAKED }));
    console.error('plain text');
  });
  process.on('SIGTERM', () => server.close(() => process.exit(0)));`,
  // Ignores SIGTERM: only the SIGKILL after the deadline ends it.
  stubborn: `process.on('SIGTERM', () => console.log('ignoring SIGTERM')); setInterval(() => undefined, 1000);
  console.log('ready');`,
  // Exits before it ever listens.
  crasher: `process.exit(3);`,
};

let dir: string;
const children: Child[] = [];

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'harness-'));
  for (const [name, text] of Object.entries(scripts)) writeFileSync(path.join(dir, `${name}.js`), text);
});

afterEach(async () => {
  await Promise.all(children.splice(0).map((c) => c.kill()));
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function start(name: keyof typeof scripts, log: Parameters<typeof spawnChild>[0]['log'], env = {}): Child {
  const child = spawnChild({ script: path.join(dir, `${name}.js`), env, log });
  children.push(child);
  return child;
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

describe('the service harness', () => {
  it('pipes stdout and stderr line by line, passes only the env it is given, and stops with SIGTERM', async () => {
    const lines: string[] = [];
    process.env.LEAKED = 'from the parent';
    const child = start('listener', { pipe: (line) => lines.push(line) }, { PORT: '0', SEEN: 'yes' });
    await waitFor('both lines', () => lines.length >= 2);
    const json = JSON.parse(lines.find((l) => l.startsWith('{')) ?? '{}') as { seen?: string; leaked?: string };
    expect(json).toEqual(expect.objectContaining({ seen: 'yes' }));
    expect(json.leaked).toBeUndefined();
    expect(lines).toContain('plain text');
    expect(await child.stop()).toBe(0);
    delete process.env.LEAKED;
  });

  it('writes the log to a file and resolves when the port accepts connections', async () => {
    const port = await freePort();
    const file = path.join(dir, 'listener.log');
    const child = start('listener', { file }, { PORT: String(port) });
    await waitUntilListening(child, port);
    await waitFor('the log line in the file', () => readFileSync(file, 'utf8').includes('"listening"'));
    expect(await child.stop()).toBe(0);
  });

  it('kills a child that ignores SIGTERM once the deadline passes', async () => {
    const lines: string[] = [];
    const child = start('stubborn', { pipe: (line) => lines.push(line) });
    await waitFor('the child to be ready', () => lines.includes('ready'));
    expect(await child.stop(200)).toBeNull();
    expect(child.process.signalCode).toBe('SIGKILL');
  });

  it('fails the wait for the port when the child exits first', async () => {
    const child = start('crasher', { pipe: () => undefined });
    await expect(waitUntilListening(child, await freePort())).rejects.toThrow(/process exited 3/);
  });

  it('fails the wait for the port when nothing listens in time', async () => {
    const child = start('stubborn', { pipe: () => undefined });
    await expect(waitUntilListening(child, await freePort(), 300)).rejects.toThrow(/did not accept connections/);
  });
});
