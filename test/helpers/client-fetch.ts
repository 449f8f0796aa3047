/**
 * A fetch behind a proxy that buffers event streams: /events answers 200 text/event-stream, then nothing
 * until the client gives up on it (its signal aborts); every other request passes. `urls` records each
 * request. With `buffered`, only that many streams are held back, and the later ones pass (a proxy fixed).
 */
export function bufferingFetch(urls: string[] = [], buffered = Infinity): typeof fetch {
  let streams = 0;
  return async (input, init) => {
    urls.push(String(input));
    if (!String(input).includes('/events') || ++streams > buffered) return fetch(input, init);
    const signal = init?.signal;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        signal?.addEventListener('abort', () => controller.error(signal.reason), { once: true });
      },
    });
    return new Response(body, { headers: { 'content-type': 'text/event-stream' } });
  };
}

/**
 * A fetch that never answers the requests `stall` picks, as over a connection that went nowhere (a NAT
 * that forgot it, a laptop that slept): each settles only when the client gives up on it (its signal
 * aborts). The others go to `next`.
 */
export function stallingFetch(stall: (url: string) => boolean, next: typeof fetch = fetch): typeof fetch {
  return (input, init) => {
    if (!stall(String(input))) return next(input, init);
    return new Promise((_resolve, reject) => {
      const signal = init?.signal;
      signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
    });
  };
}
