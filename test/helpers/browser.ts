/// <reference lib="dom" />
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

// Debian's chromium, never a downloaded browser build (none can be fetched here); .ci/run installs it.
const CHROMIUM = '/usr/bin/chromium';
export const ARTIFACTS = path.resolve(__dirname, '../artifacts');

export interface Browser {
  context: BrowserContext;
  /**
   * A new page that records what would make it broken even when the checks pass: console errors (a
   * CSP violation is one), script errors, answers of 400 and above, and requests to another origin.
   */
  open(url: string): Promise<Page>;
  problems: string[];
  close(): Promise<void>;
}

/** Headless chromium with a fresh profile; a missing chromium fails the test file, never skips it. */
export async function launchBrowser(origin: string): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`the browser test needs Debian's chromium at ${CHROMIUM}: apt-get install -y chromium`);
  }
  const profile = await mkdtemp(path.join(tmpdir(), 'taskbox-chromium-'));
  await mkdir(ARTIFACTS, { recursive: true });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1200, height: 900 },
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
  const problems: string[] = [];
  return {
    context,
    problems,
    async open(url) {
      const page = await context.newPage();
      page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
      page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
      page.on('response', (r) => r.status() >= 400 && problems.push(`${r.status()} ${r.url()}`));
      page.on('request', (r) => !r.url().startsWith(origin) && problems.push(`request elsewhere: ${r.url()}`));
      await page.goto(url);
      return page;
    },
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}
