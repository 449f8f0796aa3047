import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import request from 'supertest';
import { closeServer, loadConfig } from '@taskbox/shared';
import { authStartProblem } from '../../services/api/src/auth';
import { startTestApi, type TestApi } from '../helpers/api';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { startService } from '../helpers/services';
import { waitFor } from '../helpers/wait';

const SECRET = 'a-test-secret-that-is-at-least-32-chars';
const PROBLEM = /^application\/problem\+json/;

function hs256(sub: string, audience = 'taskbox', secret = SECRET): Promise<string> {
  return new SignJWT({})
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setIssuer('https://issuer.test')
    .setAudience(audience)
    .setExpirationTime('5m')
    .sign(new TextEncoder().encode(secret));
}

/** Asserts that alice's task is hers alone: bob gets 404 for it and never sees it listed. */
async function expectOwnersApart(api: TestApi, alice: string, bob: string): Promise<void> {
  const created = await request(api.app).post('/tasks').set('authorization', alice).send({ type: 'echo' });
  expect(created.status).toBe(202);
  const id = created.body.id as string;
  expect((await request(api.app).get(`/tasks/${id}`).set('authorization', alice)).status).toBe(200);
  expect((await request(api.app).get(`/tasks/${id}`).set('authorization', bob)).status).toBe(404);
  expect((await request(api.app).post(`/tasks/${id}/cancel`).set('authorization', bob)).status).toBe(404);
  const bobs = await request(api.app).get('/tasks').set('authorization', bob);
  expect(bobs.body.items.map((t: { id: string }) => t.id)).not.toContain(id);
  const alices = await request(api.app).get('/tasks').set('authorization', alice);
  expect(alices.body.items.map((t: { id: string }) => t.id)).toContain(id);
}

describe('api auth: off by default', () => {
  let api: TestApi;
  beforeAll(async () => {
    api = await startTestApi();
  });
  afterAll(async () => {
    await api.close();
  });

  it('gives every caller, with or without a token, the one anonymous owner', async () => {
    const created = await request(api.app).post('/tasks').send({ type: 'echo' });
    const withToken = await request(api.app).get(`/tasks/${created.body.id}`).set('authorization', 'Bearer whatever');
    expect(withToken.status).toBe(200);
    const row = await api.database.db.selectFrom('tasks').select('owner').executeTakeFirstOrThrow();
    expect(row.owner).toBe('anonymous');
  });
});

describe('api auth: static tokens from AUTH_TOKENS', () => {
  let api: TestApi;
  beforeAll(async () => {
    const config = loadConfig({ AUTH_TOKENS: 'tok-alice:alice, tok-bob:bob' });
    api = await startTestApi({ auth: config });
  });
  afterAll(async () => {
    await api.close();
  });

  it('answers 401 problem+json with WWW-Authenticate for a missing or unknown token', async () => {
    for (const header of [undefined, 'Bearer nope', 'Basic dG9rLWFsaWNlOg==', 'Bearer tok-alice2']) {
      const req = request(api.app).get('/tasks');
      const res = await (header ? req.set('authorization', header) : req);
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
      expect(res.headers['content-type']).toMatch(PROBLEM);
    }
  });

  it('keeps each owner’s tasks apart', async () => {
    await expectOwnersApart(api, 'Bearer tok-alice', 'Bearer tok-bob');
  });

  it('leaves health and the OpenAPI document open', async () => {
    for (const path of ['/healthz', '/openapi.json']) expect((await request(api.app).get(path)).status).toBe(200);
  });
});

describe('api auth: HS256 JWT from AUTH_JWT_SECRET, owner = jwt:<sub>', () => {
  let api: TestApi;
  beforeAll(async () => {
    const config = loadConfig({
      AUTH_JWT_SECRET: SECRET,
      AUTH_JWT_ISSUER: 'https://issuer.test',
      AUTH_JWT_AUDIENCE: 'taskbox',
    });
    api = await startTestApi({ auth: config });
  });
  afterAll(async () => {
    await api.close();
  });

  it('keeps each subject’s tasks apart', async () => {
    await expectOwnersApart(api, `Bearer ${await hs256('alice')}`, `Bearer ${await hs256('bob')}`);
  });

  it('refuses a token signed with another secret, expired, for another audience, without a subject or without exp', async () => {
    const tokens = [
      await hs256('alice', 'taskbox', 'another-secret-that-is-32-chars-long!!'),
      await new SignJWT({})
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject('alice')
        .setIssuer('https://issuer.test')
        .setAudience('taskbox')
        .setExpirationTime(Math.floor(Date.now() / 1000) - 60)
        .sign(new TextEncoder().encode(SECRET)),
      await hs256('alice', 'someone-else'),
      await new SignJWT({})
        .setProtectedHeader({ alg: 'HS256' })
        .setIssuer('https://issuer.test')
        .setAudience('taskbox')
        .setExpirationTime('5m')
        .sign(new TextEncoder().encode(SECRET)),
      // Valid in every way but one: it never expires.
      await new SignJWT({})
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject('alice')
        .setIssuer('https://issuer.test')
        .setAudience('taskbox')
        .sign(new TextEncoder().encode(SECRET)),
    ];
    for (const token of tokens) {
      const res = await request(api.app).get('/tasks').set('authorization', `Bearer ${token}`);
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toBe('Bearer error="invalid_token"');
    }
  });
});

describe('api auth: static tokens and JWTs together', () => {
  let api: TestApi;
  beforeAll(async () => {
    api = await startTestApi({ auth: loadConfig({ AUTH_TOKENS: 'tok-alice:alice', AUTH_JWT_SECRET: SECRET }) });
  });
  afterAll(async () => {
    await api.close();
  });

  it('keeps a token owner and a JWT subject of the same name apart', async () => {
    const jwtAlice = `Bearer ${await hs256('alice')}`;
    await expectOwnersApart(api, 'Bearer tok-alice', jwtAlice);
    await expectOwnersApart(api, jwtAlice, 'Bearer tok-alice');
    // README's upgrade note rewrites existing JWT rows to this form.
    const owners = await api.database.db.selectFrom('tasks').select('owner').distinct().execute();
    expect(owners.map((r) => r.owner).sort()).toEqual(['alice', 'jwt:alice']);
  });
});

describe('api auth: JWT verified against AUTH_JWKS_URL', () => {
  let api: TestApi;
  let jwks: http.Server;
  let sign: (sub: string, audience?: string) => Promise<string>;

  beforeAll(async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    jwks = http.createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));
    sign = (sub, audience = 'taskbox') =>
      new SignJWT({})
        .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
        .setSubject(sub)
        .setIssuer('https://id.example')
        .setAudience(audience)
        .setExpirationTime('5m')
        .sign(privateKey);
    const url = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/.well-known/jwks.json`;
    const auth = { AUTH_JWKS_URL: url, AUTH_JWT_ISSUER: 'https://id.example', AUTH_JWT_AUDIENCE: 'taskbox' };
    api = await startTestApi({ auth: loadConfig(auth) });
  });
  afterAll(async () => {
    await api.close();
    await closeServer(jwks);
  });

  it('keeps each subject’s tasks apart', async () => {
    await expectOwnersApart(api, `Bearer ${await sign('alice')}`, `Bearer ${await sign('bob')}`);
  });

  it('refuses a token the same provider signed for another app', async () => {
    const res = await request(api.app)
      .get('/tasks')
      .set('authorization', `Bearer ${await sign('alice', 'another-app')}`);
    expect(res.status).toBe(401);
  });

  it('refuses to start on a key set without an issuer and an audience, or over plain http from another host', () => {
    expect(authStartProblem(loadConfig({ AUTH_JWKS_URL: 'https://id.example/jwks' }))).toMatch(
      /AUTH_JWKS_URL needs AUTH_JWT_ISSUER and AUTH_JWT_AUDIENCE/,
    );
    const named = { AUTH_JWT_ISSUER: 'https://id.example', AUTH_JWT_AUDIENCE: 'taskbox' };
    expect(authStartProblem(loadConfig({ ...named, AUTH_JWKS_URL: 'http://id.example/jwks' }))).toMatch(
      /must be https/,
    );
    for (const url of [
      'http://127.0.0.1:8080/jwks',
      'http://localhost/jwks',
      'http://[::1]/jwks',
      'https://id.example/jwks',
    ]) {
      expect([url, authStartProblem(loadConfig({ ...named, AUTH_JWKS_URL: url }))]).toEqual([url, undefined]);
    }
  });

  it('refuses an HS256 token when the keys come from a JWKS', async () => {
    const res = await request(api.app)
      .get('/tasks')
      .set('authorization', `Bearer ${await hs256('alice')}`);
    expect(res.status).toBe(401);
  });
});

describe('auth configuration', () => {
  it('names each bad variable', () => {
    expect(() => loadConfig({ AUTH_TOKENS: 'no-owner', AUTH_JWT_SECRET: 'short' })).toThrow(
      /AUTH_TOKENS[\s\S]*AUTH_JWT_SECRET: at least 32 characters/,
    );
    expect(() => loadConfig({ AUTH_JWT_SECRET: SECRET, AUTH_JWKS_URL: 'https://id.test/jwks' })).toThrow(
      /AUTH_JWKS_URL: set AUTH_JWT_SECRET or AUTH_JWKS_URL, not both/,
    );
  });

  it('refuses a static token owner named "anonymous", which would see the tasks made while auth was off', () => {
    expect(() => loadConfig({ AUTH_TOKENS: 'tok-a:alice,tok-b:anonymous' })).toThrow(/AUTH_TOKENS: "anonymous"/);
  });
});

describe('api start under NODE_ENV=production (the Docker image), as a process', () => {
  let database: TestDatabase;
  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database.drop();
  });

  it('exits 1 without any auth setting, naming the settings that would let it start', async () => {
    const api = startService('api', { NODE_ENV: 'production', DATABASE_URL: database.url });
    const closed = once(api.child, 'close');
    try {
      await waitFor('the api to exit', () => api.child.exitCode !== null, 10_000);
      await closed;
    } finally {
      await api.kill();
    }
    expect(api.child.exitCode).toBe(1);
    const output = api.text.join('\n');
    for (const name of ['AUTH_TOKENS', 'AUTH_JWT_SECRET', 'AUTH_JWKS_URL', 'AUTH_DISABLED']) {
      expect(output).toContain(name);
    }
  });

  it('serves without auth when AUTH_DISABLED=true says so, and asks for a token when one is set', async () => {
    const runs: { env: Record<string, string>; status: number }[] = [
      { env: { AUTH_DISABLED: 'true' }, status: 200 },
      { env: { AUTH_TOKENS: 'tok-alice:alice' }, status: 401 },
    ];
    for (const { env, status } of runs) {
      const api = startService('api', { NODE_ENV: 'production', DATABASE_URL: database.url, ...env });
      try {
        const res = await fetch(`http://127.0.0.1:${await api.port()}/tasks`);
        expect([env, res.status]).toEqual([env, status]);
      } finally {
        await api.stop();
      }
    }
  });
});
