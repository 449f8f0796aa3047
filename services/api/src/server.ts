import http from 'node:http';

export interface HttpLimits {
  /** A client must have sent all its request headers within this. */
  headersTimeoutMs: number;
  /** ... and its whole request, body included. Writing the response is not bounded by it. */
  requestTimeoutMs: number;
  /** Connections beyond this are closed as they arrive. */
  maxConnections: number;
}

/**
 * The api's HTTP server with its limits, so a slow or stalled client cannot hold a socket for good.
 * main.ts listens on it; tests build it with small values. Neither timeout cuts a long poll: its
 * request is complete before it starts to wait (Node stops checking a request once it has arrived).
 */
export function createServer(app: http.RequestListener, limits: HttpLimits): http.Server {
  const server = http.createServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      // Node looks for expired requests only this often (30 s by default), so a timeout fires up to one
      // interval late: keep that within a tenth of the headers timeout, and the sweep cheap.
      connectionsCheckingInterval: Math.min(1000, Math.ceil(limits.headersTimeoutMs / 10)),
    },
    app,
  );
  server.maxConnections = limits.maxConnections;
  return server;
}
