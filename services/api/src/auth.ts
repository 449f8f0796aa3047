import { timingSafeEqual } from 'node:crypto';
import type { RequestHandler } from 'express';
import { createRemoteJWKSet, errors, jwtVerify, type JWTVerifyResult } from 'jose';
import type { Config } from '@taskbox/shared';
import { HttpProblem } from './problem';

/** With authentication off (the laptop default) every task belongs to this one owner. */
export const ANONYMOUS_OWNER = 'anonymous';

export type AuthConfig = Pick<
  Config,
  'AUTH_TOKENS' | 'AUTH_JWT_SECRET' | 'AUTH_JWKS_URL' | 'AUTH_JWT_ISSUER' | 'AUTH_JWT_AUDIENCE'
>;

type Verify = (token: string) => Promise<string | undefined>;

function staticTokens(tokens: Map<string, string>): Verify {
  const known = [...tokens].map(([token, owner]) => [Buffer.from(token), owner] as const);
  // Constant-time compare, so response timing does not reveal how much of a token was right.
  return async (token) => {
    const given = Buffer.from(token);
    return known.find(([t]) => t.length === given.length && timingSafeEqual(t, given))?.[1];
  };
}

function jwt(config: AuthConfig): Verify | undefined {
  const options = { issuer: config.AUTH_JWT_ISSUER, audience: config.AUTH_JWT_AUDIENCE };
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
      return typeof payload.sub === 'string' && payload.sub.length > 0 && payload.sub.length <= 200
        ? payload.sub
        : undefined;
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
 * Sets res.locals.owner: from a static token (AUTH_TOKENS) or a JWT's `sub` (AUTH_JWT_SECRET or
 * AUTH_JWKS_URL); ANONYMOUS_OWNER when none is configured. A missing or invalid token is a 401
 * problem with WWW-Authenticate (RFC 6750 section 3).
 */
export function authenticate(config: AuthConfig): RequestHandler {
  const verifiers = [config.AUTH_TOKENS?.size ? staticTokens(config.AUTH_TOKENS) : undefined, jwt(config)].filter(
    (v): v is Verify => v !== undefined,
  );
  return async (req, res, next) => {
    if (verifiers.length === 0) {
      res.locals.owner = ANONYMOUS_OWNER;
      return next();
    }
    const token = /^Bearer ([\x21-\x7e]{1,4096})$/i.exec(req.get('authorization') ?? '')?.[1];
    for (const verify of token ? verifiers : []) {
      const owner = await verify(token as string);
      if (owner) {
        res.locals.owner = owner;
        return next();
      }
    }
    res.setHeader('WWW-Authenticate', token ? 'Bearer error="invalid_token"' : 'Bearer');
    throw new HttpProblem(401, 'Unauthorized', 'send a valid bearer token in the Authorization header');
  };
}
