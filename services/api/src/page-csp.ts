import type { RequestHandler } from 'express';

// Only this origin's own files: no inline script or style, no CDN, no fonts from elsewhere, nothing framed.
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** The Content-Security-Policy of the pages the api serves (the example page, the dashboard). */
export function strictPageCsp(): RequestHandler {
  return (_req, res, next) => {
    res.setHeader('Content-Security-Policy', CSP);
    next();
  };
}
