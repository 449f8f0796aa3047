import { amqpTopology, consumedQueues, loadConfig, queueOfType } from '@taskbox/shared';
import { taskTypeList } from '@taskbox/tasks';
import { environment, loadCompose, service } from '../helpers/compose-file';
import { loadManifests, onlyContainer, resolvedEnv } from '../helpers/deploy-files';

describe('queues per task type', () => {
  const topology = amqpTopology('p.', taskTypeList);

  it('puts each registered type on its queue, the default queue first under its old names', () => {
    expect(topology.exchange).toBe('p.tasks');
    expect(topology.queues).toEqual([
      {
        name: 'tasks',
        queue: 'p.tasks',
        exchange: 'p.tasks',
        deadExchange: 'p.tasks.dlx',
        deadQueue: 'p.tasks.dead',
        types: ['echo', 'sleep', 'flaky'],
      },
      {
        name: 'reports',
        queue: 'p.reports',
        exchange: 'p.tasks',
        deadExchange: 'p.reports.dlx',
        deadQueue: 'p.reports.dead',
        types: ['report'],
      },
    ]);
    expect(queueOfType(topology, 'report')?.name).toBe('reports');
    expect(queueOfType(topology, 'pdf')).toBeUndefined();
  });

  it('keeps the default queue when no type uses it', () => {
    expect(amqpTopology('', [{ name: 'report', queue: 'reports' }]).queues.map((q) => [q.name, q.types])).toEqual([
      ['tasks', []],
      ['reports', ['report']],
    ]);
  });

  it('refuses type names that are topic wildcards and queue names that would collide', () => {
    expect(() => amqpTopology('', [{ name: 'mail.*', queue: 'tasks' }])).toThrow(/mail\.\*/);
    expect(() => amqpTopology('', [{ name: 'a', queue: 'tasks.dead' }])).toThrow(/queue "tasks.dead"/);
    expect(() => amqpTopology('', [{ name: 'a', queue: 'default' }])).toThrow(/not "default"/);
  });

  it('lists retired queues apart, declaring none, and refuses one a type still uses', () => {
    const moved = amqpTopology('p.', [{ name: 'report', queue: 'tasks' }], ['reports']);
    expect(moved.queues.map((q) => q.name)).toEqual(['tasks']);
    expect(moved.retired).toEqual([
      { name: 'reports', queue: 'p.reports', deadExchange: 'p.reports.dlx', deadQueue: 'p.reports.dead' },
    ]);
    expect(() => amqpTopology('', taskTypeList, ['reports'])).toThrow(/retired queue "reports" is still/);
    expect(() => amqpTopology('', taskTypeList, ['tasks'])).toThrow(/retired queue "tasks" is still/);
  });

  it('parses WORKER_QUEUES into queues with a prefetch each, `default` and `tasks` naming the default queue', () => {
    const { WORKER_QUEUES } = loadConfig({ WORKER_QUEUES: 'reports:2, default:20' });
    expect(WORKER_QUEUES).toEqual([
      { queue: 'reports', prefetch: 2 },
      { queue: 'default', prefetch: 20 },
    ]);
    const picked = consumedQueues(topology, WORKER_QUEUES, 7);
    expect(picked.map((q) => [q.route.queue, q.prefetch])).toEqual([
      ['p.reports', 2],
      ['p.tasks', 20],
    ]);
    expect(consumedQueues(topology, [{ queue: 'tasks', prefetch: 3 }], 7).map((q) => q.route.queue)).toEqual([
      'p.tasks',
    ]);
  });

  it('consumes every queue with WORKER_PREFETCH when WORKER_QUEUES is unset', () => {
    expect(consumedQueues(topology, undefined, 7).map((q) => [q.route.name, q.prefetch])).toEqual([
      ['tasks', 7],
      ['reports', 7],
    ]);
  });

  it('refuses a malformed WORKER_QUEUES, an unknown queue and a queue named twice', () => {
    for (const bad of ['reports', 'reports:0', 'reports:2,', 'a b:1', 'reports:5000']) {
      expect(() => loadConfig({ WORKER_QUEUES: bad })).toThrow(/WORKER_QUEUES/);
    }
    expect(() => consumedQueues(topology, [{ queue: 'pdf', prefetch: 1 }], 7)).toThrow(
      /no task type uses queue "pdf" \(queues: tasks, reports\)/,
    );
    const twice = [
      { queue: 'default', prefetch: 1 },
      { queue: 'tasks', prefetch: 2 },
    ];
    expect(() => consumedQueues(topology, twice, 7)).toThrow(/"tasks" is named twice/);
  });

  it('gives the compose and deploy workers a WORKER_QUEUES that names only queues the types use', () => {
    const compose = Object.fromEntries(environment(service(loadCompose().file, 'worker')));
    const manifest = loadManifests().find(
      (m) => m.doc.metadata.name === 'taskbox-worker' && m.doc.kind === 'Deployment',
    );
    const secret = { DATABASE_URL: 'postgres://db/taskbox', AMQP_URLS: 'amqp://rabbit' };
    const deployed = resolvedEnv(onlyContainer(manifest!), secret);
    for (const env of [compose, deployed]) {
      const { WORKER_QUEUES } = loadConfig(env);
      expect(consumedQueues(topology, WORKER_QUEUES, 1).map((q) => [q.route.name, q.prefetch])).toEqual([
        ['reports', 2],
        ['tasks', 20],
      ]);
    }
  });
});
