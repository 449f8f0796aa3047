/// <reference lib="dom" />
// The page functions below run in the browser.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { startStack, type Stack } from '../helpers/stack';

// Debian's chromium, never a downloaded browser build (none can be fetched here); .ci/run installs it.
const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.resolve(__dirname, '../artifacts');

/**
 * The example page in a real browser: it loads the client's browser build from the api under a strict
 * CSP, follows a task over SSE, and cancels one. A missing chromium fails this file, never skips it.
 */
describe('examples/web in headless Chromium, served by the api', () => {
  let stack: Stack;
  let context: BrowserContext;
  let profile: string;
  const problems: string[] = [];

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`the browser test needs Debian's chromium at ${CHROMIUM}: apt-get install -y chromium`);
    }
    stack = await startStack({}, { api: { EXAMPLE_PAGE: 'true' } });
    profile = await mkdtemp(path.join(tmpdir(), 'taskbox-chromium-'));
    await mkdir(ARTIFACTS, { recursive: true });
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 900, height: 720 },
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });

  afterAll(async () => {
    await context?.close();
    if (profile) await rm(profile, { recursive: true, force: true });
    await stack?.stop();
  });

  async function openPage(): Promise<Page> {
    const page = await context.newPage();
    // A CSP violation or a script error is a broken page even when the checks below pass.
    page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('response', (r) => r.status() >= 400 && problems.push(`${r.status()} ${r.url()}`));
    await page.goto(`${stack.urls.api}/example/`);
    return page;
  }

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
    expect(problems).toEqual([]);
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
    expect(problems).toEqual([]);
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
    expect(problems).toEqual([]);
    await page.close();
  });
});
