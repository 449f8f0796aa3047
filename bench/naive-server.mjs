// The naive dispatch, for comparison only (never part of taskbox): the api writes the task row and
// publishes to RabbitMQ itself, with no outbox. Two endpoints:
//   POST /commit-then-publish    commit the row, then publish and wait for the confirm;
//   POST /publish-before-commit  BEGIN, insert, publish + confirm, COMMIT (what an ORM session that
//                                dispatches inside its unit of work does).
// A consumer in this process looks each task up the moment its message arrives, as a worker would,
// and counts how often the row is not there yet. GET /stats returns the counts.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import amqp from 'amqplib';
import pg from 'pg';
import shared from '../packages/shared/dist/index.js';

const { amqpNames, amqpSocketOptions, assertTopology } = shared;
const names = amqpNames(process.env.AMQP_PREFIX);
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.PG_POOL_SIZE ?? 10) });
const connection = await amqp.connect(process.env.AMQP_URL, amqpSocketOptions);
const publishChannel = await connection.createConfirmChannel();
await assertTopology(publishChannel, names);
const stats = {};

const INSERT = `INSERT INTO tasks (id, type, payload, owner, correlation_id)
  VALUES ($1, 'echo', $2::jsonb, 'naive', $3) RETURNING *`;

function publish(task, variant) {
  const body = Buffer.from(JSON.stringify({ taskId: task.id, type: task.type, attempt: 1, variant }));
  return new Promise((resolve, reject) =>
    publishChannel.publish(
      names.exchange,
      task.type,
      body,
      { messageId: randomUUID(), persistent: true, mandatory: true, contentType: 'application/json' },
      (err) => (err ? reject(err) : resolve()),
    ),
  );
}

const variants = {
  async 'commit-then-publish'(payload) {
    const { rows } = await pool.query(INSERT, [randomUUID(), payload, randomUUID()]);
    await publish(rows[0], 'commit-then-publish');
    return rows[0];
  },
  async 'publish-before-commit'(payload) {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const { rows } = await client.query(INSERT, [randomUUID(), payload, randomUUID()]);
      await publish(rows[0], 'publish-before-commit');
      await client.query('COMMIT');
      return rows[0];
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  },
};

async function consume() {
  const ch = await connection.createChannel();
  await ch.prefetch(20);
  await ch.consume(names.queue, async (msg) => {
    const { taskId, variant } = JSON.parse(msg.content.toString());
    const { rowCount } = await pool.query('SELECT 1 FROM tasks WHERE id = $1', [taskId]);
    const counts = (stats[variant] ??= { found: 0, notFound: 0 });
    if (rowCount === 1) counts.found++;
    else counts.notFound++;
    // At shutdown the channel may already be closing; an unacked message is simply requeued.
    try {
      ch.ack(msg);
    } catch {
      return;
    }
  });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (d) => (data += d));
    req.on('end', () => resolve(data));
    req.on('error', reject);
  });
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.method === 'GET' && req.url === '/stats') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats));
      return;
    }
    const variant = variants[req.url.slice(1)];
    if (req.method !== 'POST' || !variant) {
      res.writeHead(404).end();
      return;
    }
    const body = JSON.parse(await readBody(req));
    const row = await variant(JSON.stringify(body.payload ?? {}));
    res.writeHead(202, { 'content-type': 'application/json' }).end(JSON.stringify(row));
  } catch (err) {
    res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err));
  }
});

await consume();
server.listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => {
  server.close();
  connection.close().finally(() => process.exit(0));
});
