import {
  amqpUrls,
  createDb,
  createLogger,
  createPool,
  loadConfig,
  redactUrl,
  runDoctor,
  toError,
  type CheckResult,
} from '@taskbox/shared';
import { retiredQueues, taskTypeList } from '@taskbox/tasks';

function print(results: CheckResult[]): void {
  const width = Math.max(...results.map((r) => r.name.length));
  for (const r of results) {
    const hint = r.status === 'ok' || !r.hint ? '' : `  → ${r.hint}`;
    process.stdout.write(`${r.status.padEnd(4)}  ${r.name.padEnd(width)}  ${r.detail}${hint}\n`);
  }
  const count = (s: CheckResult['status']): number => results.filter((r) => r.status === s).length;
  process.stdout.write(`\n${count('ok')} ok, ${count('warn')} warn, ${count('fail')} fail\n`);
}

async function main(): Promise<number> {
  const config = loadConfig(process.env);
  // Only pool errors would be logged; the findings go to stdout as the report.
  const logger = createLogger('doctor', { LOG_LEVEL: 'error', LOG_FORMAT: config.LOG_FORMAT });
  const prefix = config.AMQP_PREFIX ? ` (AMQP_PREFIX ${config.AMQP_PREFIX})` : '';
  const brokers = amqpUrls(config).map(redactUrl).join(', ');
  process.stdout.write(`taskbox doctor: ${redactUrl(config.DATABASE_URL)}, ${brokers}${prefix}\n\n`);

  const pool = createPool(config.DATABASE_URL, logger, {
    max: 2,
    connectionTimeoutMillis: 3000,
    statementTimeoutMs: config.DB_STATEMENT_TIMEOUT_MS,
  });
  const results = await runDoctor(config, pool, createDb(pool), taskTypeList, retiredQueues);
  print(results);
  await pool.end().catch(() => undefined);
  return results.some((r) => r.status === 'fail') ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`doctor failed: ${toError(err).message}`);
    process.exit(1);
  },
);
