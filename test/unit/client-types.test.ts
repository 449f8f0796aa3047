import type { z } from 'zod';
import type { ListFilter, NewTask, Problem, StreamToken, TaskList, TaskView } from '@taskbox/client';
import { taskStatuses as clientStatuses } from '@taskbox/client';
import { taskStatuses } from '@taskbox/shared';
import type {
  createTaskSchema,
  listQuerySchema,
  problemSchema,
  streamTokenSchema,
  taskListSchema,
} from '../../services/api/src/schemas';
import type { taskViewSchema } from '../../services/api/src/task-view';

// True only when A and B are the same type (mutually assignable is not enough: optional vs required differ).
type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

/**
 * The client writes the contract out as plain types (no zod at run time in a browser). The type checks
 * below stop `npm run typecheck` (jest only transpiles) when the api's schemas change and the client's
 * types do not; the statuses are also compared at run time.
 */
describe('@taskbox/client types are the api’s contract', () => {
  it('match the zod schemas the api validates and answers with', () => {
    const checks: true[] = [
      true satisfies Same<TaskView, z.output<typeof taskViewSchema>>,
      true satisfies Same<TaskList, z.output<typeof taskListSchema>>,
      true satisfies Same<StreamToken, z.output<typeof streamTokenSchema>>,
      true satisfies Same<NewTask, z.input<typeof createTaskSchema>>,
      // listTasks pages with the cursor itself, and writes a Date filter as its ISO string.
      true satisfies Same<keyof ListFilter | 'cursor', keyof z.input<typeof listQuerySchema>>,
      // Problem is loose in zod (extra members pass); the client names the known ones.
      true satisfies Same<Problem, z.output<z.ZodObject<(typeof problemSchema)['shape']>>>,
    ];
    expect(checks.every(Boolean)).toBe(true);
  });

  it('list the same statuses', () => {
    expect([...clientStatuses]).toEqual([...taskStatuses]);
  });
});
