/** The bounded tables a request can grow (issue 12, item 8): replay guard and local poll table. */
import assert from 'node:assert/strict';
import { HOP_WINDOW_MS, ReplayGuard } from '../lib/balancer/hop';
import { LocalSessions } from '../lib/local-sessions';

describe('bounded tables', () => {
  describe('ReplayGuard', () => {
    it('refuses a nonce seen within the window and remembers it as long as a header carrying it could verify', () => {
      let now = 1_000_000;
      const guard = new ReplayGuard(1000, () => now);
      assert.equal(guard.check('n1', now), false);
      assert.equal(guard.check('n1', now), true);
      // A header stamped up to a window ahead of our clock still verifies a window later.
      assert.equal(guard.check('n2', now + HOP_WINDOW_MS), false);
      now += 2 * HOP_WINDOW_MS;
      assert.equal(guard.check('n2', now - 2 * HOP_WINDOW_MS + HOP_WINDOW_MS), true, 'still remembered');
    });

    it('forgets expired nonces on the request path, oldest first, without a periodic prune', () => {
      let now = 0;
      const guard = new ReplayGuard(100_000, () => now);
      for (let i = 0; i < 50_000; i++) guard.check(`a${i}`, now);
      assert.equal(guard.size, 50_000);
      now += 2 * HOP_WINDOW_MS + 1;
      guard.check('b0', now);
      assert.equal(guard.size, 1, 'the expired ones went with the next check');
    });

    it('holds at most its cap: when full of live nonces the oldest go first', () => {
      const now = 0;
      const guard = new ReplayGuard(1000, () => now);
      for (let i = 0; i < 5000; i++) guard.check(`n${i}`, now);
      assert.equal(guard.size, 1000);
      assert.equal(guard.check('n4999', now), true, 'the newest are remembered');
      assert.equal(guard.size, 1000);
    });
    it('keeps nonces for as long as it is told (drain commands: their whole acceptance window)', () => {
      let now = 0;
      const guard = new ReplayGuard(256, () => now, 6 * 60_000);
      assert.equal(guard.check('drain-1', 0), false);
      now += 5 * 60_000;
      assert.equal(guard.check('drain-1', 0), true, 'a replay 5 min later is refused');
      now += 60_001;
      guard.check('drain-2', 0);
      assert.equal(guard.size, 1, 'forgotten once its request could no longer be accepted');
      for (let i = 0; i < 1000; i++) guard.check(`d${i}`, 0);
      assert.equal(guard.size, 256, 'and never more than its cap');
    });
  });

  describe('LocalSessions (the poll table behind the fallback session count)', () => {
    it('counts websockets and recently polled sessions, forgets idle ones, and holds at most its cap', () => {
      const local = new LocalSessions(100, 60_000);
      for (let i = 0; i < 1000; i++) local.polled(`s${i}`, 0);
      assert.equal(local.count(0), 100);
      assert.equal(local.count(60_001), 0);
    });
  });
});
