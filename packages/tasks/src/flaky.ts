import { z } from 'zod';
import { defineTaskType } from '@taskbox/shared';

/** Fails its first `failTimes` attempts, then succeeds: exercises retries and the failed state. */
export const flaky = defineTaskType({
  name: 'flaky',
  payload: z.object({ failTimes: z.number().int().min(0).max(100), message: z.string().max(200).optional() }).strict(),
  result: z.object({ succeededOnAttempt: z.number().int().min(1) }),
  async run({ payload, attempt }) {
    if (attempt <= payload.failTimes) {
      throw new Error(payload.message ?? `flaky failure on attempt ${attempt} of ${payload.failTimes}`);
    }
    return { succeededOnAttempt: attempt };
  },
});
