import type { TaskTypeDefinition } from '@taskbox/shared';
import { echo } from './echo';
import { flaky } from './flaky';
import { report } from './report';
import { sleep } from './sleep';

/**
 * Every task type taskbox runs. Adding one: a file next to these (README, "Adding a task type"),
 * then its name in this list. The api validates requests against it; the worker runs it.
 */
export const taskTypeList = [echo, sleep, flaky, report] as const;

export type TaskType = (typeof taskTypeList)[number]['name'];
export type AnyTaskType = TaskTypeDefinition<TaskType>;

const byName = new Map<string, AnyTaskType>(taskTypeList.map((t) => [t.name, t as AnyTaskType]));
// Two files with one name would route the name to both their queues and run whichever loaded last.
if (byName.size !== taskTypeList.length) throw new Error('two task types in taskTypeList have the same name');

export const taskTypeNames = taskTypeList.map((t) => t.name) as TaskType[];

/** The definition of a registered type, or undefined for a name no file defines. */
export function findTaskType(name: string): AnyTaskType | undefined {
  return byName.get(name);
}

export function isTaskType(name: string): name is TaskType {
  return byName.has(name);
}

// Last: enqueue.ts reads the list above.
export {
  enqueueTask,
  InvalidTaskError,
  type EnqueueRequest,
  type Enqueued,
  type Executor,
  type PgTransactionClient,
} from './enqueue';
