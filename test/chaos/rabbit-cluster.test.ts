import { amqpNames } from '@taskbox/shared';
import { reportLine, runReport, startLoad, troubles } from '../helpers/fault-run';
import { startRabbitCluster, type RabbitCluster } from '../helpers/rabbit-cluster';
import { startSystem, type System } from '../helpers/system';
import { waitFor } from '../helpers/wait';

const TASKS = 1000;
const LOAD_MS = 20_000;

/**
 * A 3-node RabbitMQ cluster (extra local nodes, not the machine's broker) under a steady load of 1 000
 * tasks: the node that leads the `tasks` quorum queue is killed with -9 and then started again. The
 * queue elects a new leader among the two left, the services fail over through AMQP_URLS, and an
 * unconfirmed publish is published again: nothing may be lost or run twice, and the api never notices.
 */
describe('RabbitMQ cluster', () => {
  let cluster: RabbitCluster | undefined;
  let system: System | undefined;
  let passed = false;

  afterAll(async () => {
    if (!passed) console.log(`the services' warnings and errors:\n${troubles(system?.services ?? [])}`);
    await system?.stop();
    await cluster?.stop();
  }, 120_000);

  it('loses no task and runs none twice when the leader of the tasks queue is killed -9 and restarted', async () => {
    cluster = await startRabbitCluster(3);
    // The reconciler keeps its default (5 min): a publish the broker lost would leave its task unfinished.
    system = await startSystem({ AMQP_URLS: cluster.urls.join(','), WORKER_PREFETCH: '50' });
    const api = await system.start('api');
    const relay = await system.start('relay');
    const worker = await system.start('worker');
    const queue = amqpNames(system.prefix).queue;
    expect((await cluster.quorumStatus(queue)).map((m) => m.state).sort()).toEqual(['follower', 'follower', 'leader']);

    const load = startLoad(`http://127.0.0.1:${await api.port()}`, TASKS, LOAD_MS);
    await waitFor('a third of the tasks accepted', () => load.accepted.length >= TASKS / 3, LOAD_MS * 2);
    const leader = await cluster.leaderOf(queue);
    await cluster.kill(leader);
    const killedAt = Date.now();
    const newLeader = await waitFor('another node to lead the queue', async () => {
      const l = await cluster!.leaderOf(queue);
      return l.name !== leader.name ? l : null;
    });
    const leaderSeenS = (Date.now() - killedAt) / 1000;
    await waitFor('tasks submitted after the kill to succeed', async () => {
      const row = await system!.database.db
        .selectFrom('tasks')
        .select('id')
        .where('status', '=', 'succeeded')
        .where('created_at', '>', new Date(killedAt + 1000))
        .executeTakeFirst();
      return row !== undefined;
    });
    await cluster.restart(leader);
    await waitFor('the restarted node to follow the queue again', async () => {
      const members = await cluster!.quorumStatus(queue);
      return members.find((m) => m.node === leader.name)?.state === 'follower';
    });

    await load.done;
    await system.waitForTerminal(load.accepted, 120_000);
    const report = await runReport(system.database.db, load, system.logs);
    const failedOver = [relay, worker].filter((s) =>
      s.logs.some((l) => l.message === 'rabbitmq connection lost; reconnecting'),
    );
    console.log(
      reportLine('rabbitmq leader kill -9', report, {
        killed: leader.name,
        'new leader': newLeader.name,
        'new leader seen after s': leaderSeenS.toFixed(2),
        'services failed over': failedOver.map((s) => s.name).join('+') || 'none',
        'channels replaced after nacks': relay.logs.filter((l) => /nacked/.test(String(l.reason))).length,
      }),
    );

    expect(load.others).toEqual([]);
    expect(report.api503).toBe(0);
    expect(report.lost).toBe(0);
    expect(report.unfinished).toBe(0);
    expect(report.succeeded).toBe(TASKS);
    expect(report.doubleRun).toBe(0);
    passed = true;
  }, 300_000);
});
