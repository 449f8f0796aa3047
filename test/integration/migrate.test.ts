import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { createDatabaseIfMissing } from '@taskbox/shared';
import { adminUrl } from '../helpers/db';

describe('npm run migrate creating its database', () => {
  const name = `taskbox_migrate_${randomBytes(6).toString('hex')}`;
  const url = new URL(adminUrl());
  url.pathname = `/${name}`;

  afterAll(async () => {
    const client = new pg.Client({ connectionString: adminUrl() });
    await client.connect();
    await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await client.end();
  });

  it('creates a missing database once when several runs race, and none of them fails', async () => {
    const created = await Promise.all(Array.from({ length: 6 }, () => createDatabaseIfMissing(url.toString())));
    expect(created.filter(Boolean)).toEqual([true]);
    expect(await createDatabaseIfMissing(url.toString())).toBe(false);
  });

  it('refuses a URL that names no database, saying so', async () => {
    const bare = new URL(adminUrl());
    bare.pathname = '/';
    await expect(createDatabaseIfMissing(bare.toString())).rejects.toThrow(/names no database/);
  });
});
