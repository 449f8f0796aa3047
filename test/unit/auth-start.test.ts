import { loadConfig } from '@taskbox/shared';
import { authStartProblem } from '../../services/api/src/auth';

const SECRET = 'a-test-secret-that-is-at-least-32-chars';
const problem = (env: Record<string, string>): string | undefined => authStartProblem(loadConfig(env));

describe('api start: production is not open by default', () => {
  it('refuses production without any auth setting, naming each one and the way out', () => {
    const message = problem({ NODE_ENV: 'production' });
    for (const name of ['AUTH_TOKENS', 'AUTH_JWT_SECRET', 'AUTH_JWKS_URL', 'AUTH_DISABLED=true']) {
      expect(message).toContain(name);
    }
  });

  it('starts in production with any one auth setting, or with AUTH_DISABLED=true', () => {
    const settings: Record<string, string>[] = [
      { AUTH_TOKENS: 'tok:alice' },
      { AUTH_JWT_SECRET: SECRET },
      { AUTH_JWKS_URL: 'https://id.example/jwks', AUTH_JWT_ISSUER: 'https://id.example', AUTH_JWT_AUDIENCE: 'taskbox' },
      { AUTH_DISABLED: 'true' },
    ];
    for (const auth of settings) {
      expect([auth, problem({ NODE_ENV: 'production', ...auth })]).toEqual([auth, undefined]);
    }
  });

  it('starts without auth outside production, as on a laptop', () => {
    const laptops: Record<string, string>[] = [{}, { NODE_ENV: 'development' }, { NODE_ENV: 'test' }];
    for (const env of laptops) {
      expect([env, problem(env)]).toEqual([env, undefined]);
    }
  });

  it('reads AUTH_DISABLED=false as false and rejects a value that is not a yes or a no', () => {
    expect(problem({ NODE_ENV: 'production', AUTH_DISABLED: 'false' })).toContain('AUTH_TOKENS');
    expect(() => loadConfig({ AUTH_DISABLED: 'sure' })).toThrow(/AUTH_DISABLED:/);
  });

  it('refuses a token listed twice, which would quietly take its last owner, and one no header can carry', () => {
    expect(() => loadConfig({ AUTH_TOKENS: 'same-token:alice,same-token:root:admin' })).toThrow(
      /AUTH_TOKENS: a token appears more than once/,
    );
    expect(() => loadConfig({ AUTH_TOKENS: 'tökén-1234:alice' })).toThrow(/AUTH_TOKENS: tokens of printable ASCII/);
    expect(loadConfig({ AUTH_TOKENS: 'token-a:jürgen,token-b:alice:admin' }).AUTH_TOKENS).toEqual(
      new Map([
        ['token-a', { owner: 'jürgen', admin: false }],
        ['token-b', { owner: 'alice', admin: true }],
      ]),
    );
  });

  it('refuses AUTH_DISABLED=true next to an auth setting, naming both, rather than guess which is meant', () => {
    expect(problem({ AUTH_DISABLED: 'true', AUTH_JWT_SECRET: SECRET })).toMatch(/AUTH_DISABLED=true.*AUTH_JWT_SECRET/);
  });
});
