import { existsSync } from 'node:fs';
import path from 'node:path';
import express, { Router } from 'express';
import { strictPageCsp } from './page-csp';

export interface DashboardFiles {
  /** services/api/dashboard/static: the page, its style, its icon. */
  staticDir: string;
  /** services/api/dashboard/dist: its modules, compiled by `npm run build`. */
  scriptDir: string;
  /** The client's one-file build (packages/client/dist/browser), which the modules import. */
  clientDir: string;
}

/** The dashboard's files as the repository (and the image) lay them out, from the api's dist folder. */
export function dashboardFromRepo(apiDist: string): DashboardFiles {
  const api = path.resolve(apiDist, '..');
  const files = {
    staticDir: path.join(api, 'dashboard/static'),
    scriptDir: path.join(api, 'dashboard/dist'),
    clientDir: path.resolve(api, '../../packages/client/dist/browser'),
  };
  for (const dir of Object.values(files)) {
    if (!existsSync(dir)) throw new Error(`DASHBOARD=true but ${dir} is missing: run npm run build`);
  }
  return files;
}

/**
 * Serves /dashboard/: static files only, under a strict CSP. What it shows comes from the api's own
 * endpoints with the bearer token the page signs in with, so it shows a caller what the api would.
 */
export function dashboardRouter(files: DashboardFiles): Router {
  const router = Router();
  router.use(strictPageCsp());
  // The page's relative URLs (style.css, js/main.js) need the trailing slash.
  router.get('/', (req, res, next) => {
    if (req.originalUrl.split('?')[0]?.endsWith('/')) return next();
    res.redirect(301, `${req.baseUrl}/`);
  });
  // cacheControl off keeps the api's no-store: a page never runs old modules against a newer api.
  const options = { index: false as const, cacheControl: false };
  router.use('/js', express.static(files.clientDir, options), express.static(files.scriptDir, options));
  router.use(express.static(files.staticDir, { ...options, index: 'index.html' }));
  return router;
}
