import { createClient, type TaskboxClient } from '@taskbox/client';
import { startTestApi, type TestApi } from '../helpers/api';
import { insertTaskFixture } from '../helpers/factories';
import { sample, scrape } from '../helpers/metrics';
import { waitFor } from '../helpers/wait';

const TOKEN = 'alice-token';

/**
 * A proxy that buffers event streams: /events answers 200 text/event-stream, then nothing until the client
 * gives up on it; every other request passes. `urls` records each request.
 */
function buffering(urls: string[] = []): typeof fetch {
  return async (input, init) => {
    urls.push(String(input));
    if (!String(input).includes('/events')) return fetch(input, init);
    const signal = init?.signal;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        signal?.addEventListener('abort', () => controller.error(signal.reason), { once: true });
      },
    });
    return new Response(body, { headers: { 'content-type': 'text/event-stream' } });
  };
}

describe('@taskbox/client watchTask: what it leaves open and what it tells the caller', () => {
  let api: TestApi;
  let base: string;
  let client: TaskboxClient;

  beforeAll(async () => {
    api = await startTestApi({ auth: { AUTH_TOKENS: new Map([[TOKEN, { owner: 'alice', admin: false }]]) } });
    base = await api.listen();
    client = createClient({ baseUrl: base, token: TOKEN });
  });

  afterAll(async () => {
    await api.close();
  });

  const streamsOpen = async (): Promise<number | undefined> => sample(await scrape(base), 'http_streams_open');

  it('stops at an onChange that throws with a callback error carrying what it threw, and leaves no stream open', async () => {
    // Nothing runs this task: only the watch can end the stream before the test cancels it.
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    const bug = new Error('render bug');
    let calls = 0;
    const watching = client.watchTask(id, () => {
      calls++;
      throw bug;
    });
    try {
      await waitFor('onChange to be called', () => calls > 0);
      await waitFor('no stream open on the api', async () => (await streamsOpen()) === 0);
    } finally {
      await client.cancelTask(id);
    }
    const done = await watching;
    expect(done.error).toMatchObject({ kind: 'callback', status: 0, detail: 'render bug' });
    expect(done.error?.cause).toBe(bug);
    expect(calls).toBe(1);
  });

  it('stops at an onChange that throws while long-polling the same way: a callback error, never a rejection', async () => {
    const id = await insertTaskFixture(api.database.db, { owner: 'alice' });
    const urls: string[] = [];
    const behindProxy = createClient({ baseUrl: base, token: TOKEN, fetch: buffering(urls) });
    const bug = new Error('render bug');
    const done = await behindProxy.watchTask(
      id,
      () => {
        throw bug;
      },
      { idleMs: 100 },
    );
    expect(done.error).toMatchObject({ kind: 'callback', cause: bug });
    expect(urls.at(-1)).toBe(`${base}/tasks/${id}`);
  });
});
