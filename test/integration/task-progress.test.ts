import { startStack, type Stack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';

interface View {
  status: string;
  currentStep: string | null;
  progress: number | null;
  timeline: { event: string; at: string; attempt?: number; outcome?: string }[];
}

describe('GET /tasks/{id} shows where a running task is', () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await startStack();
  });

  afterAll(async () => {
    await stack.stop();
  });

  it('shows the step and progress the handler sets while it runs, then a timeline of created, published, started and finished', async () => {
    const res = await fetch(`${stack.urls.api}/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'sleep', payload: { ms: 3000 } }),
    });
    expect(res.status).toBe(202);
    const location = `${stack.urls.api}${res.headers.get('location')}`;
    const view = async () => (await (await fetch(location)).json()) as View;

    const running = await waitFor('the step "sleeping" while processing', async () => {
      const v = await view();
      return v.status === 'processing' && v.currentStep === 'sleeping' ? v : undefined;
    });
    // The relay marks a row published after the broker's confirm, so the worker may start first:
    // the order of "published" and "started" is not asserted.
    expect(running.timeline.map((e) => e.event).sort()).toEqual(['created', 'published', 'started']);
    const halfway = await waitFor('progress 0.5 while still processing', async () => {
      const v = await view();
      return v.status === 'processing' && v.progress === 0.5 ? v : undefined;
    });
    expect(halfway.currentStep).toBe('sleeping');

    const done = await waitFor('the task to succeed', async () => {
      const v = await view();
      return v.status === 'succeeded' ? v : undefined;
    });
    expect(done.progress).toBe(1);
    expect(done.timeline).toHaveLength(4);
    expect(done.timeline).toEqual(
      expect.arrayContaining([
        { event: 'created', at: expect.any(String) },
        { event: 'published', at: expect.any(String), attempt: 1 },
        { event: 'started', at: expect.any(String), attempt: 1, externalJobId: expect.any(String) },
        { event: 'finished', at: expect.any(String), attempt: 1, outcome: 'succeeded' },
      ]),
    );
    expect(done.timeline[0]?.event).toBe('created');
    expect(done.timeline[3]?.event).toBe('finished');
  });

  it('stops api, relay and worker with exit code 0', async () => {
    expect(await stack.stop()).toEqual([0, 0, 0]);
  });
});
