import type { TaskHandler } from './types';

/** Fails its first `failTimes` attempts, then succeeds: exercises retries and the failed state. */
export const flaky: TaskHandler<'flaky'> = {
  type: 'flaky',
  async run({ payload, attempt }) {
    if (attempt <= payload.failTimes) {
      throw new Error(payload.message ?? `flaky failure on attempt ${attempt} of ${payload.failTimes}`);
    }
    return { succeededOnAttempt: attempt };
  },
};
