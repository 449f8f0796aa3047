import pg from 'pg';
import type { StartedTestContainer } from 'testcontainers';

export default async function globalTeardown(): Promise<void> {
  const { TASKBOX_TEST_ADMIN_URL: adminUrl, TASKBOX_TEST_TEMPLATE_DB: template } = process.env;
  if (adminUrl && template) {
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${template} WITH (FORCE)`);
    await admin.end();
  }
  const containers = (globalThis as { __containers?: StartedTestContainer[] }).__containers ?? [];
  await Promise.all(containers.map((c) => c.stop()));
}
