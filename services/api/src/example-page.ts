import { existsSync } from 'node:fs';
import path from 'node:path';
import express, { Router } from 'express';
import { strictPageCsp } from './page-csp';

export interface ExamplePage {
  /** examples/web: the page, its script and its style. */
  pageDir: string;
  /** The client's one-file build (packages/client/dist/browser), which the page imports. */
  clientDir: string;
}

/** The example page's files as the repository lays them out, from the api's dist folder; fails when one is missing. */
export function examplePageFromRepo(apiDist: string): ExamplePage {
  const root = path.resolve(apiDist, '../../..');
  const page = { pageDir: path.join(root, 'examples/web'), clientDir: path.join(root, 'packages/client/dist/browser') };
  for (const dir of [page.pageDir, page.clientDir]) {
    if (!existsSync(dir)) throw new Error(`EXAMPLE_PAGE=true but ${dir} is missing: run npm run build in a checkout`);
  }
  return page;
}

/** Serves the example page at /example/ (EXAMPLE_PAGE=true, for development). */
export function examplePageRouter(page: ExamplePage): Router {
  const router = Router();
  router.use(strictPageCsp());
  router.use('/client', express.static(page.clientDir, { index: false }));
  router.use(express.static(page.pageDir, { index: 'index.html' }));
  return router;
}
