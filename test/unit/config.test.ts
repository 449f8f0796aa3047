import { configSchema, loadConfig, redactUrl } from '@taskbox/shared';

describe('config', () => {
  it('uses the documented defaults (README, Configuration) when nothing is set', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/taskbox',
      AMQP_URL: 'amqp://guest:guest@127.0.0.1:5672',
      AMQP_PREFIX: '',
      LOG_FORMAT: 'json',
      PORT: 3000,
    });
    expect(config.HEALTH_PORT).toBeUndefined();
  });

  it('treats an empty variable as unset', () => {
    expect(loadConfig({ PORT: '' }).PORT).toBe(3000);
  });

  it('names every bad variable in one error', () => {
    expect.assertions(3);
    try {
      loadConfig({ PORT: 'eighty', RELAY_BATCH_SIZE: '0', LOG_FORMAT: 'xml' });
    } catch (err) {
      const message = (err as Error).message;
      for (const name of ['PORT', 'RELAY_BATCH_SIZE', 'LOG_FORMAT']) expect(message).toContain(`${name}:`);
    }
  });

  it('refuses a URL of the wrong kind, naming what it wants', () => {
    expect(() => loadConfig({ DATABASE_URL: 'mysql://u@db/x' })).toThrow(
      /DATABASE_URL: a postgres:\/\/ or postgresql:\/\/ URL/,
    );
    // pg's socket: form would break npm run migrate, which names the database from the URL's path: the
    // message gives the form that works everywhere.
    expect(() => loadConfig({ DATABASE_URL: 'socket:/var/run/postgresql?db=taskbox' })).toThrow(/\?host=\/var\/run/);
    expect(loadConfig({ DATABASE_URL: 'postgres://u@localhost/taskbox?host=/var/run/postgresql' }).DATABASE_URL).toBe(
      'postgres://u@localhost/taskbox?host=/var/run/postgresql',
    );
    expect(() => loadConfig({ AMQP_URL: 'http://localhost:15672' })).toThrow(
      /AMQP_URL: an amqp:\/\/ or amqps:\/\/ URL/,
    );
    expect(loadConfig({ DATABASE_URL: 'postgresql://u@db/x', AMQP_URL: 'amqps://b:5671' })).toMatchObject({
      DATABASE_URL: 'postgresql://u@db/x',
      AMQP_URL: 'amqps://b:5671',
    });
  });

  it('rejects an AMQP_PREFIX that would make odd broker names', () => {
    expect(() => loadConfig({ AMQP_PREFIX: 'a b' })).toThrow(/AMQP_PREFIX/);
  });

  it('lists the documented env names in its schema', () => {
    const keys = Object.keys(configSchema.shape);
    for (const name of ['DATABASE_URL', 'AMQP_URL', 'AMQP_PREFIX', 'LOG_LEVEL', 'LOG_FORMAT', 'PORT']) {
      expect(keys).toContain(name);
    }
    for (const name of ['RELAY_BATCH_SIZE', 'RELAY_POLL_MS', 'WORKER_PREFETCH', 'HEALTH_PORT']) {
      expect(keys).toContain(name);
    }
  });

  it('refuses HTTP limits the api could not run with', () => {
    expect(() => loadConfig({ HTTP_HEADERS_TIMEOUT_MS: '40000' })).toThrow(/HTTP_HEADERS_TIMEOUT_MS/);
    expect(() => loadConfig({ LONG_POLL_MAX: '5000', HTTP_MAX_CONNECTIONS: '5000' })).toThrow(/LONG_POLL_MAX/);
    expect(loadConfig({ HTTP_HEADERS_TIMEOUT_MS: '500', HTTP_REQUEST_TIMEOUT_MS: '1000' })).toMatchObject({
      HTTP_HEADERS_TIMEOUT_MS: 500,
      HTTP_REQUEST_TIMEOUT_MS: 1000,
    });
  });

  it('refuses a SCHEDULE_MAX_AHEAD_MS that would let a task be due past the year 9999', () => {
    expect(() => loadConfig({ SCHEDULE_MAX_AHEAD_MS: '9000000000000000' })).toThrow(/SCHEDULE_MAX_AHEAD_MS:/);
    expect(loadConfig({ SCHEDULE_MAX_AHEAD_MS: String(100 * 365 * 86_400_000) }).SCHEDULE_MAX_AHEAD_MS).toBe(
      100 * 365 * 86_400_000,
    );
  });

  it('refuses a wait longer than a Node timer takes, which would fire after 1 ms, and a statement timeout Postgres refuses', () => {
    for (const name of ['SHUTDOWN_TIMEOUT_MS', 'RELAY_POLL_MS', 'STREAM_HEARTBEAT_MS', 'WORKER_LEASE_MS']) {
      expect(() => loadConfig({ [name]: '3000000000' })).toThrow(new RegExp(`${name}: at most 2147483647`));
      expect(loadConfig({ [name]: '2147483647' })[name as 'SHUTDOWN_TIMEOUT_MS']).toBe(2147483647);
    }
    expect(() => loadConfig({ DB_STATEMENT_TIMEOUT_MS: '1100000000' })).toThrow(/DB_STATEMENT_TIMEOUT_MS: at most/);
  });

  it('never prints a password', () => {
    expect(redactUrl('amqp://guest:secret@host:5672')).toBe('amqp://guest:***@host:5672');
    expect(redactUrl('postgres://u:p%40ss@db/x')).not.toContain('p%40ss');
    expect(redactUrl('postgres://u@/x?host=/run/pg&password=hunter2')).not.toContain('hunter2');
  });
});
