import { z } from 'zod';
import { taskStatuses, UNSTORABLE_TEXT } from '@taskbox/shared';
import { isStorableText } from '@taskbox/shared';
import { taskFilterFields } from './schemas';

/** The bodies and answers of the counts and the admin endpoints (routes/admin.ts), for the routes and /openapi.json. */

const iso = z.iso.datetime({ offset: true });
const text = (max: number) => z.string().min(1).max(max).refine(isStorableText, UNSTORABLE_TEXT);

export const bulkFilterSchema = z.object({ ...taskFilterFields, owner: text(300).optional() }).strict();

export const bulkRequestSchema = z
  .object({
    filter: bulkFilterSchema.default({}),
    dryRun: z.boolean().default(false).describe('count the matching tasks, change nothing'),
    limit: z.number().int().min(1).optional().describe('most tasks to act on in this call; at most BULK_ACTION_MAX'),
  })
  .strict();

export const bulkResultSchema = z.object({
  action: z.enum(['retry', 'cancel']),
  dryRun: z.boolean(),
  matched: z.number().int().describe('tasks the filter matched (in the statuses the action applies to)'),
  acted: z.number().int().describe('tasks retried or cancelled by this call: 0 on a dry run'),
  limit: z.number().int(),
});

export const redriveRequestSchema = z
  .object({
    dryRun: z.boolean().default(false).describe('say what would happen; every message stays in the queue'),
    limit: z.number().int().min(1).max(10_000).default(1000).describe('most messages to look at'),
  })
  .strict();

export const redriveResultSchema = z.object({
  dryRun: z.boolean(),
  republished: z.number().int(),
  dropped: z.record(z.string(), z.number().int()).describe('messages dropped, by reason'),
});

export const countsQuerySchema = z.object({ owner: text(300).optional() }).strict();

export const countsSchema = z.object({
  counts: z.array(z.object({ type: z.string(), status: z.enum(taskStatuses), count: z.number().int() })),
  countedAt: iso.describe(
    'when the count began: pages that poll share one count, reused for a second, or on a large table ' +
      'for about a second per 300 000 tasks counted',
  ),
});

export const systemStatusSchema = z.object({
  outbox: z.object({ count: z.number().int(), oldestAgeSeconds: z.number() }),
  checks: z.array(
    z.object({
      name: z.string(),
      status: z.enum(['ok', 'warn', 'fail']),
      detail: z.string(),
      hint: z.string(),
      count: z.number().int().optional(),
    }),
  ),
  checkedAt: iso.describe('when the checks ran (they are reused for a few seconds)'),
});
