import type { TaskHandler } from './types';

/** Returns its payload: the smallest possible task, used by tests and the benchmark. */
export const echo: TaskHandler<'echo'> = {
  type: 'echo',
  run: async ({ payload }) => payload,
};
