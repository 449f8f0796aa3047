import { sql } from 'kysely';
import { loadConfig, TASK_CHANNEL, type Db } from '@taskbox/shared';
import { startTestApi, type TestApi } from '../helpers/api';
import { insertTaskFixture } from '../helpers/factories';
import { waitFor } from '../helpers/wait';

interface View {
  id: string;
  status: string;
  currentStep: string | null;
  progress: number | null;
}

/** What the worker does after a commit: announce the changed tasks on the api's channel. */
async function announce(db: Db, ids: string[]): Promise<void> {
  await sql`SELECT pg_notify(${TASK_CHANNEL}, ${ids.join(',')})`.execute(db);
}

async function setProgress(db: Db, id: string, step: string, progress: number): Promise<void> {
  await db
    .updateTable('tasks')
    .set({ status: 'processing', current_step: step, progress, updated_at: sql`now()` })
    .where('id', '=', id)
    .execute();
}

async function getView(url: string): Promise<View> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  return (await res.json()) as View;
}

describe('api: long polls on a task share one read of it per change', () => {
  const MANY = 1000;
  let api: TestApi;
  let base: string;
  let db: Db;

  beforeAll(async () => {
    api = await startTestApi({ longPoll: { max: MANY, maxPerOwner: MANY } });
    base = await api.listen();
    db = api.database.db;
    // A long poll answered after a change proves the LISTEN connection is up (its first connect also
    // re-reads every watched task), so no read below comes from the listener connecting late.
    const id = await insertTaskFixture(db);
    const waiting = getView(`${base}/tasks/${id}?wait=30`);
    // At least one read: the listener's first connect may read the task once more.
    await waitFor('the warm-up poll to read its task', () => api.taskReads() >= 1);
    await setProgress(db, id, 'warm-up', 0);
    await announce(db, [id]);
    expect((await waiting).currentStep).toBe('warm-up');
  });

  afterAll(async () => {
    await api.close();
  });

  it('reads the task once per change for all its waiters, and answers them only when a watched field changed', async () => {
    const waiters = 50;
    const id = await insertTaskFixture(db);
    const before = api.taskReads();
    const polls = Array.from({ length: waiters }, () => getView(`${base}/tasks/${id}?wait=30`));
    await waitFor('each waiter’s own first read', () => api.taskReads() === before + waiters);

    // A change to a field no long poll watches: one shared read, and every waiter keeps waiting.
    await db
      .updateTable('tasks')
      .set({ updated_at: sql`now()` })
      .where('id', '=', id)
      .execute();
    await announce(db, [id]);
    await waitFor('the shared read after the first change', () => api.taskReads() === before + waiters + 1);
    expect(api.events.waiting()).toBe(waiters);

    await setProgress(db, id, 'rendering', 0.5);
    await announce(db, [id]);
    const views = await Promise.all(polls);
    expect(new Set(views.map((v) => `${v.status}:${v.currentStep}:${v.progress}`))).toEqual(
      new Set(['processing:rendering:0.5']),
    );
    // Per waiter only its first read; each change cost one read for all of them.
    expect(api.taskReads()).toBe(before + waiters + 2);
    await waitFor('every waiter to be released', () => api.events.waiting() === 0);
  });

  it(`answers ${MANY} concurrent long polls on a few tasks, each with its own task’s new view`, async () => {
    const ids = await Promise.all(Array.from({ length: 5 }, () => insertTaskFixture(db)));
    const before = api.taskReads();
    const polls = Array.from({ length: MANY }, (_, n) => getView(`${base}/tasks/${ids[n % ids.length]}?wait=30`));
    await waitFor(`all ${MANY} long polls to wait`, () => api.taskReads() === before + MANY, 30_000);
    expect(api.events.waiting()).toBe(MANY);

    for (const [n, id] of ids.entries()) await setProgress(db, id, `step-${n}`, n / 10);
    await announce(db, ids);
    const views = await Promise.all(polls);

    const expected = Array.from({ length: MANY }, (_, n) => `${ids[n % ids.length]}:step-${n % ids.length}`);
    expect(views.map((v) => `${v.id}:${v.currentStep}`)).toEqual(expected);
    expect(api.taskReads()).toBe(before + MANY + ids.length);
    await waitFor('every waiter to be released', () => api.events.waiting() === 0);
  });
});

describe('api: long polls are capped per owner (429) and per process (503)', () => {
  let api: TestApi;
  let base: string;
  const alice = { authorization: 'Bearer tok-alice' };
  const bob = { authorization: 'Bearer tok-bob' };

  beforeAll(async () => {
    api = await startTestApi({
      auth: loadConfig({ AUTH_TOKENS: 'tok-alice:alice,tok-bob:bob' }),
      longPoll: { max: 3, maxPerOwner: 2 },
    });
    base = await api.listen();
  });

  afterAll(async () => {
    await api.close();
  });

  async function createTask(headers: Record<string, string>): Promise<string> {
    const res = await fetch(`${base}/tasks`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'echo' }),
    });
    expect(res.status).toBe(202);
    return ((await res.json()) as View).id;
  }

  async function expectTurnedAway(res: Response, status: number): Promise<void> {
    expect(res.status).toBe(status);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.headers.get('retry-after')).toMatch(/^[1-9]\d*$/);
    expect(await res.json()).toMatchObject({ status, title: 'Too Many Long Polls' });
  }

  it('turns away long polls beyond the caps with Retry-After, and admits them again once the waiters leave', async () => {
    const [aliceTask, bobTask] = [await createTask(alice), await createTask(bob)];
    const leave = new AbortController();
    const wait = (headers: Record<string, string>, id: string) =>
      fetch(`${base}/tasks/${id}?wait=30`, { headers, signal: leave.signal }).catch(() => 'left');
    const waiting = [wait(alice, aliceTask), wait(alice, aliceTask), wait(bob, bobTask)];
    await waitFor('three long polls to wait', () => api.events.waiting() === 3);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/^http_long_polls_waiting\{service="api"\} 3$/m);

    await expectTurnedAway(await fetch(`${base}/tasks/${aliceTask}?wait=30`, { headers: alice }), 429);
    await expectTurnedAway(await fetch(`${base}/tasks/${bobTask}?wait=30`, { headers: bob }), 503);
    // A plain read is never capped.
    expect((await fetch(`${base}/tasks/${aliceTask}`, { headers: alice })).status).toBe(200);

    leave.abort();
    expect(await Promise.all(waiting)).toEqual(['left', 'left', 'left']);
    await waitFor('the waiters to be released', () => api.events.waiting() === 0);
    const again = await fetch(`${base}/tasks/${aliceTask}?wait=0.1`, { headers: alice });
    expect(again.status).toBe(200);
  });
});
