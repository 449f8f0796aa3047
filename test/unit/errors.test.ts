import { errorJson, isDbUnavailable, mayHaveCommitted, toError } from '@taskbox/shared';

describe('errorJson, the failure as stored in tasks.error', () => {
  it('replaces the text Postgres refuses (NUL, unpaired surrogates) and keeps a paired one', () => {
    const stored = errorJson(new TypeError('a\u0000b \ud800 \udc00 \ud83d\ude00'));
    expect(stored).toEqual({ name: 'TypeError', message: 'a\ufffdb \ufffd \ufffd \ud83d\ude00' });
  });

  it('cuts a long name or message, saying how long it was, without leaving half a surrogate pair', () => {
    const stored = errorJson(
      Object.assign(new Error(`${'x'.repeat(8191)}\ud83d\ude00 and more`), { name: 'N'.repeat(300) }),
    );
    expect(stored.name).toBe(`${'N'.repeat(200)}… [cut: 300 characters in all]`);
    expect(stored.message).toBe(`${'x'.repeat(8191)}\ufffd… [cut: 8202 characters in all]`);
    expect(errorJson(new Error('y'.repeat(8192))).message).toBe('y'.repeat(8192));
  });

  it('describes an Error whose name or message throws when read, rather than throwing itself', () => {
    const err = new Error('x');
    Object.defineProperty(err, 'message', {
      get() {
        throw new Error('getter boom');
      },
    });
    const unprintable = {
      toString: () => {
        throw new Error('no');
      },
    };
    const named = Object.assign(new Error('y'), { name: unprintable });
    expect(errorJson(err)).toEqual({ name: 'Error', message: 'an error whose message throws when read' });
    expect(errorJson(named)).toEqual({ name: 'Error', message: 'y' });
  });

  it('describes thrown values that are not Errors, also those JSON cannot write', () => {
    const cycle: Record<string, unknown> = { n: 1 };
    cycle.self = cycle;
    expect(toError({ code: 7 }).message).toBe('{"code":7}');
    expect(toError('plain').message).toBe('plain');
    expect(toError(undefined).message).toBe('undefined');
    expect(toError(10n).message).toBe('10n');
    expect(toError(cycle).message).toMatch(/<ref \*1> \{ n: 1, self: \[Circular \*1\] \}/);
  });
});

describe('isDbUnavailable, "try again later" rather than "the request is wrong"', () => {
  const coded = (code: string) => Object.assign(new Error(code), { code });

  it('counts a database host that cannot be reached, whatever the way', () => {
    for (const code of ['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH']) {
      expect({ code, unavailable: isDbUnavailable(coded(code)) }).toEqual({ code, unavailable: true });
    }
  });

  it('counts a Unix socket whose file is gone (the server stopped), not any missing file', () => {
    const socketGone = Object.assign(new Error('connect ENOENT /run/postgresql/.s.PGSQL.5432'), {
      code: 'ENOENT',
      syscall: 'connect',
    });
    expect(isDbUnavailable(socketGone)).toBe(true);
    expect(isDbUnavailable(Object.assign(new Error('open'), { code: 'ENOENT', syscall: 'open' }))).toBe(false);
  });

  it('does not count a query Postgres refuses', () => {
    for (const code of ['22P02', '23505', '42601']) {
      expect({ code, unavailable: isDbUnavailable(coded(code)) }).toEqual({ code, unavailable: false });
    }
  });
});

describe('mayHaveCommitted, a connection that broke after the statement was sent', () => {
  const coded = (code: string, message = code) => Object.assign(new Error(message), { code });

  it('counts a reset, a terminated backend and a connection that ended mid-statement', () => {
    expect(mayHaveCommitted(coded('ECONNRESET'))).toBe(true);
    expect(mayHaveCommitted(coded('57P01'))).toBe(true);
    expect(mayHaveCommitted(new Error('Connection terminated unexpectedly'))).toBe(true);
  });

  it('does not count a refusal, a failure to connect, or a server that stopped answering', () => {
    for (const err of [
      coded('ECONNREFUSED'),
      coded('57014'),
      coded('25006'),
      coded('55P03'),
      new Error('Connection terminated due to connection timeout'),
      new Error('timeout exceeded when trying to connect'),
    ]) {
      expect({ error: err.message, counted: mayHaveCommitted(err) }).toEqual({ error: err.message, counted: false });
    }
  });
});
