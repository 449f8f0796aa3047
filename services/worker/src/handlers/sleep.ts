import { abortable, type TaskHandler } from './types';

/** Waits `ms`, reporting progress; stops early when cancelled. */
export const sleep: TaskHandler<'sleep'> = {
  type: 'sleep',
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
};
