import { z } from 'zod';
import { abortable, defineTaskType } from '@taskbox/shared';

/** Waits `ms`, reporting progress; stops early when cancelled. */
export const sleep = defineTaskType({
  name: 'sleep',
  payload: z.object({ ms: z.number().int().min(0).max(3_600_000) }).strict(),
  async run({ payload, signal, step, progress }) {
    await step('sleeping');
    const halves = [Math.floor(payload.ms / 2), Math.ceil(payload.ms / 2)];
    for (const [i, ms] of halves.entries()) {
      await abortable(signal, (onAbort) => {
        return new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, ms);
          onAbort(() => clearTimeout(timer));
        });
      });
      await progress((i + 1) / halves.length);
    }
    return { sleptMs: payload.ms };
  },
});
