/// <reference lib="dom" />
// The page functions below run in the browser.
import path from 'node:path';
import type { Page } from 'playwright-core';
import { ARTIFACTS, launchBrowser, type Browser } from '../helpers/browser';
import { startStack, type Stack } from '../helpers/stack';

/**
 * The example page in a real browser: it loads the client's browser build from the api under a strict
 * CSP, follows a task over SSE, and cancels one. A missing chromium fails this file, never skips it.
 */
describe('examples/web in headless Chromium, served by the api', () => {
  let stack: Stack;
  let browser: Browser;

  beforeAll(async () => {
    stack = await startStack({}, { api: { EXAMPLE_PAGE: 'true' } });
    browser = await launchBrowser(stack.urls.api);
  });

  afterAll(async () => {
    await browser?.close();
    await stack?.stop();
  });

  const openPage = (): Promise<Page> => browser.open(`${stack.urls.api}/example/`);
  const problems = (): string[] => browser.problems;

  const text = (page: Page, selector: string) => page.locator(selector).innerText();

  it('submits a sleep task and shows its progress reach 100 % and the status succeeded, with its timeline', async () => {
    const page = await openPage();
    await page.fill('#ms', '2000');
    await page.click('#start');
    await page.waitForFunction(() => document.getElementById('percent')?.textContent === '50 %');
    await page.waitForFunction(() => document.getElementById('status')?.textContent === 'succeeded');
    expect(await text(page, '#percent')).toBe('100 %');
    expect(await page.locator('#bar').evaluate((bar) => (bar as HTMLProgressElement).value)).toBe(1);
    expect(await text(page, '#timeline')).toMatch(/created[\s\S]*published[\s\S]*started[\s\S]*finished/);
    expect(await page.locator('#cancel').isDisabled()).toBe(true);
    await page.screenshot({ path: path.join(ARTIFACTS, 'example-page-succeeded.png') });
    expect(problems()).toEqual([]);
    await page.close();
  });

  it('cancels a running task from the page', async () => {
    const page = await openPage();
    await page.fill('#ms', '60000');
    await page.click('#start');
    await page.waitForFunction(() => document.getElementById('status')?.textContent === 'processing');
    await page.click('#cancel');
    await page.waitForFunction(() => document.getElementById('status')?.textContent === 'cancelled');
    expect(await text(page, '#timeline')).toMatch(/finished \(attempt 1\): cancelled/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'example-page-cancelled.png') });
    expect(problems()).toEqual([]);
    await page.close();
  });

  it('lets the browser’s own EventSource follow a task with a stream token, and stop after its terminal state', async () => {
    const page = await openPage();
    const seen = await page.evaluate(async () => {
      const json = { 'content-type': 'application/json' };
      const body = JSON.stringify({ type: 'sleep', payload: { ms: 300 } });
      const task = (await (await fetch('/tasks', { method: 'POST', headers: json, body })).json()) as { id: string };
      const issued = (await (await fetch(`/tasks/${task.id}/stream-token`, { method: 'POST' })).json()) as {
        url: string;
      };
      return new Promise<string[]>((resolve) => {
        const statuses: string[] = [];
        const source = new EventSource(issued.url);
        source.addEventListener('task', (e) => {
          statuses.push((JSON.parse(String((e as MessageEvent).data)) as { status: string }).status);
        });
        // After the terminal event the server ends the stream; the reconnect gets 204, which closes it.
        source.onerror = () => source.readyState === EventSource.CLOSED && resolve(statuses);
      });
    });
    expect(seen.at(-1)).toBe('succeeded');
    expect(problems()).toEqual([]);
    await page.close();
  });
});
