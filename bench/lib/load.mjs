// HTTP load with autocannon, and small helpers to read its results.
import http from 'node:http';
import autocannon from 'autocannon';
import { sleep } from './env.mjs';

/**
 * POSTs `body` as JSON for `seconds`. Without `rate` it is closed-loop at `connections` in flight (the
 * throughput test); with `rate` each connection is paced so that all together send `rate` requests/s
 * (open-loop as long as the server keeps up, which the 25/50/90 % levels are chosen for).
 */
export async function postLoad({ url, body, connections, seconds, rate }) {
  const result = await autocannon({
    url,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    connections,
    duration: seconds,
    ...(rate ? { overallRate: Math.max(1, Math.round(rate)) } : {}),
  });
  const ok = result['2xx'];
  return {
    connections,
    seconds,
    targetRate: rate ?? null,
    requests: result.requests.total,
    ok,
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    perSecond: ok / seconds,
    latencyMs: { p50: result.latency.p50, p90: result.latency.p90, p99: result.latency.p99, max: result.latency.max },
  };
}

/** Resolves when GET `url` answers 200 (a service is connected to everything it needs). */
export async function waitForOk(url, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const status = await new Promise((resolve) => {
      http
        .get(url, (res) => {
          res.resume();
          resolve(res.statusCode);
        })
        .on('error', () => resolve(0));
    });
    if (status === 200) return;
    await sleep(200);
  }
  throw new Error(`${url} was not ready within ${timeoutMs} ms`);
}

/** GET `url` and return its body as text. */
export function getText(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let data = '';
        res.on('data', (d) => (data += d));
        res.on('end', () => resolve(data));
      })
      .on('error', reject);
  });
}

/** GET `url` and parse its JSON body. */
export async function getJson(url) {
  return JSON.parse(await getText(url));
}

/** Polls `check` until it returns a value that is not undefined. */
export async function waitUntil(what, check, timeoutMs, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}
