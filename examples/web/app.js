// The example page: plain JavaScript on the client's one-file build, no framework and no build step.
import { createClient, isTerminal } from './client/taskbox-client.js';

const $ = (id) => document.getElementById(id);
// '' is this page's origin: the api serves the page (EXAMPLE_PAGE=true) next to its endpoints.
const client = createClient({ baseUrl: '', token: () => $('token').value.trim() || undefined });
let current = null;
let watching = null;

function showError(error) {
  $('error').hidden = !error;
  $('error').textContent = error
    ? `${error.status || ''} ${error.title}${error.detail ? `: ${error.detail}` : ''}`
    : '';
}

function renderTimeline(timeline = []) {
  const items = timeline.map((entry) => {
    const li = document.createElement('li');
    const time = document.createElement('time');
    time.dateTime = entry.at;
    time.textContent = new Date(entry.at).toLocaleTimeString();
    const attempt = entry.attempt ? ` (attempt ${entry.attempt})` : '';
    li.append(time, ` ${entry.event}${attempt}${entry.outcome ? `: ${entry.outcome}` : ''}`);
    return li;
  });
  $('timeline').replaceChildren(...items);
}

function render(view) {
  current = view;
  $('task').hidden = false;
  $('task-id').textContent = view.id;
  $('status').textContent = view.status;
  $('status').dataset.status = view.status;
  $('step').textContent = view.currentStep ? `· ${view.currentStep}` : '';
  $('bar').value = view.progress ?? 0;
  $('percent').textContent = `${Math.round((view.progress ?? 0) * 100)} %`;
  $('cancel').disabled = isTerminal(view.status) || view.cancelRequested;
  if (view.timeline) renderTimeline(view.timeline);
}

$('submit').addEventListener('submit', async (event) => {
  event.preventDefault();
  watching?.abort();
  showError(null);
  const created = await client.createTask({ type: 'sleep', payload: { ms: Number($('ms').value) } });
  if (created.error) return showError(created.error);
  render(created.data);
  watching = new AbortController();
  const done = await client.watchTask(created.data.id, render, { signal: watching.signal });
  if (done.error && done.error.kind !== 'aborted') showError(done.error);
});

$('cancel').addEventListener('click', async () => {
  if (!current) return;
  $('cancel').disabled = true;
  const answer = await client.cancelTask(current.id);
  // The new state arrives through the stream; only a refusal needs showing here.
  if (answer.error) showError(answer.error);
});
