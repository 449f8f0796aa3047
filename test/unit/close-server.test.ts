import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { closeServer, listen } from '@taskbox/shared';

/**
 * Four keep-alive clients in another process, sending requests back to back until one fails; it prints
 * how many answers said `connection: close`, and how the requests ended.
 */
const clients = (port: number): string => `
  const http = require('node:http');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  let told = 0;
  async function loop() {
    for (;;) {
      const answer = await new Promise((resolve) => {
        http.get({ port: ${port}, agent }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.headers.connection));
        }).on('error', resolve);
      });
      if (answer instanceof Error) return answer.code;
      if (answer === 'close') told++;
    }
  }
  console.log('ready');
  Promise.all([loop(), loop(), loop(), loop()]).then((ends) => console.log(JSON.stringify({ told, ends })));
`;

describe('closeServer', () => {
  it('ends keep-alive connections that stay busy, each after its answer, instead of serving them for good', async () => {
    // Answers a few ms later, as a route that reads the database does: its connection is busy at the close.
    const server = http.createServer((_req, res) => setTimeout(() => res.end('ok'), 5));
    await listen(server, 0);
    const child = spawn(process.execPath, ['-e', clients((server.address() as AddressInfo).port)]);
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const exited = new Promise((resolve) => child.on('exit', resolve));
    await new Promise<void>((resolve) => child.stdout.once('data', () => setTimeout(resolve, 300)));
    try {
      // Before: the four clients were served until the test timed out, and the close never resolved.
      await closeServer(server);
      await exited;
    } finally {
      child.kill();
    }
    const { told, ends } = JSON.parse(out.split('\n')[1] ?? '') as { told: number; ends: string[] };
    expect(told).toBeGreaterThan(0);
    expect(ends).toHaveLength(4);
  });

  it('lets a response in flight at the close reach a slow client whole, however long its writing takes', async () => {
    const body = Buffer.alloc(20 * 1024 * 1024, 'x');
    let received: () => void = () => undefined;
    const arrived = new Promise<void>((resolve) => (received = resolve));
    // A large answer a little after the close, as a task's result read from the database.
    const server = http.createServer((_req, res) => {
      received();
      setTimeout(() => res.end(body), 200);
    });
    await listen(server, 0);
    const read = new Promise<number | Error>((resolve) => {
      http
        .get({ port: (server.address() as AddressInfo).port }, (res) => {
          let bytes = 0;
          // A slow reader: the answer takes seconds to write, past any sweep of idle connections.
          res.on('data', (chunk: Buffer) => {
            bytes += chunk.length;
            res.pause();
            setTimeout(() => res.resume(), 5);
          });
          res.on('end', () => resolve(bytes));
          res.on('error', resolve);
        })
        .on('error', resolve);
    });
    await arrived;
    await closeServer(server);
    expect(await read).toBe(body.length);
  });
});
