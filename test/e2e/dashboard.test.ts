/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
// The page functions below run in the browser.
import path from 'node:path';
import type { Page } from 'playwright-core';
import { ARTIFACTS, launchBrowser, type Browser } from '../helpers/browser';
import { startStack, type Stack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';

const TOKENS = { ops: 'tok-ops', alice: 'tok-alice', bob: 'tok-bob' };

/**
 * The dashboard in a real browser, against the whole system: an admin sees the counts move while tasks
 * run, retries a failed task from its page and sees it succeed with both attempts; a non-admin sees
 * only their own tasks. Every page must load nothing from another origin and break no CSP rule.
 */
describe('the dashboard in headless Chromium, served by the api', () => {
  let stack: Stack;
  let browser: Browser;

  beforeAll(async () => {
    const auth = `${TOKENS.ops}:ops:admin,${TOKENS.alice}:alice,${TOKENS.bob}:bob`;
    stack = await startStack({}, { api: { AUTH_TOKENS: auth } });
    browser = await launchBrowser(stack.urls.api);
  });
  afterAll(async () => {
    await browser?.close();
    await stack?.stop();
  });

  async function submit(as: keyof typeof TOKENS, body: object): Promise<string> {
    const res = await fetch(`${stack.urls.api}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKENS[as]}` },
      body: JSON.stringify(body),
    });
    if (res.status !== 202) throw new Error(`POST /tasks answered ${res.status}`);
    return ((await res.json()) as { id: string }).id;
  }
  const status = async (id: string) =>
    (await stack.database.db.selectFrom('tasks').select('status').where('id', '=', id).executeTakeFirst())?.status;

  async function signIn(as: keyof typeof TOKENS): Promise<Page> {
    const page = await browser.open(`${stack.urls.api}/dashboard`);
    await page.fill('#token', TOKENS[as]);
    await page.click('#sign-in button[type=submit]');
    await page.waitForSelector('#overview-view:not([hidden])');
    return page;
  }
  const rowIds = (page: Page) =>
    page.locator('#task-rows tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-id')));

  it('shows an admin the counts changing while tasks run, and a failed flaky task that Retry brings to succeeded with two attempts', async () => {
    // Fails its first attempt, its only one: failed for good until someone retries it.
    const flaky = await submit('alice', { type: 'flaky', payload: { failTimes: 1 }, maxAttempts: 1 });
    await waitFor('the flaky task to fail', async () => (await status(flaky)) === 'failed');

    const page = await signIn('ops');
    await page.waitForFunction(() => document.getElementById('count-failed')?.textContent === '1');
    expect(await page.locator('#who').innerText()).toBe('ops (admin)');
    const sleeps = await Promise.all([1, 2, 3].map(() => submit('bob', { type: 'sleep', payload: { ms: 4000 } })));
    await page.waitForFunction(() => Number(document.getElementById('count-processing')?.textContent) > 0);
    await page.waitForFunction(() => document.getElementById('count-succeeded')?.textContent === '3');
    expect(await Promise.all(sleeps.map(status))).toEqual(['succeeded', 'succeeded', 'succeeded']);
    await page.waitForFunction(() => document.getElementById('outbox-count')?.textContent === '0');
    expect(await page.locator('#checks li').count()).toBeGreaterThan(5);
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-admin.png'), fullPage: true });

    await page.selectOption('#filter-status', 'failed');
    await page.click('#filters button[type=submit]');
    await page.waitForFunction(() =>
      Array.from(document.querySelectorAll<HTMLElement>('#task-rows tr')).every((r) => r.dataset.status === 'failed'),
    );
    expect(await rowIds(page)).toEqual([flaky]);
    await page.click(`#task-rows tr[data-id="${flaky}"] a`);
    await page.waitForFunction(() => document.getElementById('task-status')?.textContent === 'failed');
    expect(await page.locator('#task-attempts tr').count()).toBe(1);
    // A double click retries once, and shows no error.
    await page.dblclick('#task-retry');
    await page.waitForFunction(() => document.getElementById('task-status')?.textContent === 'succeeded');
    expect(await page.isVisible('#message')).toBe(false);
    await page.waitForFunction(() => document.querySelectorAll('#task-attempts tr').length === 2);
    const attempts = await page
      .locator('#task-attempts tr')
      .evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent)));
    expect(attempts.map((a) => [a[0], a[4]])).toEqual([
      ['1', 'failed'],
      ['2', 'succeeded'],
    ]);
    // Each attempt names the delivery that ran it: <consumer tag>:<delivery tag>.
    for (const a of attempts) expect(a[1]).toMatch(/^worker-.+:\d+$/);
    expect(await page.locator('#task-timeline li[data-event=retried]').innerText()).toMatch(/retry 1 by ops/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-task.png'), fullPage: true });
    expect(browser.problems).toEqual([]);
    await page.close();
  });

  it('retries in bulk as many tasks as its dry run offered, oldest first, not those that failed since', async () => {
    const fail = () => submit('alice', { type: 'flaky', payload: { failTimes: 1 }, maxAttempts: 1 });
    const counted = [await fail(), await fail()];
    await waitFor('two failed', async () => (await Promise.all(counted.map(status))).every((s) => s === 'failed'));
    const page = await signIn('ops');
    await page.selectOption('#filter-status', 'failed');
    await page.fill('#filter-owner', 'alice');
    await page.click('#filters button[type=submit]');
    await page.click('#bulk-retry');
    await page.waitForFunction(() =>
      document.getElementById('bulk-question')?.textContent?.includes('retry 2 of them'),
    );
    const later = await fail();
    await waitFor('the later one failed', async () => (await status(later)) === 'failed');
    await page.click('#bulk-go');
    await page.waitForFunction(() => document.getElementById('message')?.textContent === 'Retried 2 of 3.');
    const retried = await stack.database.db.selectFrom('task_retries').select('task_id').execute();
    expect(retried.map((r) => r.task_id).sort()).toEqual(expect.arrayContaining([...counted].sort()));
    expect(retried.map((r) => r.task_id)).not.toContain(later);
    expect(browser.problems).toEqual([]);
    await page.close();
  });

  it('is served under a strict Content-Security-Policy, with no inline script or other origin allowed', async () => {
    const res = await fetch(`${stack.urls.api}/dashboard/`);
    expect(res.status).toBe(200);
    const csp = res.headers.get('content-security-policy') ?? '';
    for (const rule of ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"]) {
      expect(csp).toContain(rule);
    }
  });

  it('follows a task retried elsewhere, shows a refused action with the task as it is, and clears a refresh error once the api answers', async () => {
    const failed = async (): Promise<string> => {
      const id = await submit('alice', { type: 'flaky', payload: { failTimes: 1 }, maxAttempts: 1 });
      await waitFor('the flaky task to fail', async () => (await status(id)) === 'failed');
      return id;
    };
    const retryAsAlice = (id: string) =>
      fetch(`${stack.urls.api}/tasks/${id}/retry`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKENS.alice}` },
      });
    const shows = (page: Page, wanted: string) =>
      page.waitForFunction((s) => document.getElementById('task-status')?.textContent === s, wanted);
    const page = await signIn('ops');

    // Another operator (here the owner) retries the task the page shows: the page follows it to its end.
    const first = await failed();
    await page.goto(`${stack.urls.api}/dashboard#/tasks/${first}`);
    await shows(page, 'failed');
    expect((await retryAsAlice(first)).status).toBe(202);
    await shows(page, 'succeeded');
    // Meanwhile it asks now and then, not in a loop: the api answers a long poll on a finished task at once.
    const asked: string[] = [];
    const record = (r: { url(): string }) => void (r.url().includes(first) && asked.push(r.url()));
    page.on('request', record);
    await new Promise((resolve) => setTimeout(resolve, 3000));
    page.off('request', record);
    expect(asked.length).toBeLessThanOrEqual(1);

    // A page that missed the retry (its polls held up) offers Retry; the 409 brings the task as it is.
    const second = await failed();
    await page.route(
      (url) => url.pathname === `/tasks/${second}`,
      () => undefined,
    );
    await page.goto(`${stack.urls.api}/dashboard#/tasks/${second}`);
    await shows(page, 'failed');
    expect((await retryAsAlice(second)).status).toBe(202);
    await waitFor('the task to succeed', async () => (await status(second)) === 'succeeded');
    await page.click('#task-retry');
    await shows(page, 'succeeded');
    expect(await page.locator('#message').innerText()).toMatch(/Task Not Retryable/);
    await page.unrouteAll({ behavior: 'ignoreErrors' });

    // The overview's refreshes fail while the api is unreachable, and the banner goes once they work.
    await page.goto(`${stack.urls.api}/dashboard#/`);
    await page.waitForSelector('#overview-view:not([hidden])');
    const list = (url: URL) => url.pathname === '/tasks' || url.pathname === '/tasks/counts';
    await page.route(list, (route) => route.abort());
    await page.waitForSelector('#message:not([hidden])');
    expect(await page.locator('#message').innerText()).toMatch(/Failed to fetch/);
    await page.unroute(list);
    await page.waitForSelector('#message', { state: 'hidden' });
    await page.close();
    // What this test provoked, and nothing else: the 409, and the requests it made fail.
    expect(browser.problems.filter((p) => !/^409 |Failed to load resource|ERR_FAILED/.test(p))).toEqual([]);
    browser.problems.length = 0;
  });

  it("shows a non-admin only their own tasks and counts, live, and none of the admin's controls", async () => {
    const alices = await submit('alice', { type: 'echo', payload: {} });
    const page = await signIn('bob');
    expect(await page.locator('#who').innerText()).toBe('bob');
    await page.waitForFunction(() => document.getElementById('live-mode')?.textContent === 'live');
    const bobs = await submit('bob', { type: 'echo', payload: {} });
    await page.waitForFunction((id) => document.querySelector(`#task-rows tr[data-id="${id}"]`), bobs);
    const shown = await rowIds(page);
    expect(shown).not.toContain(alices);
    const owners = await stack.database.db
      .selectFrom('tasks')
      .select('owner')
      .where('id', 'in', shown as string[])
      .execute();
    expect(new Set(owners.map((o) => o.owner))).toEqual(new Set(['bob']));
    await page.waitForFunction(() => document.getElementById('count-succeeded')?.textContent === '4');
    for (const hidden of ['#bulk-retry', '#redrive', '#filter-owner']) expect(await page.isVisible(hidden)).toBe(false);
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-owner.png'), fullPage: true });
    // On a phone the page fits the screen: a wide table scrolls in its own box.
    await page.setViewportSize({ width: 390, height: 800 });
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    await page.click(`#task-rows tr[data-id="${bobs}"] a`);
    await page.waitForFunction(() => document.getElementById('task-status')?.textContent === 'succeeded');
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-phone.png'), fullPage: true });
    expect(browser.problems).toEqual([]);
    await page.close();
  });
});
