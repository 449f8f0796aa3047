import { z } from 'zod';

const port = z.coerce.number().int().min(0).max(65535);
const positiveInt = z.coerce.number().int().positive();

/** Every environment variable taskbox reads, with its default. main.ts of each service is the only caller. */
export const configSchema = z.object({
  DATABASE_URL: z.url().default('postgres://postgres@127.0.0.1:5432/taskbox'),
  AMQP_URL: z.url().default('amqp://guest:guest@127.0.0.1:5672'),
  AMQP_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9._-]*$/, 'letters, digits, ".", "_" and "-" only')
    .default(''),
  LOG_LEVEL: z.enum(['error', 'warn', 'info', 'debug']).default('info'),
  LOG_FORMAT: z.enum(['json', 'pretty']).default('json'),
  PORT: port.default(3000),
  HEALTH_PORT: port.optional(),
  BODY_LIMIT: z
    .string()
    .regex(/^\d+(b|kb|mb)$/i, 'a size such as 64kb')
    .default('64kb'),
  PG_POOL_SIZE: positiveInt.default(10),
  RELAY_BATCH_SIZE: positiveInt.max(10_000).default(200),
  RELAY_POLL_MS: positiveInt.default(1000),
  RELAY_CONFIRM_TIMEOUT_MS: positiveInt.default(10_000),
  OUTBOX_RETENTION_MS: z.coerce.number().int().min(0).default(3_600_000),
  ATTEMPT_RETENTION_MS: z.coerce
    .number()
    .int()
    .min(0)
    .default(30 * 86_400_000),
  RETENTION_INTERVAL_MS: positiveInt.default(60_000),
  WORKER_PREFETCH: positiveInt.max(1000).default(20),
  WORKER_LEASE_MS: positiveInt.min(100).default(15_000),
  RETRY_BASE_MS: positiveInt.default(1000),
  RETRY_MAX_MS: positiveInt.default(300_000),
  SHUTDOWN_TIMEOUT_MS: positiveInt.default(10_000),
  // The doctor calls a pending task stuck after this long, and a running one after the second.
  DOCTOR_PENDING_MS: positiveInt.default(60_000),
  DOCTOR_PROCESSING_MS: positiveInt.default(600_000),
});

export type Config = z.infer<typeof configSchema>;
export const configKeys = Object.keys(configSchema.shape) as (keyof Config)[];

/** Parses the environment or throws one error that names every bad variable. */
export function loadConfig(env: NodeJS.ProcessEnv): Config {
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = configSchema.safeParse(present);
  if (parsed.success) return parsed.data;
  const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
  throw new Error(`invalid configuration:\n${lines.join('\n')}`);
}

/** The URL with its password replaced, for logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<unparseable url>';
  }
}
