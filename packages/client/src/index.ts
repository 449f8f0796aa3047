export { createClient } from './client.js';
export type { CreateOptions, ListFilter, RetryOptions, TaskboxClient, WaitOptions } from './client.js';
export type { ClientError, Result } from './errors.js';
export type { ClientOptions } from './http.js';
export { isTerminal, taskStatuses } from './types.js';
export type {
  CreateTaskInput,
  JsonValue,
  NewTask,
  Problem,
  StreamToken,
  TaskList,
  TaskStatus,
  TaskView,
  TimelineEvent,
} from './types.js';
export type { WatchOptions } from './watch.js';
