type Child = Node | string | null | undefined | false;

/** An element with attributes (strings; `false` or undefined leaves one out) and children as text or nodes. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | boolean | undefined> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === true) element.setAttribute(name, '');
    else if (typeof value === 'string') element.setAttribute(name, value);
  }
  // Text goes in as text nodes: task payloads and errors are never parsed as HTML.
  for (const child of children) if (child) element.append(child);
  return element;
}

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing from the page`);
  return element as T;
}

/** A date as this browser shows local date and time; '' for none. */
export function when(iso: string | null | undefined): string {
  return iso ? new Date(iso).toLocaleString() : '';
}

/** Seconds as a short duration: 45 s, 12 min, 3 h. */
export function age(seconds: number): string {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

/** JSON for a <pre>, or a dash for nothing. */
export function pretty(value: unknown): string {
  return value === null || value === undefined ? '—' : JSON.stringify(value, null, 2);
}

/** The one line of an error to show in a list: its message when it has one. */
export function errorLine(error: unknown): string {
  if (error && typeof error === 'object' && 'message' in error) return String(error.message);
  return error === null || error === undefined ? '' : JSON.stringify(error);
}

export function showMessage(text: string, isError = true): void {
  const box = byId('message');
  box.textContent = text;
  box.dataset.kind = isError ? 'error' : 'info';
  box.hidden = text === '';
}

// The message each background refresh last showed for its failure, by source.
const refreshFailures = new Map<string, string>();

/**
 * Runs a refresh nobody clicked for (a poll, a live update): its failure is shown until the same
 * source's next refresh works, then cleared, unless another message replaced it meanwhile.
 */
export function refreshing(source: string, work: Promise<unknown>): void {
  work.then(
    () => {
      const shown = refreshFailures.get(source);
      refreshFailures.delete(source);
      if (shown !== undefined && byId('message').textContent === shown) showMessage('');
    },
    (err: unknown) => {
      const text = String(err);
      refreshFailures.set(source, text);
      showMessage(text);
    },
  );
}
