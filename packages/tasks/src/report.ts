import { z } from 'zod';
import { abortable, defineTaskType } from '@taskbox/shared';

/** A wait that the task's AbortSignal cuts short (a cancel, a shutdown). */
function pause(signal: AbortSignal, ms: number): Promise<void> {
  return abortable(signal, (onAbort) => {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      onAbort(() => clearTimeout(timer));
    });
  });
}

// What a generated section weighs, for a size that grows with the work done.
const BYTES_PER_SECTION = 4096;

/**
 * "Generate the report": the shape of a long task (gather, one step per section, render), with a
 * step and progress after each part, cancellable at any wait. It runs on a queue of its own so that
 * ten of them never hold every slot that quick tasks need (README, "Queues").
 */
export const report = defineTaskType({
  name: 'report',
  queue: 'reports',
  maxAttempts: 2,
  payload: z
    .object({
      title: z.string().min(1).max(200),
      sections: z.array(z.string().min(1).max(200)).min(1).max(50),
      // Up to a minute a section: 51 waits fit in the hour a run may take.
      msPerSection: z.number().int().min(0).max(60_000).default(1000),
    })
    .strict(),
  timeoutMs: 3_600_000,
  result: z.object({ title: z.string(), sections: z.number().int(), bytes: z.number().int(), url: z.string() }),
  async run({ taskId, payload, signal, step, progress }) {
    const parts = payload.sections.length + 2;
    await step('gathering data');
    await pause(signal, payload.msPerSection);
    await progress(1 / parts);
    for (const [i, section] of payload.sections.entries()) {
      await step(`writing "${section}"`);
      await pause(signal, payload.msPerSection);
      await progress((i + 2) / parts);
    }
    await step('rendering');
    await progress(1);
    const bytes = BYTES_PER_SECTION * payload.sections.length + Buffer.byteLength(payload.title);
    return {
      title: payload.title,
      sections: payload.sections.length,
      bytes,
      url: `/reports/${taskId}.pdf`,
    };
  },
});
