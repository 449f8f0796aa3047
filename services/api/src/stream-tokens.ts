import { randomBytes } from 'node:crypto';
import { SignJWT, jwtVerify } from 'jose';

/**
 * What a stream token opens: one task's stream, or (task null) every stream its caller may open; an
 * admin's token opens other owners' streams as the admin could.
 */
export interface StreamScope {
  owner: string;
  admin: boolean;
  task: string | null;
}

export interface StreamTokens {
  issue(scope: StreamScope): Promise<{ token: string; expiresAt: Date }>;
  /** The token's scope; undefined when it is not one of ours or has expired. */
  verify(token: string): Promise<StreamScope | undefined>;
}

/** The audience of every stream token; a bearer check refuses it (auth.ts). */
export const STREAM_TOKEN_AUDIENCE = 'taskbox-stream';

/**
 * Short-lived HS256 tokens for EventSource, which cannot send an Authorization header; the token rides
 * in the URL (`?token=`), so it is scoped to one task or one owner's streams and expires quickly. It is
 * checked when a stream opens, and an open stream outlives it. Its key may not be the auth key, and a
 * bearer check refuses its audience, so a stream token can never pass as a bearer token. Without a configured secret each process draws its own, and a
 * token opens streams only on the process that issued it.
 */
export function createStreamTokens(secret: string | undefined, ttlMs: number): StreamTokens {
  const key = secret ? new TextEncoder().encode(secret) : new Uint8Array(randomBytes(32));
  return {
    async issue({ owner, admin, task }) {
      const expiresAt = new Date(Date.now() + ttlMs);
      const token = await new SignJWT({ ...(task ? { task } : {}), ...(admin ? { admin } : {}) })
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject(owner)
        .setAudience(STREAM_TOKEN_AUDIENCE)
        .setExpirationTime(Math.floor(expiresAt.getTime() / 1000))
        .sign(key);
      return { token, expiresAt };
    },
    async verify(token) {
      try {
        // exp required: the api always sets it, and a token without one, signed by whoever holds the
        // key, would open streams for ever.
        const { payload } = await jwtVerify(token, key, {
          algorithms: ['HS256'],
          audience: STREAM_TOKEN_AUDIENCE,
          requiredClaims: ['exp'],
        });
        if (typeof payload.sub !== 'string') return undefined;
        const task = typeof payload.task === 'string' ? payload.task : null;
        return { owner: payload.sub, admin: payload.admin === true, task };
      } catch {
        return undefined;
      }
    },
  };
}
