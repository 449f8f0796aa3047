import { defineTaskType, jsonValueSchema } from '@taskbox/shared';

/** Returns its payload: the smallest possible task, used by tests and the benchmark. */
export const echo = defineTaskType({
  name: 'echo',
  payload: jsonValueSchema,
  run: async ({ payload }) => payload,
});
