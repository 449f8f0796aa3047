// HTTP load: closed-loop with autocannon, paced open-loop with Node's http; small helpers around them.
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import autocannon from 'autocannon';
import { sleep } from './env.mjs';

/**
 * POSTs `body` as JSON for `seconds`, or `amount` requests in all, closed-loop: `connections`
 * requests in flight at all times.
 */
export async function postLoad({ url, body, connections, seconds, amount }) {
  const result = await autocannon({
    url,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    connections,
    ...(amount ? { amount } : { duration: seconds }),
  });
  const ok = result['2xx'];
  const elapsed = amount ? result.duration : seconds;
  return {
    connections,
    seconds: elapsed,
    targetRate: null,
    requests: result.requests.total,
    ok,
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    perSecond: ok / elapsed,
    latencyMs: { p50: result.latency.p50, p90: result.latency.p90, p99: result.latency.p99, max: result.latency.max },
  };
}

/** The value at fraction `p` of an ascending array (nearest rank), or null when it is empty. */
export function percentile(sorted, p) {
  return sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

/**
 * POSTs `body` as JSON at `rate` requests/s for `seconds`, evenly spaced and open-loop: a request is
 * sent when its time comes, whether or not earlier ones were answered. (autocannon's rate limit sends
 * each second's quota as fast as it can at the start of the second: bursts at full speed, then idle,
 * which is not the steady load the latency levels are meant to show.)
 */
export async function pacedLoad({ url, body, rate, seconds }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const payload = JSON.stringify(body);
  const total = Math.round(rate * seconds);
  const latencies = [];
  let sent = 0;
  let ok = 0;
  let non2xx = 0;
  let errors = 0;
  const responses = [];
  const send = () =>
    new Promise((resolve) => {
      const started = performance.now();
      const req = http.request(
        url,
        { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': payload.length } },
        (res) => {
          res.resume();
          res.on('end', () => {
            latencies.push(performance.now() - started);
            if (res.statusCode >= 200 && res.statusCode < 300) ok++;
            else non2xx++;
            resolve();
          });
        },
      );
      req.on('error', () => {
        errors++;
        resolve();
      });
      req.end(payload);
    });
  const start = performance.now();
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate));
      while (sent < due) {
        sent++;
        responses.push(send());
      }
      if (sent >= total) {
        clearInterval(timer);
        resolve();
      }
    }, 1);
  });
  await Promise.all(responses);
  agent.destroy();
  const sorted = latencies.sort((a, b) => a - b);
  const at = (p) => percentile(sorted, p);
  return {
    connections: null,
    seconds,
    targetRate: rate,
    requests: sent,
    ok,
    non2xx,
    errors,
    perSecond: ok / seconds,
    latencyMs: { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted.at(-1) ?? null },
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
