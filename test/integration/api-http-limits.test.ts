import net from 'node:net';
import { closeServer } from '@taskbox/shared';
import { createServer } from '../../services/api/src/server';
import { startTestApi, type TestApi } from '../helpers/api';
import { insertTaskFixture } from '../helpers/factories';
import { waitFor } from '../helpers/wait';

const HEADERS_TIMEOUT_MS = 1000;
const REQUEST_TIMEOUT_MS = 2000;

interface Cut {
  /** What the server wrote before it closed the connection. */
  received: string;
  ms: number;
}

/** Opens a raw connection, writes `sent`, then stalls until the server closes the connection. */
function stallAfter(base: string, sent: string): Promise<Cut> {
  const { port } = new URL(base);
  return new Promise((resolve) => {
    const started = Date.now();
    let received = '';
    const socket = net.connect(Number(port), '127.0.0.1', () => socket.write(sent));
    socket.on('data', (chunk) => (received += chunk.toString()));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve({ received, ms: Date.now() - started }));
  });
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => resolve(socket));
    socket.on('error', reject);
  });
}

describe('api: the HTTP server cuts slow clients and caps connections', () => {
  let api: TestApi;
  let base: string;

  beforeAll(async () => {
    api = await startTestApi();
    base = await api.listen({ headersTimeoutMs: HEADERS_TIMEOUT_MS, requestTimeoutMs: REQUEST_TIMEOUT_MS });
  });

  afterAll(async () => {
    await api.close();
  });

  it('answers 408 and closes a client that stalls in its headers, within about the headers timeout', async () => {
    const cut = await stallAfter(base, 'GET /healthz HTTP/1.1\r\nHost: taskbox\r\nX-Slow: ');
    expect(cut.received).toMatch(/^HTTP\/1\.1 408 /);
    expect(cut.ms).toBeLessThan(3 * HEADERS_TIMEOUT_MS);
  });

  it('answers 408 and closes a client that stalls in its body, within about the request timeout', async () => {
    const head =
      'POST /tasks HTTP/1.1\r\nHost: taskbox\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n';
    const cut = await stallAfter(base, `${head}{"type":`);
    expect(cut.received).toMatch(/^HTTP\/1\.1 408 /);
    expect(cut.ms).toBeLessThan(3 * REQUEST_TIMEOUT_MS);
    // Nothing of the cut request was stored.
    expect(await api.database.db.selectFrom('tasks').select('id').execute()).toEqual([]);
  });

  it('lets a long poll wait longer than the request timeout and answers it 200', async () => {
    const id = await insertTaskFixture(api.database.db);
    const started = Date.now();
    const res = await fetch(`${base}/tasks/${id}?wait=${(2 * REQUEST_TIMEOUT_MS) / 1000}`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ id, status: 'pending' });
    // It waited out its whole wait, past the request timeout, and was not cut.
    expect(Date.now() - started).toBeGreaterThan(REQUEST_TIMEOUT_MS);
  });

  it('closes connections beyond the cap at once, and serves again once one closes', async () => {
    const capped = createServer(api.app, { headersTimeoutMs: 10_000, requestTimeoutMs: 30_000, maxConnections: 2 });
    await new Promise<void>((resolve) => capped.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(capped.address() as net.AddressInfo).port}`;
    const held = [await connect(Number(new URL(url).port)), await connect(Number(new URL(url).port))];
    try {
      const refused = await stallAfter(url, 'GET /healthz HTTP/1.1\r\nHost: taskbox\r\n\r\n');
      expect(refused.received).toBe('');
      held[0]!.destroy();
      await waitFor('a connection under the cap to be served', async () => {
        const res = await fetch(`${url}/healthz`, { headers: { connection: 'close' } });
        return res.status === 200;
      });
    } finally {
      for (const socket of held) socket.destroy();
      await closeServer(capped);
    }
  });
});
