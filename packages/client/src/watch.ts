import { createParser } from 'eventsource-parser';
import { abortError, callbackError, networkError, problemError, type ClientError, type Result } from './errors.js';
import { backoffMs, request, sleep, type Http } from './http.js';
import { isTerminal, type TaskView } from './types.js';

export interface WatchOptions {
  signal?: AbortSignal;
  /**
   * A stream that sends nothing for this long is taken as broken (a proxy that buffers it); the api
   * sends a heartbeat well within it. A request not answered this long after the api would have (a
   * connection that went nowhere) is cut and made again. 45 s by default.
   */
  idleMs?: number;
  /**
   * After falling back to long polls, how long before a stream is tried again: the proxy that held
   * streams back may have been a deploy's error page, or may have been fixed since.
   */
  streamRetryMs?: number;
}

/**
 * How one round of watching ended: the terminal state, an error that retrying cannot fix, or a retry.
 * `streamBroken` is a stream that something between us and the api keeps from us (a proxy that buffers
 * it or answers for it); a refused or reset connection, or an api that answered or ended the stream
 * itself (a restart), is not: streams work again once the api is back.
 */
type Round = { view: TaskView } | { error: ClientError } | { retry: { progressed: boolean; streamBroken: boolean } };

// Errors that mean the same request will never work: stop watching instead of retrying.
const FINAL = new Set([400, 401, 403, 404]);

// WatchOptions.idleMs by default: the api's heartbeat (STREAM_HEARTBEAT_MS, 15 s) comes well within it.
const IDLE_MS = 45_000;

const settle = (error: ClientError, streamBroken = false): Round =>
  FINAL.has(error.status) ? { error } : { retry: { progressed: false, streamBroken } };

type Emit = (view: TaskView) => void;

/** Reads events until the terminal one or a break; `idled` when it was cut for sending nothing for `idleMs`. */
async function readStream(
  response: Response,
  emit: Emit,
  idleMs: number,
  cut: AbortController,
): Promise<{ progressed: boolean; idled: boolean }> {
  let terminal = false;
  let events = 0;
  let idled = false;
  const idleCut = () => {
    idled = true;
    cut.abort();
  };
  const parser = createParser({
    onEvent(message) {
      if (message.event !== 'task') return;
      const view = JSON.parse(message.data) as TaskView;
      events++;
      emit(view);
      terminal ||= isTerminal(view.status);
    },
  });
  const body = response.body;
  if (!body) return { progressed: false, idled: false };
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let idle = setTimeout(idleCut, idleMs);
  try {
    while (!terminal) {
      const { done, value } = await reader.read();
      if (done) break;
      clearTimeout(idle);
      idle = setTimeout(idleCut, idleMs);
      parser.feed(decoder.decode(value, { stream: true }));
    }
  } catch {
    // Cut, idle or aborted: the caller looks at what arrived.
  } finally {
    clearTimeout(idle);
    // Always: a stream left open counts against the owner's cap on the api until the task ends.
    void reader.cancel().catch(() => undefined);
  }
  return { progressed: terminal || events > 0, idled };
}

/** One stream: from the version the caller has, until the terminal state or a break. */
async function viaStream(
  http: Http,
  id: string,
  last: TaskView | undefined,
  emit: Emit,
  options: WatchOptions,
): Promise<Round> {
  const idleMs = options.idleMs ?? IDLE_MS;
  const cut = new AbortController();
  const stop = () => cut.abort();
  options.signal?.addEventListener('abort', stop, { once: true });
  try {
    const extra: Record<string, string> = { accept: 'text/event-stream' };
    if (last) extra['last-event-id'] = String(last.version);
    let response: Response;
    let answerTimer: ReturnType<typeof setTimeout> | undefined;
    try {
      const headers = await http.headers(extra);
      // A request with no answer for idleMs (a connection that went nowhere: a NAT that forgot it, a
      // laptop that slept) is cut and made again; a browser's fetch would wait for good. A network
      // failure, not a proxy holding streams back: it does not count towards long polls.
      answerTimer = setTimeout(() => cut.abort(), idleMs);
      response = await http.fetch(`${http.baseUrl}/tasks/${id}/events`, { headers, signal: cut.signal });
    } catch (err) {
      return settle(networkError(err));
    } finally {
      clearTimeout(answerTimer);
    }
    // The stream has nothing newer than `last`, which is terminal.
    if (response.status === 204 && last) return { view: last };
    const type = response.headers.get('content-type') ?? '';
    // The api answers its errors as problem+json; another body is a proxy's answer for it.
    if (!response.ok) return settle(await problemError(response), !type.startsWith('application/problem+json'));
    if (!type.startsWith('text/event-stream')) return { retry: { progressed: false, streamBroken: true } };
    let terminal: TaskView | undefined;
    const { progressed, idled } = await readStream(
      response,
      (view) => {
        emit(view);
        if (isTerminal(view.status)) terminal = view;
      },
      idleMs,
      cut,
    );
    if (terminal) return { view: terminal };
    // Only a stream that went quiet without an event was held back; one that ended or broke may be a restart.
    return { retry: { progressed, streamBroken: idled && !progressed } };
  } finally {
    options.signal?.removeEventListener('abort', stop);
    // Closes the response whatever ended the round, a body nobody read included.
    cut.abort();
  }
}

/** One long poll: answers at once when the task is newer than `last`, else at its next change or after the wait. */
async function viaLongPoll(
  http: Http,
  id: string,
  last: TaskView | undefined,
  emit: Emit,
  idleMs: number,
  signal?: AbortSignal,
): Promise<Round> {
  // `after`: a change committed since the last answer answers at once, instead of at the next one.
  const wait = last ? 25 : 0;
  const query = last ? `?wait=${wait}&after=${last.version}` : '';
  // The api answers within `wait`: no answer idleMs later is a connection that went nowhere.
  const deadline = AbortSignal.timeout(wait * 1000 + idleMs);
  const answer = await request<TaskView>(http, `/tasks/${id}${query}`, {
    signal: signal ? AbortSignal.any([signal, deadline]) : deadline,
  });
  if (answer.error) return settle(answer.error);
  emit(answer.data);
  return isTerminal(answer.data.status) ? { view: answer.data } : { retry: { progressed: true, streamBroken: false } };
}

/**
 * Follows a task to its terminal state, calling `onChange` with each newer state (never one it had).
 * Uses the task's event stream; after two streams in a row were held back (sent nothing for `idleMs`, or
 * a proxy answered for the api), long polls, and tries one stream again every `streamRetryMs`; refused
 * or reset connections and streams the api ended do not count. Retries with backoff meanwhile; stops at once
 * on 400, 401, 403 or 404, and when `signal` aborts. An `onChange` that throws stops the watch too: it
 * resolves with a `callback` error whose `cause` is what was thrown (never a rejection, as for every
 * other failure), after closing its request.
 */
export async function watchTask(
  http: Http,
  id: string,
  onChange: (view: TaskView) => void,
  options: WatchOptions = {},
): Promise<Result<TaskView>> {
  let last: TaskView | undefined;
  let thrown: { cause: unknown } | undefined;
  // Aborted when onChange throws, so the round in progress closes its response and ends.
  const halt = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, halt.signal]) : halt.signal;
  const emit: Emit = (view) => {
    if (thrown || (last && view.version <= last.version)) return;
    last = view;
    try {
      onChange(view);
    } catch (cause) {
      thrown = { cause };
      halt.abort();
    }
  };
  let failures = 0;
  let brokenStreams = 0;
  let fellBackAt = 0;
  for (;;) {
    if (options.signal?.aborted) return { error: abortError(options.signal) };
    // One more stream held back goes back to long polls at once.
    if (brokenStreams >= 2 && Date.now() - fellBackAt >= (options.streamRetryMs ?? 300_000)) brokenStreams = 1;
    const streaming = brokenStreams < 2;
    const round = streaming
      ? await viaStream(http, id, last, emit, { ...options, signal })
      : await viaLongPoll(http, id, last, emit, options.idleMs ?? IDLE_MS, signal);
    if (thrown) return { error: callbackError(thrown.cause) };
    if ('view' in round) return { data: round.view };
    if ('error' in round) return { error: round.error };
    failures = round.retry.progressed ? 0 : failures + 1;
    // In a row: a stream that delivered resets the count; a network error says nothing either way.
    if (streaming && round.retry.streamBroken) {
      brokenStreams++;
      if (brokenStreams === 2) fellBackAt = Date.now();
    } else if (streaming && round.retry.progressed) brokenStreams = 0;
    await sleep(backoffMs(failures), options.signal);
  }
}
