import type { StartedTestContainer } from 'testcontainers';

export default async function globalTeardown(): Promise<void> {
  const containers = (globalThis as { __containers?: StartedTestContainer[] }).__containers ?? [];
  await Promise.all(containers.map((c) => c.stop()));
}
