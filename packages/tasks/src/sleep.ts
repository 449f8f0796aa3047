import { z } from 'zod';
import { abortable, defineTaskType } from '@taskbox/shared';

/**
 * Waits `ms`, reporting progress; stops early when cancelled or out of time. With `ignoreSignal` it
 * waits without listening to its signal, as a call into a library that takes no AbortSignal does: the
 * demonstration of a run the worker gives up on after WORKER_TIMEOUT_GRACE_MS (README, "Timeouts").
 */
export const sleep = defineTaskType({
  name: 'sleep',
  payload: z.object({ ms: z.number().int().min(0).max(3_600_000), ignoreSignal: z.boolean().optional() }).strict(),
  result: z.object({ sleptMs: z.number().int() }),
  // Room for the longest sleep the payload allows (an hour) and its progress writes.
  timeoutMs: 3_660_000,
  // A demo: a timed-out sleep is retried within a second, whatever the worker's RETRY_BASE_MS says.
  backoff: { baseMs: 100, maxMs: 1000 },
  // Every caller could otherwise pile up runs the worker gives up on, until it exits to end them.
  demoFault: (payload) => payload.ignoreSignal === true,
  async run({ payload, signal, step, progress }) {
    await step('sleeping');
    const halves = [Math.floor(payload.ms / 2), Math.ceil(payload.ms / 2)];
    for (const [i, ms] of halves.entries()) {
      if (payload.ignoreSignal) await new Promise((resolve) => setTimeout(resolve, ms));
      else {
        await abortable(signal, (onAbort) => {
          return new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, ms);
            onAbort(() => clearTimeout(timer));
          });
        });
      }
      await progress((i + 1) / halves.length);
    }
    return { sleptMs: payload.ms };
  },
});
