import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler } from 'express';
import { createRemoteJWKSet, errors, jwtVerify, type JWTVerifyResult } from 'jose';
import { ANONYMOUS_OWNER, type Config, type TokenCaller } from '@taskbox/shared';
import { HttpProblem } from './problem';
import { STREAM_TOKEN_AUDIENCE } from './stream-tokens';
import type { Viewer } from './viewer';

export type AuthConfig = Pick<
  Config,
  'AUTH_TOKENS' | 'AUTH_JWT_SECRET' | 'AUTH_JWKS_URL' | 'AUTH_JWT_ISSUER' | 'AUTH_JWT_AUDIENCE' | 'AUTH_JWT_ADMIN_CLAIM'
>;

const AUTH_SETTINGS = ['AUTH_TOKENS', 'AUTH_JWT_SECRET', 'AUTH_JWKS_URL'] as const;

/**
 * Why the api must not start with these settings, or undefined. Without auth every caller is the one
 * anonymous owner and sees every task, so production takes an explicit AUTH_DISABLED=true for it;
 * AUTH_DISABLED=true next to a token setting is refused rather than guessing which one was meant.
 */
export function authStartProblem(
  config: Pick<
    Config,
    'NODE_ENV' | 'AUTH_DISABLED' | 'AUTH_JWT_ISSUER' | 'AUTH_JWT_AUDIENCE' | (typeof AUTH_SETTINGS)[number]
  >,
): string | undefined {
  const jwks = jwksProblem(config);
  if (jwks) return `AUTH_JWKS_URL ${jwks}`;
  const set = AUTH_SETTINGS.filter((key) => config[key] !== undefined);
  if (set.length > 0 && config.AUTH_DISABLED) return `AUTH_DISABLED=true contradicts ${set.join(' and ')}; unset one`;
  if (set.length === 0 && !config.AUTH_DISABLED && config.NODE_ENV === 'production') {
    const names = AUTH_SETTINGS.join(', ');
    return `NODE_ENV=production and none of ${names} set: set one, or AUTH_DISABLED=true to run without auth on purpose`;
  }
  return undefined;
}

/**
 * An identity provider's key set signs tokens for every app it serves: without an issuer and an
 * audience, a token it minted for another app (with that app's admin scope) would be accepted here.
 * The keys decide who is who, so they come over https, or plain http from this host only.
 */
function jwksProblem(config: Pick<Config, 'AUTH_JWKS_URL' | 'AUTH_JWT_ISSUER' | 'AUTH_JWT_AUDIENCE'>) {
  if (!config.AUTH_JWKS_URL) return undefined;
  if (!config.AUTH_JWT_ISSUER || !config.AUTH_JWT_AUDIENCE) {
    return "needs AUTH_JWT_ISSUER and AUTH_JWT_AUDIENCE: the provider's tokens for other apps would pass";
  }
  const url = new URL(config.AUTH_JWKS_URL);
  const loopback = ['localhost', '[::1]'].includes(url.hostname) || /^127\.\d+\.\d+\.\d+$/.test(url.hostname);
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback)) {
    return 'must be https (http only on this host)';
  }
  return undefined;
}

type Verify = (token: string) => Promise<Viewer | undefined>;

const digest = (token: string): Buffer => createHash('sha256').update(token).digest();

function staticTokens(tokens: Map<string, TokenCaller>): Verify {
  const known = [...tokens].map(([token, caller]) => [digest(token), caller] as const);
  // Constant-time compare of digests, all of one length: response timing reveals neither how much of a
  // token was right nor how long the tokens are.
  return async (token) => {
    const given = digest(token);
    return known.find(([t]) => timingSafeEqual(t, given))?.[1];
  };
}

/** Whether a claim holds `value`: a word of a space-separated string (OAuth's scope) or an array element. */
function claimHolds(claim: unknown, value: string): boolean {
  if (typeof claim === 'string') return claim.split(' ').includes(value);
  return Array.isArray(claim) && claim.includes(value);
}

function jwt(config: AuthConfig): Verify | undefined {
  // A token without exp would work forever once leaked.
  const options = { issuer: config.AUTH_JWT_ISSUER, audience: config.AUTH_JWT_AUDIENCE, requiredClaims: ['exp'] };
  let verifyJwt: (token: string) => Promise<JWTVerifyResult>;
  if (config.AUTH_JWT_SECRET) {
    const secret = new TextEncoder().encode(config.AUTH_JWT_SECRET);
    // Pinned: a token must not pick its own algorithm (RFC 8725 section 3.1).
    verifyJwt = (token) => jwtVerify(token, secret, { ...options, algorithms: ['HS256'] });
  } else if (config.AUTH_JWKS_URL) {
    // jose caches the key set and refetches it when a token names an unknown kid (key rotation).
    const keys = createRemoteJWKSet(new URL(config.AUTH_JWKS_URL));
    verifyJwt = (token) => jwtVerify(token, keys, options);
  } else return undefined;
  return async (token) => {
    try {
      const { payload } = await verifyJwt(token);
      if (typeof payload.sub !== 'string' || payload.sub.length === 0 || payload.sub.length > 200) return undefined;
      // A stream token is never a bearer token, whatever key signed it.
      if ([payload.aud].flat().includes(STREAM_TOKEN_AUDIENCE)) return undefined;
      const admin = config.AUTH_JWT_ADMIN_CLAIM;
      // Namespaced: a token owner has no ":", so a subject can never become a static token's owner.
      return {
        owner: `jwt:${payload.sub}`,
        admin: admin !== undefined && claimHolds(payload[admin.claim], admin.value),
      };
    } catch (err) {
      // A key set we cannot fetch is our outage, not the caller's bad token.
      if (err instanceof errors.JWKSTimeout || !(err instanceof errors.JOSEError)) {
        throw new HttpProblem(503, 'Service Unavailable', 'the token keys cannot be fetched; retry shortly');
      }
      return undefined;
    }
  };
}

/**
 * Sets res.locals.owner: a static token's owner (AUTH_TOKENS) or `jwt:<sub>` of a JWT (AUTH_JWT_SECRET
 * or AUTH_JWKS_URL); ANONYMOUS_OWNER when none is configured. res.locals.admin is true for a token
 * flagged `:admin` or a JWT with AUTH_JWT_ADMIN_CLAIM; never while auth is off, when there is one owner
 * anyway. A missing or invalid token is a 401 problem with WWW-Authenticate (RFC 6750 section 3).
 */
export function authenticate(config: AuthConfig): RequestHandler {
  const verifiers = [config.AUTH_TOKENS?.size ? staticTokens(config.AUTH_TOKENS) : undefined, jwt(config)].filter(
    (v): v is Verify => v !== undefined,
  );
  return async (req, res, next) => {
    if (verifiers.length === 0) {
      res.locals.owner = ANONYMOUS_OWNER;
      res.locals.admin = false;
      return next();
    }
    const token = /^Bearer ([\x21-\x7e]{1,4096})$/i.exec(req.get('authorization') ?? '')?.[1];
    for (const verify of token ? verifiers : []) {
      const caller = await verify(token as string);
      if (caller) {
        res.locals.owner = caller.owner;
        res.locals.admin = caller.admin;
        return next();
      }
    }
    res.setHeader('WWW-Authenticate', token ? 'Bearer error="invalid_token"' : 'Bearer');
    throw new HttpProblem(401, 'Unauthorized', 'send a valid bearer token in the Authorization header');
  };
}
