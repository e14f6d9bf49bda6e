import assert from 'node:assert/strict';
import { drainSessions, type Closable } from '../lib/drain';

function sessions(n: number): { live: Set<Closable>; closedAt: number[] } {
  const live = new Set<Closable>();
  const closedAt: number[] = [];
  for (let i = 0; i < n; i++) {
    const s: Closable = { close: () => { live.delete(s); closedAt.push(Date.now()); } };
    live.add(s);
  }
  return { live, closedAt };
}

describe('drainSessions', function () {
  this.timeout(30_000);

  it('closes every session over the window in batches, not at once', async () => {
    const { live, closedAt } = sessions(300);
    const began = Date.now();
    const report = await drainSessions({ windowMs: 2000, noticeMs: 0, sessions: () => live });
    assert.equal(live.size, 0);
    assert.equal(report.closed, 300);
    assert.ok(report.batches.length >= 8, `batches: ${report.batches.length}`);
    // No quarter of the window closes more than half of the sessions.
    const quarter = 500;
    for (let t = began; t < began + 2000; t += quarter) {
      const n = closedAt.filter((c) => c >= t && c < t + quarter).length;
      assert.ok(n <= 150, `${n} closed in [${t - began}, ${t - began + quarter}) ms`);
    }
    assert.ok(report.tookMs <= 3500, `took ${report.tookMs} ms`);
  });

  it('waits the notice time first, picks up late arrivals, and closes all at once with a zero window', async () => {
    const { live } = sessions(10);
    const began = Date.now();
    let late = false;
    const report = await drainSessions({
      windowMs: 0, noticeMs: 300,
      sessions: () => {
        if (!late) {
          late = true;
          for (let i = 0; i < 5; i++) {
            const s: Closable = { close: () => void live.delete(s) };
            live.add(s);
          }
        }
        return live;
      },
    });
    assert.ok(Date.now() - began >= 290);
    assert.equal(report.batches[0]?.closed, 15);
    assert.equal(live.size, 0);
  });

  it('keeps going when a session throws on close', async () => {
    const { live } = sessions(5);
    const bad: Closable = { close: () => { live.delete(bad); throw new Error('already gone'); } };
    live.add(bad);
    const report = await drainSessions({ windowMs: 200, noticeMs: 0, sessions: () => live });
    assert.equal(live.size, 0);
    assert.equal(report.closed, 6);
  });
});
