import type { ConsumeMessage } from 'amqplib';
import { DELIVERY_LIMIT } from '@taskbox/shared';
import { createUnhandledCounts, UNHANDLED_IN_A_ROW } from '../../services/worker/src/dead-letters';

// Only what the counts read of a delivery: its message id, else its body.
const delivery = (messageId: string | undefined, body = '{}') =>
  ({ properties: { messageId }, content: Buffer.from(body) }) as unknown as ConsumeMessage;

describe("the worker's count of a message's unexpected failures in a row", () => {
  it('says dead-letter at the fifth failure in a row, then starts again from none', () => {
    const counts = createUnhandledCounts();
    const answers = Array.from({ length: UNHANDLED_IN_A_ROW * 2 }, () => counts.failed(delivery('m-1')));
    expect(answers.map((dead, i) => (dead ? i + 1 : 0)).filter(Boolean)).toEqual([5, 10]);
  });

  it('starts again after a delivery of the message was handled, and counts each message apart', () => {
    const counts = createUnhandledCounts();
    for (let i = 0; i < UNHANDLED_IN_A_ROW - 1; i++) counts.failed(delivery('m-1'));
    counts.failed(delivery('m-2'));
    counts.handled(delivery('m-1'));
    expect(counts.failed(delivery('m-1'))).toBe(false);
    for (let i = 0; i < UNHANDLED_IN_A_ROW - 2; i++) expect(counts.failed(delivery('m-2'))).toBe(false);
    expect(counts.failed(delivery('m-2'))).toBe(true);
  });

  it('says dead-letter at once when the return would reach the queue’s delivery limit, with a reason', () => {
    const counts = createUnhandledCounts();
    const returned = (n: number) =>
      ({
        properties: { messageId: 'm-3', headers: { 'x-delivery-count': n } },
        content: Buffer.from('{}'),
      }) as unknown as ConsumeMessage;
    expect(counts.failed(returned(DELIVERY_LIMIT - 2))).toBe(false);
    expect(counts.failed(returned(DELIVERY_LIMIT - 1))).toBe(true);
  });

  it('tells messages without an id apart by their body', () => {
    const counts = createUnhandledCounts();
    for (let i = 0; i < UNHANDLED_IN_A_ROW - 1; i++) counts.failed(delivery(undefined, 'a'));
    expect(counts.failed(delivery(undefined, 'b'))).toBe(false);
    expect(counts.failed(delivery(undefined, 'a'))).toBe(true);
  });
});
