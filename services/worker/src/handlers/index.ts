import type { TaskType } from '@taskbox/shared';
import { echo } from './echo';
import { flaky } from './flaky';
import { sleep } from './sleep';
import type { TaskHandler } from './types';

/** Every task type the worker can run. A type the api accepts but this map lacks fails the task. */
export const handlers: { [T in TaskType]: TaskHandler<T> } = { echo, sleep, flaky };
