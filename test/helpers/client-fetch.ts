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
