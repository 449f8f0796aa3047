import { execFileSync } from 'node:child_process';
import amqp from 'amqplib';
import pg from 'pg';
import { GenericContainer, Wait, type StartedTestContainer } from 'testcontainers';
import { createDb, migrateToLatest } from '@taskbox/shared';

async function postgresReachable(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
  try {
    await client.connect();
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function rabbitReachable(url: string): Promise<boolean> {
  try {
    const c = await amqp.connect(url, { timeout: 3000 });
    await c.close();
    return true;
  } catch {
    return false;
  }
}

function dockerAvailable(): boolean {
  try {
    execFileSync('docker', ['info'], { stdio: 'ignore', timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

const containers: StartedTestContainer[] = [];

/**
 * Finds Postgres and RabbitMQ: TEST_DATABASE_URL / TEST_AMQP_URL (or DATABASE_URL / AMQP_URL) when
 * set, the local defaults when reachable, containers when a Docker engine exists, else a clear error.
 */
async function resolveServices(): Promise<{ adminUrl: string; amqpUrl: string }> {
  let adminUrl =
    process.env.TEST_DATABASE_URL ?? process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  let amqpUrl = process.env.TEST_AMQP_URL ?? process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
  const pgOk = await postgresReachable(adminUrl);
  const amqpOk = await rabbitReachable(amqpUrl);
  if (pgOk && amqpOk) return { adminUrl, amqpUrl };
  if (!dockerAvailable()) {
    const missing = [!pgOk && `Postgres at ${adminUrl}`, !amqpOk && `RabbitMQ at ${amqpUrl}`].filter(Boolean);
    throw new Error(
      `tests need ${missing.join(' and ')}, and no Docker engine is available for testcontainers. ` +
        'Start them (see README "Two commands"), or set TEST_DATABASE_URL / TEST_AMQP_URL.',
    );
  }
  if (!pgOk) {
    const c = await new GenericContainer('postgres:15-alpine')
      .withEnvironment({ POSTGRES_HOST_AUTH_METHOD: 'trust' })
      .withExposedPorts(5432)
      .withWaitStrategy(Wait.forLogMessage(/ready to accept connections/, 2))
      .start();
    containers.push(c);
    adminUrl = `postgres://postgres@${c.getHost()}:${c.getMappedPort(5432)}/postgres`;
  }
  if (!amqpOk) {
    const c = await new GenericContainer('rabbitmq:3.13-alpine')
      .withExposedPorts(5672)
      .withWaitStrategy(Wait.forLogMessage(/Server startup complete/))
      .start();
    containers.push(c);
    amqpUrl = `amqp://guest:guest@${c.getHost()}:${c.getMappedPort(5672)}`;
  }
  return { adminUrl, amqpUrl };
}

/** Migrates a template database once; each test file clones it (see helpers/db.ts). */
export default async function globalSetup(): Promise<void> {
  const { adminUrl, amqpUrl } = await resolveServices();
  // One template per run: runs on a shared server (several engineers, CI) must not drop each other's.
  const TEMPLATE_DB = `taskbox_test_template_${process.pid}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${TEMPLATE_DB} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${TEMPLATE_DB}`);
  await admin.end();

  const templateUrl = new URL(adminUrl);
  templateUrl.pathname = `/${TEMPLATE_DB}`;
  const pool = new pg.Pool({ connectionString: templateUrl.toString(), max: 1 });
  const db = createDb(pool);
  const { error } = await migrateToLatest(db);
  await db.destroy();
  if (error) throw new Error(`migrating the test template failed: ${String(error)}`);

  process.env.TASKBOX_TEST_ADMIN_URL = adminUrl;
  process.env.TASKBOX_TEST_AMQP_URL = amqpUrl;
  process.env.TASKBOX_TEST_TEMPLATE_DB = TEMPLATE_DB;
  (globalThis as { __containers?: StartedTestContainer[] }).__containers = containers;
}
