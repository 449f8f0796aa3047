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

/**
 * Queues no type uses any more. When a type moves to another queue (or its only type is removed), put
 * its old queue here until that queue is deleted: the relay and the worker unbind every type from it
 * (its old bindings would otherwise copy messages into a queue nobody consumes), and the doctor warns
 * while it still holds messages, to be re-driven or deleted by hand.
 */
export const retiredQueues: readonly string[] = [];

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
