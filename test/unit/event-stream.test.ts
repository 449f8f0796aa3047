import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import express, { type Response } from 'express';
import { openEventStream, type EventStream, type StreamBounds } from '../../services/api/src/event-stream';
import { capturingLogger } from '../helpers/log';
import type { LogLine } from '../helpers/services';
import { waitFor } from '../helpers/wait';

const EVENT = 'x'.repeat(10_000);
// Far more than the kernel's socket buffers hold for a client that reads nothing.
const MOST_EVENTS = 6_000;

interface Opened {
  stream: EventStream;
  res: Response;
}

/** One stream served on a loopback port with these bounds; the test sends on it as a route would. */
async function serve(bounds: StreamBounds) {
  const { logger, lines } = capturingLogger();
  let opened: (o: Opened) => void = () => undefined;
  const next = new Promise<Opened>((resolve) => (opened = resolve));
  const app = express();
  app.get('/tasks/events', (_req, res) => {
    res.locals.owner = 'alice';
    opened({ stream: openEventStream(res, { heartbeatMs: 60_000, retryMs: 2000 }, bounds, logger), res });
  });
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const close = () => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { port, next, lines, close };
}

/** Serves one stream to the client `connect` opens, runs `body` on it, then closes both. */
async function withStream(
  bounds: StreamBounds,
  connect: (port: number) => net.Socket,
  body: (opened: Opened, lines: LogLine[]) => Promise<void>,
): Promise<void> {
  const served = await serve(bounds);
  const socket = connect(served.port);
  try {
    await body(await served.next, served.lines);
  } finally {
    socket.destroy();
    await served.close();
  }
}

/** A client that reads the response headers, then nothing more (a stalled connection, a suspended tab). */
function stalledClient(port: number): net.Socket {
  const socket = net.connect(port, '127.0.0.1');
  socket.write('GET /tasks/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n');
  socket.once('data', () => socket.pause());
  socket.on('error', () => undefined);
  return socket;
}

describe('event stream: a client that does not keep up', () => {
  it('answers false once its queue holds maxQueuedBytes, and stays open: its sender waits', async () => {
    await withStream({ maxQueuedBytes: 200_000, stallMs: 3_600_000 }, stalledClient, async ({ stream }) => {
      let full = -1;
      for (let i = 0; i < MOST_EVENTS && full < 0; i++) {
        if (!stream.send(`task-${i}`, { id: String(i), event: 'task', data: EVENT })) full = i;
        if (i % 50 === 0) await new Promise((r) => setImmediate(r));
      }
      expect(full).toBeGreaterThan(0);
      expect(stream.closed.aborted).toBe(false);
    });
  });

  it('ends a stream whose write stays blocked past stallMs, however few its keys', async () => {
    await withStream({ maxQueuedBytes: 200_000, stallMs: 300 }, stalledClient, async ({ stream }, lines) => {
      // A task that keeps changing: its one key is replaced, and the socket never takes the last state.
      const changed = () => {
        stream.send('task', { id: '1', event: 'task', data: EVENT });
        return stream.closed.aborted;
      };
      await waitFor('the blocked stream to end', changed, 20_000, 5);
      const warn = lines.find((l) => l.level === 'warn');
      expect(warn?.message).toMatch(/^stream ended: its client took nothing for STREAM_STALL_MS/);
      expect(warn).toMatchObject({ path: '/tasks/events', owner: 'alice' });
    });
  });

  it('delivers every event to a slow reader whose sender waits for drained() when send() answers false', async () => {
    let received = 0;
    const reading = (port: number) => {
      const client = net.connect(port, '127.0.0.1');
      client.write('GET /tasks/events HTTP/1.1\r\nHost: x\r\n\r\n');
      client.setEncoding('utf8');
      // Slower than the sender: small events are still queued when a large one comes.
      let tail = '';
      client.on('data', (chunk: string) => {
        // The marker may straddle two chunks: count it in the end of the last one and this one.
        const text = tail + chunk;
        received += text.split('event: task\n').length - 1;
        tail = text.slice(-11);
        client.pause();
        setTimeout(() => client.resume(), 1);
      });
      return client;
    };
    await withStream({ maxQueuedBytes: 100_000, stallMs: 3_600_000 }, reading, async ({ stream }) => {
      for (let i = 0; i < 2_000; i++) {
        // Every 500th a task with a large result, after small ones still queued: a catch-up's page.
        const data = i % 500 === 499 ? 'y'.repeat(150_000) : EVENT;
        if (!stream.send(`task-${i}`, { id: String(i), event: 'task', data })) await stream.drained();
      }
      await waitFor('every event at the client', () => received === 2_000);
      expect(stream.closed.aborted).toBe(false);
    });
  });
});
