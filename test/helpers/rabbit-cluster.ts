import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { freePort, ownedTempDir, pidFromFile, runAs, signalAndWait, systemUser, type SystemUser } from './local-server';

const BIN = '/usr/lib/rabbitmq/bin';
const START_TIMEOUT_MS = 90_000;

export interface RabbitNode {
  /** Erlang node name, e.g. taskbox-1a2b-1@localhost. */
  name: string;
  /** AMQP port, on 127.0.0.1. */
  port: number;
  url: string;
}

export interface RabbitCluster {
  nodes: RabbitNode[];
  /** The nodes' URLs in order, for AMQP_URLS. */
  urls: string[];
  /** The members of a quorum queue and their Raft state, as `rabbitmq-queues quorum_status` reports them. */
  quorumStatus(queue: string): Promise<{ node: string; state: string }[]>;
  /** The node that leads a quorum queue. */
  leaderOf(queue: string): Promise<RabbitNode>;
  /** kill -9 of the node's Erlang VM, by the pid in its pid file. */
  kill(node: RabbitNode): Promise<void>;
  /** Starts a killed node again on its data directory; it rejoins the cluster by itself. */
  restart(node: RabbitNode): Promise<void>;
  /** Stops every node (SIGTERM by pid file, SIGKILL if it lingers) and deletes their directories. */
  stop(): Promise<void>;
}

interface NodeSpec extends RabbitNode {
  distPort: number;
  dir: string;
}

/** What every operation on the cluster needs: its nodes, and the CLI run as the rabbitmq user. */
interface Cluster {
  user: SystemUser;
  base: string;
  specs: NodeSpec[];
  cliEnv: Record<string, string>;
  ctl: Ctl;
}

type Ctl = (tool: string, args: string[]) => Promise<string>;

/**
 * Three (or `size`) RabbitMQ nodes from the machine's own rabbitmq-server, each with its own node name,
 * ports, config, mnesia, logs and pid file under a temp dir, clustered with join_cluster. They run as
 * the rabbitmq user, whose HOME holds the Erlang cookie the CLI needs. The shared broker is never touched.
 */
export async function startRabbitCluster(size = 3): Promise<RabbitCluster> {
  const cluster = await planCluster(size);
  try {
    await formCluster(cluster);
  } catch (err) {
    await stopNodes(cluster);
    throw err;
  }
  const specOf = (node: RabbitNode) => cluster.specs.find((s) => s.name === node.name)!;
  const status = (queue: string) => quorumStatus(cluster, queue);
  const nodes = cluster.specs.map(({ name, port, url }) => ({ name, port, url }));
  return {
    nodes,
    urls: nodes.map((n) => n.url),
    quorumStatus: status,
    async leaderOf(queue) {
      const leader = (await status(queue)).find((m) => m.state === 'leader');
      const node = nodes.find((n) => n.name === leader?.node);
      if (!node) throw new Error(`quorum queue ${queue} has no leader`);
      return node;
    },
    async kill(node) {
      const pid = nodePid(specOf(node));
      if (pid === null) throw new Error(`${node.name} is not running: nothing to kill`);
      await signalAndWait([pid], 'SIGKILL');
    },
    restart: (node) => restartNode(cluster, specOf(node)),
    stop: () => stopNodes(cluster),
  };
}

/** Names, free ports and directories for the nodes; nothing runs yet. */
async function planCluster(size: number): Promise<Cluster> {
  if (!existsSync(path.join(BIN, 'rabbitmq-server'))) throw new Error(`no rabbitmq-server under ${BIN}`);
  const user = systemUser('rabbitmq');
  const base = ownedTempDir(user, 'rabbit');
  const id = randomBytes(3).toString('hex');
  const ports = new Set<number>();
  const specs: NodeSpec[] = [];
  for (let i = 1; i <= size; i++) {
    const port = await freePort(ports);
    specs.push({
      name: `taskbox-${id}-${i}@localhost`,
      port,
      url: `amqp://guest:guest@127.0.0.1:${port}`,
      distPort: await freePort(ports),
      dir: path.join(base, `node${i}`),
    });
  }
  writeFileSync(path.join(base, 'env.conf'), '');
  const cliEnv = {
    PATH: '/usr/sbin:/usr/bin:/bin',
    HOME: user.home,
    ERL_EPMD_ADDRESS: '127.0.0.1',
    // Not /etc/rabbitmq/rabbitmq-env.conf, which names the shared broker.
    RABBITMQ_CONF_ENV_FILE: path.join(base, 'env.conf'),
  };
  const ctl: Ctl = (tool, args) => runAs(user, path.join(BIN, tool), args, cliEnv, START_TIMEOUT_MS);
  return { user, base, specs, cliEnv, ctl };
}

/** Starts every node, joins the others to the first, and checks that all of them run as one cluster. */
async function formCluster(cluster: Cluster): Promise<void> {
  const { specs, ctl } = cluster;
  for (const spec of specs) prepareNode(spec, cluster.user);
  await Promise.all(specs.map((spec) => startNode(cluster, spec)));
  const first = specs[0]!.name;
  for (const spec of specs.slice(1)) {
    for (const args of [['stop_app'], ['join_cluster', first], ['start_app']]) {
      await ctl('rabbitmqctl', ['-n', spec.name, '-q', ...args]);
    }
  }
  const status = JSON.parse(await ctl('rabbitmqctl', ['-n', first, '-q', 'cluster_status', '--formatter', 'json'])) as {
    running_nodes: string[];
  };
  if (status.running_nodes.length !== specs.length) {
    throw new Error(`RabbitMQ cluster formed with ${status.running_nodes.join(', ')}, not ${specs.length} nodes`);
  }
}

/** The pid in the node's pid file, if that process is this node and runs. */
function nodePid(spec: NodeSpec): number | null {
  return pidFromFile(path.join(spec.dir, 'pid'), spec.name);
}

async function quorumStatus(cluster: Cluster, queue: string): Promise<{ node: string; state: string }[]> {
  let lastError: unknown;
  for (const spec of cluster.specs.filter((s) => nodePid(s) !== null)) {
    try {
      const args = ['-n', spec.name, '-q', 'quorum_status', queue, '--formatter', 'json'];
      const rows = JSON.parse(await cluster.ctl('rabbitmq-queues', args)) as {
        'Node Name': string;
        'Raft State': string;
      }[];
      // A member on a node that is down reports ["nodedown", node] as its state.
      return rows.map((r) => ({ node: r['Node Name'], state: [r['Raft State']].flat()[0] ?? '' }));
    } catch (err) {
      lastError = err;
    }
  }
  throw new Error(`no running node answered quorum_status ${queue}: ${String(lastError)}`);
}

// A node killed with -9 and started again at once has failed once with node_not_running.
async function restartNode(cluster: Cluster, spec: NodeSpec): Promise<void> {
  let lastError: unknown;
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      return await startNode(cluster, spec);
    } catch (err) {
      lastError = err;
      const pid = nodePid(spec);
      if (pid !== null) await signalAndWait([pid], 'SIGKILL');
    }
  }
  throw new Error(`RabbitMQ node ${spec.name} did not start again: ${String(lastError)}`);
}

async function stopNodes(cluster: Cluster): Promise<void> {
  const pids = cluster.specs.map(nodePid).filter((p): p is number => p !== null);
  await signalAndWait(pids, 'SIGTERM');
  rmSync(cluster.base, { recursive: true, force: true });
}

/** The node's own config (its listener on 127.0.0.1), no plugins, and its directories. */
function prepareNode(spec: NodeSpec, user: SystemUser): void {
  for (const sub of ['', 'mnesia', 'log']) {
    mkdirSync(path.join(spec.dir, sub), { recursive: true });
  }
  writeFileSync(
    path.join(spec.dir, 'rabbitmq.conf'),
    `listeners.tcp.local = 127.0.0.1:${spec.port}\nloopback_users.guest = true\n`,
  );
  writeFileSync(path.join(spec.dir, 'enabled_plugins'), '[].\n');
  for (const sub of ['', 'mnesia', 'log', 'rabbitmq.conf', 'enabled_plugins']) {
    chownSync(path.join(spec.dir, sub), user.uid, user.gid);
  }
}

/**
 * Starts rabbitmq-server for one node and resolves once the broker runs. Its shell stays the parent of
 * the Erlang VM, so the child exiting means the node died: the error then quotes what it printed.
 */
async function startNode(cluster: Cluster, spec: NodeSpec): Promise<void> {
  const { user, cliEnv, ctl } = cluster;
  const outFile = path.join(spec.dir, 'server.out');
  const out = openSync(outFile, 'a');
  const child = spawn(path.join(BIN, 'rabbitmq-server'), [], {
    uid: user.uid,
    gid: user.gid,
    cwd: spec.dir,
    detached: true,
    stdio: ['ignore', out, out],
    env: {
      ...cliEnv,
      RABBITMQ_NODENAME: spec.name,
      RABBITMQ_NODE_PORT: String(spec.port),
      RABBITMQ_DIST_PORT: String(spec.distPort),
      RABBITMQ_CONFIG_FILE: path.join(spec.dir, 'rabbitmq.conf'),
      RABBITMQ_ADVANCED_CONFIG_FILE: path.join(spec.dir, 'advanced.config'),
      RABBITMQ_ENABLED_PLUGINS_FILE: path.join(spec.dir, 'enabled_plugins'),
      RABBITMQ_MNESIA_BASE: path.join(spec.dir, 'mnesia'),
      RABBITMQ_LOG_BASE: path.join(spec.dir, 'log'),
      RABBITMQ_PID_FILE: path.join(spec.dir, 'pid'),
      // Erlang distribution on loopback only, like the node's AMQP listener.
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
    },
  });
  closeSync(out);
  child.unref();
  let dead = false;
  child.once('exit', () => (dead = true));
  child.once('error', () => (dead = true));
  const failure = () => {
    const printed = readFileSync(outFile, 'utf8').split('\n').slice(-15).join('\n');
    return new Error(`RabbitMQ node ${spec.name} could not start:\n${printed}`);
  };
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (
    !(await ctl('rabbitmqctl', ['-n', spec.name, '-q', 'ping']).then(
      () => true,
      () => false,
    ))
  ) {
    if (dead || Date.now() > deadline) throw failure();
    await new Promise((r) => setTimeout(r, 500));
  }
  await ctl('rabbitmqctl', [
    '-n',
    spec.name,
    '-q',
    'await_startup',
    '--timeout',
    String(START_TIMEOUT_MS / 1000),
  ]).catch(() => {
    throw failure();
  });
}
