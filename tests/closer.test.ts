import assert from 'node:assert/strict';
import { SessionCloser } from '../lib/closer';
import { eventually } from './support/wait';

function sessions(n: number): { list: { close(): void }[]; closedAt: number[] } {
  const closedAt: number[] = [];
  const list = Array.from({ length: n }, () => ({ close: () => void closedAt.push(Date.now()) }));
  return { list, closedAt };
}

describe('SessionCloser', () => {
  it('paces rebalancing closes one per interval, never two within it', async () => {
    const closer = new SessionCloser();
    const { list, closedAt } = sessions(8);
    const start = Date.now();
    assert.equal(closer.pace(list, 'rebalance', 40, start), 8);
    await eventually(() => closedAt.length === 8, 'all closed', 5000, 10);
    for (let i = 1; i < closedAt.length; i++) {
      assert.ok((closedAt[i] as number) - (closedAt[i - 1] as number) >= 39, `gap ${i}: ${(closedAt[i] as number) - (closedAt[i - 1] as number)} ms`);
    }
    assert.deepEqual(closer.counts(), { drain: 0, rebalance: 8 });
  });

  it('never closes a session twice, and a drain stops rebalancing closes at once', async () => {
    const closer = new SessionCloser();
    const { list, closedAt } = sessions(6);
    closer.pace(list, 'rebalance', 30, Date.now());
    assert.equal(closer.pace(list, 'rebalance', 30, Date.now()), 0, 'already closing');
    closer.beginDrain();
    assert.equal(closer.pace(sessions(2).list, 'rebalance', 30, Date.now()), 0, 'no rebalancing while draining');
    const { list: more, closedAt: drained } = sessions(3);
    // The first rebalancing close was due at once; the other five are the drain's now.
    assert.equal(closedAt.length, 1);
    assert.equal(closer.close([...more, ...list], 'drain'), 8, 'the drain closes what rebalancing had queued, not the one it closed');
    await eventually(() => drained.length === 3 && closedAt.length === 6, 'drained', 2000, 10);
    assert.deepEqual(closer.counts(), { drain: 8, rebalance: 1 });
  });
});
