import net from 'node:net';

export interface FaultProxy {
  /** A URL like `target` but pointing at the proxy. */
  url(target: string): string;
  /** The outage: resets every open connection and refuses new ones, like a stopped server. */
  cut(): Promise<void>;
  /**
   * A half-open network: open connections stay open but nothing passes either way, and new ones are
   * accepted but go nowhere. Nothing is reset, so no error reaches either side: reads never return.
   */
  blackhole(): void;
  /** Ends a cut or a blackhole; what the blackhole held back passes then, as after a healed partition. */
  restore(): Promise<void>;
  /**
   * Resets every open connection, as a middlebox that dropped them, and lets new ones pass: after a
   * blackhole, what it held back is lost, as an answer lost on its way back.
   */
  reset(): void;
  /**
   * Sends new connections to another server, as a virtual IP or a DNS name moves after a failover;
   * open connections stay with the server they reached.
   */
  retarget(host: string, port: number): void;
  close(): Promise<void>;
}

/** A client connection and, once it is forwarded, its connection to the target. */
interface Link {
  client: net.Socket;
  upstream: net.Socket | null;
  passing: boolean;
}

/**
 * A loopback TCP proxy in front of Postgres or RabbitMQ. Cutting it is what the services see when the
 * server stops: connections reset, reconnects refused. Blackholing it is a peer that vanished without
 * a word (a dropped route, a frozen host). Tests use it instead of stopping the machine's shared
 * servers, so they also run against remote or containerized ones.
 */
export async function startFaultProxy(targetHost: string, targetPort: number): Promise<FaultProxy> {
  let target = { host: targetHost, port: targetPort };
  const links = new Set<Link>();
  let holding = false;

  function watch(link: Link, socket: net.Socket): void {
    socket.on('error', () => undefined);
    socket.on('close', () => {
      links.delete(link);
      link.client.destroy();
      link.upstream?.destroy();
    });
  }

  function pass(link: Link): void {
    if (!link.upstream) {
      link.upstream = net.connect(target.port, target.host);
      watch(link, link.upstream);
    }
    link.client.pipe(link.upstream).pipe(link.client);
    link.passing = true;
  }

  // Paused sockets are not read: their data waits in the kernel, and TCP flow control stops the sender.
  function hold(link: Link): void {
    for (const s of [link.client, link.upstream]) s?.unpipe().pause();
    link.passing = false;
  }

  const server = net.createServer((client) => {
    const link: Link = { client, upstream: null, passing: false };
    links.add(link);
    watch(link, client);
    if (!holding) pass(link);
  });
  const listen = (port: number) => new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  await listen(0);
  const port = (server.address() as net.AddressInfo).port;
  return {
    url(target) {
      const u = new URL(target);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    async cut() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const link of links) for (const s of [link.client, link.upstream]) s?.resetAndDestroy();
      });
    },
    blackhole() {
      holding = true;
      for (const link of links) hold(link);
    },
    async restore() {
      holding = false;
      for (const link of links) if (!link.passing) pass(link);
      if (!server.listening) await listen(port);
    },
    reset() {
      holding = false;
      for (const link of links) for (const s of [link.client, link.upstream]) s?.resetAndDestroy();
    },
    retarget(host, newPort) {
      target = { host, port: newPort };
    },
    async close() {
      await new Promise<void>((resolve) => {
        for (const link of links) for (const s of [link.client, link.upstream]) s?.destroy();
        if (!server.listening) return resolve();
        server.close(() => resolve());
      });
    },
  };
}
