import { z } from 'zod';

const port = z.coerce.number().int().min(0).max(65535);
const positiveInt = z.coerce.number().int().positive();
// A wait the services set a timer for: Node runs a longer one after 1 ms, with only a warning on stderr.
const timerMs = positiveInt.max(2_147_483_647, "at most 2147483647 (about 24.8 days), a Node timer's limit");
const commaList = (value: string): string[] =>
  value
    .split(',')
    .map((item) => item.trim())
    .filter(Boolean);

/** The owner of every task while authentication is off. */
export const ANONYMOUS_OWNER = 'anonymous';

/** A static token's caller: the owner of the tasks it creates, and whether it may act on every owner's. */
export interface TokenCaller {
  owner: string;
  admin: boolean;
}

// "token:owner[:admin],…"; tokens and owners without ":" or "," so the list parses one way only.
// No ":" also keeps token owners apart from JWT owners, which the api stores as "jwt:<sub>".
const tokenEntry = String.raw`\s*[^\s:,]+:[^\s:,]+(:admin)?\s*`;
const authTokens = z
  .string()
  .regex(new RegExp(`^${tokenEntry}(,${tokenEntry})*$`), 'a list such as "token1:alice:admin,token2:bob"')
  // A token listed twice would quietly take its last owner, an admin's perhaps: which one is meant?
  .refine((value) => {
    const tokens = commaList(value).map((entry) => entry.split(':')[0]);
    return new Set(tokens).size === tokens.length;
  }, 'a token appears more than once; give each caller its own')
  // What an Authorization header carries (auth.ts); any other token could never sign in.
  .refine(
    (value) => commaList(value).every((entry) => /^[\x21-\x7e]+:/.test(entry)),
    'tokens of printable ASCII only, as an Authorization header carries them',
  )
  .transform(
    (value) =>
      new Map(
        commaList(value).map((entry): [string, TokenCaller] => {
          const [token = '', owner = '', flag] = entry.split(':');
          return [token, { owner, admin: flag === 'admin' }];
        }),
      ),
  )
  .refine(
    (tokens) => ![...tokens.values()].some((caller) => caller.owner === ANONYMOUS_OWNER),
    `"${ANONYMOUS_OWNER}" owns the tasks created while auth was off; give the token another owner`,
  );

// "claim=value": a JWT whose claim holds the value (one of its space-separated words, or an element
// of its array) is an admin's. "=" rather than ":" because claim names are often URLs.
const adminClaim = z
  .string()
  .regex(/^[^=\s]+=[^=\s]+$/, 'a claim and a value such as "scope=taskbox:admin"')
  .transform((value) => {
    const [claim = '', wanted = ''] = value.split('=');
    return { claim, value: wanted };
  });

// An origin is scheme://host[:port], exactly what browsers send in the Origin header.
const corsOrigins = z
  .string()
  .transform(commaList)
  .pipe(
    z.array(
      z.union([z.literal('*'), z.url().regex(/^https?:\/\/[^/]+$/, 'an origin such as https://app.example.com')]),
    ),
  );

const queueEntry = String.raw`\s*[A-Za-z0-9_-]+:[1-9]\d{0,3}\s*`;
const workerQueues = z
  .string()
  .regex(new RegExp(`^${queueEntry}(,${queueEntry})*$`), 'a list such as "reports:2,default:20"')
  .transform((value) =>
    commaList(value).map((entry) => {
      const [queue = '', prefetch = ''] = entry.split(':');
      return { queue, prefetch: Number(prefetch) };
    }),
  )
  .refine((queues) => queues.every((q) => q.prefetch <= 1000), 'a prefetch of at most 1000 per queue');

/** Every environment variable taskbox reads, with its default. main.ts of each service is the only caller. */
export const configSchema = z.object({
  DATABASE_URL: z
    .url({
      protocol: /^postgres(ql)?$/,
      error:
        'a postgres:// or postgresql:// URL (for a Unix socket: postgres://user@localhost/taskbox?host=/var/run/postgresql)',
    })
    .default('postgres://postgres@127.0.0.1:5432/taskbox'),
  AMQP_URL: z
    .url({ protocol: /^amqps?$/, error: 'an amqp:// or amqps:// URL' })
    .default('amqp://guest:guest@127.0.0.1:5672'),
  // The nodes of a RabbitMQ cluster: the relay and the worker connect to the first that answers and
  // move on to the next at every reconnect. Set, it replaces AMQP_URL.
  AMQP_URLS: z
    .string()
    .transform(commaList)
    .pipe(z.array(z.url({ protocol: /^amqps?$/, error: 'amqp:// or amqps:// URLs, comma-separated' })).min(1))
    .optional(),
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
  // Every statement of every service is cut after this (a held lock, an overloaded server); the api
  // then answers 503 and the worker holds its delivery. Sessions also get twice this as their
  // idle_in_transaction_session_timeout, which Postgres takes up to 2^31 - 1.
  DB_STATEMENT_TIMEOUT_MS: positiveInt
    .max(1_073_741_823, 'at most 1073741823 (twice it is a session setting)')
    .default(5000),
  RELAY_BATCH_SIZE: positiveInt.max(10_000).default(200),
  RELAY_POLL_MS: timerMs.default(1000),
  RELAY_CONFIRM_TIMEOUT_MS: timerMs.default(10_000),
  OUTBOX_RETENTION_MS: z.coerce.number().int().min(0).default(3_600_000),
  ATTEMPT_RETENTION_MS: z.coerce
    .number()
    .int()
    .min(0)
    .default(30 * 86_400_000),
  // Tasks that finished longer ago than this are deleted, with their attempts. At least an hour: a
  // mistaken 0 would delete every finished task within a minute.
  TASK_RETENTION_MS: z.coerce
    .number()
    .int()
    .min(3_600_000, 'at least 3600000 (an hour)')
    .default(30 * 86_400_000),
  RETENTION_INTERVAL_MS: timerMs.default(60_000),
  // A pending task whose message was published this long ago and that no worker started is republished
  // by the relay's reconciler (the broker lost the message); the doctor reports such tasks too.
  REPUBLISH_AFTER_MS: positiveInt.default(300_000),
  WORKER_PREFETCH: positiveInt.max(1000).default(20),
  // "reports:2,default:20": the queues a worker consumes, each with its prefetch (`default` is the
  // `tasks` queue). Unset, a worker consumes every queue with WORKER_PREFETCH.
  WORKER_QUEUES: workerQueues.optional(),
  WORKER_LEASE_MS: timerMs.min(100).default(15_000),
  // A run whose signal aborted (its timeout, a cancel, the shutdown) has this long to return; then the
  // worker records the attempt and frees the slot, and the run goes on in the background, counted.
  WORKER_TIMEOUT_GRACE_MS: timerMs.default(2000),
  // The largest result a run may return, as JSON; a larger one fails the task (PermanentError).
  WORKER_RESULT_MAX_BYTES: positiveInt.default(10 * 1024 * 1024),
  // When this many abandoned runs are still going at once, the worker drains and exits 1 to be restarted.
  WORKER_ABANDONED_RUNS_MAX: positiveInt.default(10),
  RETRY_BASE_MS: positiveInt.default(1000),
  RETRY_MAX_MS: positiveInt.default(300_000),
  SHUTDOWN_TIMEOUT_MS: timerMs.default(10_000),
  // POST /tasks with runAt or delayMs: a due time further ahead than the first is refused, and a runAt
  // further in the past than the second (clocks differ a little; within it the task runs at once). At
  // most 1 000 years: a due time past the year 9999 is one Postgres refuses or no view can show.
  SCHEDULE_MAX_AHEAD_MS: positiveInt.max(1000 * 365 * 86_400_000).default(365 * 86_400_000),
  SCHEDULE_PAST_SKEW_MS: z.coerce.number().int().min(0).default(60_000),
  // The doctor calls a pending task stuck after this long, and a running one after the second.
  DOCTOR_PENDING_MS: positiveInt.default(60_000),
  DOCTOR_PROCESSING_MS: positiveInt.default(600_000),
  // "production" makes the api refuse to start without auth, unless AUTH_DISABLED says it is meant,
  // and turns DEMO_FAULTS off unless it is set.
  NODE_ENV: z.string().optional(),
  DEMO_FAULTS: z.stringbool().optional(),
  AUTH_DISABLED: z.stringbool().default(false),
  AUTH_TOKENS: authTokens.optional(),
  // HS256 needs a key at least as long as its 256-bit hash (RFC 7518 section 3.2).
  AUTH_JWT_SECRET: z.string().min(32, 'at least 32 characters').optional(),
  AUTH_JWKS_URL: z.url().optional(),
  AUTH_JWT_ISSUER: z.string().min(1).optional(),
  AUTH_JWT_AUDIENCE: z.string().min(1).optional(),
  AUTH_JWT_ADMIN_CLAIM: adminClaim.optional(),
  CORS_ORIGINS: corsOrigins.default([]),
  // The api's bounds on slow clients: all headers within the first, the whole request within the second.
  HTTP_HEADERS_TIMEOUT_MS: timerMs.default(10_000),
  HTTP_REQUEST_TIMEOUT_MS: timerMs.default(30_000),
  // Every long poll the api may hold (LONG_POLL_MAX) and as many sockets again for ordinary requests
  // and idle keep-alive connections; far below the file descriptors a container gets.
  HTTP_MAX_CONNECTIONS: positiveInt.default(4000),
  // Per api process. A waiting long poll holds a socket and ~20 KB of heap, no database connection, and
  // one read per change serves all polls on a task: the cap bounds memory and the answers sent at once.
  LONG_POLL_MAX: positiveInt.default(2000),
  // A browser over HTTP/1.1 opens at most six connections to a host; this leaves room for a backend that
  // watches for many users with one token. With auth off every caller is one owner.
  LONG_POLL_MAX_PER_OWNER: positiveInt.default(100),
  // Server-Sent Events (services/api/src/routes/streams.ts). Stream tokens ride in URLs, so they are short-lived;
  // every api process behind one load balancer needs the same secret, or a token opens streams only where issued.
  STREAM_TOKEN_SECRET: z.string().min(32, 'at least 32 characters').optional(),
  STREAM_TOKEN_TTL_MS: positiveInt.default(120_000),
  // Below the idle timeouts of common proxies and load balancers, which start at a minute.
  STREAM_HEARTBEAT_MS: timerMs.default(15_000),
  // A list stream queues a view per changed task for a client that reads slower than tasks change: past
  // this many bytes it catches up from the database at its client's pace, which bounds the api's memory
  // at streams (LONG_POLL_MAX) × bytes; a write blocked this long ends the stream (its client resumes).
  STREAM_MAX_QUEUED_BYTES: positiveInt.default(1024 * 1024),
  STREAM_STALL_MS: timerMs.default(60_000),
  // Most tasks one bulk retry or cancel acts on: each is one transaction holding that many row locks.
  BULK_ACTION_MAX: positiveInt.max(100_000).default(1000),
  // Serves the operators' dashboard at /dashboard/ (static files; the data needs the api's token).
  DASHBOARD: z.stringbool().default(true),
  // Serves examples/web at /example/: a development aid, off unless asked for.
  EXAMPLE_PAGE: z.stringbool().default(false),
});

export type Config = z.infer<typeof configSchema>;

export const configKeys = Object.keys(configSchema.shape) as (keyof Config)[];

// Node refuses a headers timeout longer than the request timeout, and long polls must leave connections free.
function httpLimitIssues(config: Config | undefined): { path: string; message: string }[] {
  if (!config) return [];
  const issues = [];
  if (config.HTTP_HEADERS_TIMEOUT_MS > config.HTTP_REQUEST_TIMEOUT_MS) {
    issues.push({ path: 'HTTP_HEADERS_TIMEOUT_MS', message: 'at most HTTP_REQUEST_TIMEOUT_MS' });
  }
  if (config.LONG_POLL_MAX >= config.HTTP_MAX_CONNECTIONS) {
    issues.push({ path: 'LONG_POLL_MAX', message: 'less than HTTP_MAX_CONNECTIONS' });
  }
  return issues;
}

/** Parses the environment or throws one error that names every bad variable. */
export function loadConfig(env: NodeJS.ProcessEnv): Config {
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = configSchema.safeParse(present);
  const issues = parsed.error?.issues.map((i) => ({ path: i.path.join('.'), message: i.message })) ?? [];
  if (parsed.data?.AUTH_JWT_SECRET && parsed.data.AUTH_JWKS_URL) {
    issues.push({ path: 'AUTH_JWKS_URL', message: 'set AUTH_JWT_SECRET or AUTH_JWKS_URL, not both' });
  }
  // One key for both would let a stream token pass as a bearer token (auth.ts refuses their audience too).
  if (parsed.data?.STREAM_TOKEN_SECRET && parsed.data.STREAM_TOKEN_SECRET === parsed.data.AUTH_JWT_SECRET) {
    issues.push({ path: 'STREAM_TOKEN_SECRET', message: 'must differ from AUTH_JWT_SECRET' });
  }
  if (parsed.data?.AUTH_JWT_ADMIN_CLAIM && !parsed.data.AUTH_JWT_SECRET && !parsed.data.AUTH_JWKS_URL) {
    issues.push({ path: 'AUTH_JWT_ADMIN_CLAIM', message: 'applies to JWTs: set AUTH_JWT_SECRET or AUTH_JWKS_URL too' });
  }
  issues.push(...httpLimitIssues(parsed.data));
  if (parsed.success && issues.length === 0) return parsed.data;
  const lines = issues.map((i) => `  ${i.path}: ${i.message}`);
  throw new Error(`invalid configuration:\n${lines.join('\n')}`);
}

/** The broker nodes to connect to, in order of preference. */
export function amqpUrls(config: Pick<Config, 'AMQP_URL' | 'AMQP_URLS'>): string[] {
  return config.AMQP_URLS ?? [config.AMQP_URL];
}

/** The URL with its password replaced, for logs (also one given as ?password=, as pg takes it). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    if (u.searchParams.has('password')) u.searchParams.set('password', '***');
    return u.toString();
  } catch {
    return '<unparseable url>';
  }
}
