// The naive designs under the same load as our api: latency, and how often a consumer that looks the
// task up on arrival finds nothing (the race the outbox removes).
import { amqpUrl, freePort, startProcess } from './lib/env.mjs';
import { getJson, postLoad, waitUntil } from './lib/load.mjs';

export async function measureNaive({ databaseUrl, pool, prefix, connections, seconds, poolSize }) {
  const port = await freePort();
  const server = await startProcess(
    'naive',
    'bench/naive-server.mjs',
    {
      DATABASE_URL: databaseUrl,
      AMQP_URL: amqpUrl,
      AMQP_PREFIX: prefix,
      PORT: String(port),
      PG_POOL_SIZE: String(poolSize),
    },
    port,
  );
  const results = {};
  try {
    for (const variant of ['commit-then-publish', 'publish-before-commit']) {
      const load = await postLoad({
        url: `http://127.0.0.1:${port}/${variant}`,
        body: { type: 'echo', payload: { phase: variant } },
        connections,
        seconds,
      });
      const seen = await waitUntil(
        `the naive consumer to see every ${variant} message`,
        async () => {
          const counts = (await getJson(`http://127.0.0.1:${port}/stats`))[variant];
          return counts && counts.found + counts.notFound >= load.ok ? counts : undefined;
        },
        60_000,
      );
      results[variant] = { load, consumer: seen };
    }
  } finally {
    await server.stop();
  }
  await pool.query('TRUNCATE tasks CASCADE');
  return results;
}
