import assert from 'node:assert/strict';
import { MAX_EXTRAPOLATE_MS, PendingLoad, type LoadReport } from '../lib/balancer/pending';

const report = (at: number, sessions: number, opened: number | null): LoadReport => ({ at, sessions, opened });

describe('pending load (sessions routed to a member that its report does not include yet)', () => {
  it('retires entries as the member reports having opened them, even when they closed before the report', () => {
    const p = new PendingLoad(10_000);
    for (let k = 0; k < 5; k++) p.add('b', report(1000, 0, 0), 1000 + k);
    assert.equal(p.routed('b', report(1000, 0, 0), 1010), 5);
    // Three opened and closed again before the next report: the live count did not grow.
    assert.equal(p.routed('b', report(1500, 0, 3), 1500), 2);
    assert.equal(p.routed('b', report(2000, 2, 5), 2000), 0);
  });

  it('falls back to the growth of the live count for members that do not report what they opened', () => {
    const p = new PendingLoad(10_000);
    for (let k = 0; k < 4; k++) p.add('b', report(1000, 10, null), 1000);
    assert.equal(p.routed('b', report(1000, 10, null), 1001), 4, 'same report: nothing retired');
    assert.equal(p.routed('b', report(1500, 13, null), 1500), 1);
    assert.equal(p.routed('b', report(2000, 12, null), 2000), 1, 'a shrinking count retires nothing');
  });

  it('never retires more than were routed, nor goes back on an older report', () => {
    const p = new PendingLoad(10_000);
    p.add('b', report(1000, 0, 10), 1000);
    p.add('b', report(1000, 0, 10), 1000);
    assert.equal(p.routed('b', report(900, 0, 8), 1100), 2, 'an older report arriving late');
    assert.equal(p.routed('b', report(1500, 1, 11), 1500), 1);
    p.add('b', report(1500, 1, 11), 1600);
    assert.equal(p.routed('b', report(2000, 30, 40), 2000), 0);
  });

  it('expires entries whose session never opened', () => {
    const p = new PendingLoad(10_000);
    p.add('b', report(1000, 0, 0), 1000);
    assert.equal(p.routed('b', report(1000, 0, 0), 10_999), 1);
    assert.equal(p.routed('b', report(1000, 0, 0), 11_000), 0);
  });

  it('counts a live report (this instance) exactly: entries go as soon as its opened count grows', () => {
    const p = new PendingLoad(10_000);
    const live = (sessions: number, opened: number): LoadReport => ({ at: 0, sessions, opened, live: true });
    p.landed(1000);
    p.add('me', live(3, 7), 1000);
    p.landed(1001);
    p.add('me', live(3, 7), 1001);
    assert.equal(p.count('me', live(3, 7), 1002), 2);
    assert.equal(p.count('me', live(4, 8), 1003), 1);
    assert.equal(p.count('me', live(4, 9), 1004), 0);
  });

  describe('sessions a peer opened for others since its report', () => {
    /** Reports every 20 ms in which b opened `perReport` sessions nobody here routed to it. */
    function busy(p: PendingLoad, perReport: number, reports: number, t0 = 1000): number {
      let opened = 0;
      let t = t0;
      for (let k = 0; k < reports; k++) {
        p.count('b', report(t, opened, opened), t);
        opened += perReport;
        t += 20;
      }
      return t;
    }

    it('adds their recent rate times the age of the report', () => {
      const p = new PendingLoad(10_000);
      const t = busy(p, 2, 6) - 20; // the last report, at t: 0.1 sessions/ms
      assert.equal(p.count('b', report(t, 10, 10), t), 0, 'a report used at once');
      assert.ok(Math.abs(p.count('b', report(t, 10, 10), t + 30) - 3) < 1e-9);
      assert.ok(Math.abs(p.count('b', report(t, 10, 10), t + 10_000) - 0.1 * MAX_EXTRAPOLATE_MS) < 1e-9, 'capped');
    });

    it('adds nothing for sessions this balancer routed there (a burst entering one instance)', () => {
      const p = new PendingLoad(10_000);
      let t = 1000;
      for (let k = 0; k < 10; k++) {
        p.add('b', report(t, k, k), t);
        t += 20;
        p.count('b', report(t, k + 1, k + 1), t);
      }
      assert.equal(p.count('b', report(t, 10, 10), t + 100), 0);
    });

    it('takes sessions a peer kept for itself once, when it kept them, not again when they open', () => {
      const p = new PendingLoad(10_000);
      const r = (at: number, opened: number, pending: number): LoadReport => ({ at, sessions: 0, opened, pending });
      p.count('b', r(1000, 0, 0), 1000);
      p.count('b', r(1020, 0, 4), 1020); // kept 4 (SockJS info answered)
      p.count('b', r(1040, 4, 0), 1040); // they opened
      p.count('b', r(1060, 4, 0), 1060);
      // 4 in 60 ms, not 8.
      assert.ok(Math.abs(p.count('b', r(1060, 4, 0), 1090) - (4 / 60) * 30) < 1e-9);
    });

    it('forgets a rate once reports show no more', () => {
      const q = new PendingLoad(10_000);
      const t = busy(q, 2, 6);
      // Then quiet: reports every 500 ms with nothing new; the window slides past the burst.
      let last = t;
      for (let k = 0; k < 4; k++) {
        last = t + 500 * k;
        q.count('b', report(last, 10, 10), last);
      }
      assert.equal(q.count('b', report(last, 10, 10), last + 100), 0);
    });

    it('counts only what this balancer kept since `heldAt` when a live feed vouches for an older report', () => {
      const p = new PendingLoad(10_000);
      p.count('b', report(1000, 0, 0), 1000);
      for (const t of [1001, 1002, 1003, 1004, 1095, 1096]) p.landed(t);
      // Without a feed the report of 1000 is 100 ms old: everything kept since then is assumed to have reached b too.
      assert.equal(p.count('b', report(1000, 0, 0), 1100), 6);
      // A feed silent since then vouches for the figures until 1090: only what was kept after that.
      assert.equal(p.count('b', { ...report(1000, 0, 0), heldAt: 1090 }, 1100), 2);
      // A feed can't make figures older than their report.
      assert.equal(p.count('b', { ...report(1000, 0, 0), heldAt: 900 }, 1100), 6);
    });

    it('scales what it kept since `heldAt` by how the peer\'s arrivals compared up to `heldAt`, not only up to its last report', () => {
      const run = (heldAt: number | null): number => {
        const p = new PendingLoad(10_000);
        p.count('b', report(1000, 0, 0), 1000);
        p.count('b', report(1050, 0, 0), 1050);
        // Eight kept here while b's figures held (its feed beat, nothing changed), then two more.
        for (let t = 1051; t <= 1058; t++) p.landed(t);
        p.landed(1081);
        p.landed(1082);
        return p.count('b', { ...report(1050, 0, 0), heldAt }, 1083);
      };
      // Up to 1075 (heldAt less the show lag) b took none of its own while this balancer kept 8:
      // ratio (0 + 2) / (8 + 2), times the 2 kept since heldAt.
      assert.ok(Math.abs(run(1080) - 0.4) < 1e-9, String(run(1080)));
      // Without heldAt the ratio knows nothing after b's report (even arrival: 1): all 8 + 2 kept since.
      assert.equal(run(null), 10);
    });

    it('starts a burst from idle from the arrival pattern last measured, not from even arrival', () => {
      const run = (learn: boolean): number => {
        const p = new PendingLoad(10_000);
        p.count('b', report(1000, 0, 0), 1000);
        p.count('b', report(1050, 0, 0), 1050);
        if (learn) {
          // Every session entered here: 8 kept while b's figures held, b took none of its own.
          for (let t = 1051; t <= 1058; t++) p.landed(t);
          p.landed(1081);
          p.count('b', { ...report(1050, 0, 0), heldAt: 1080 }, 1083);
        }
        // Seconds later, a burst from idle: two kept here within b's quiet tick.
        p.landed(5001);
        p.landed(5002);
        return p.count('b', { ...report(1050, 0, 0), heldAt: 4993 }, 5003);
      };
      assert.equal(run(false), 2, 'nothing measured yet: even arrival, b took as many');
      // Last time b took none of its own while 8 were kept here: (0 + 2) / (8 + 2) of what is kept now.
      assert.ok(Math.abs(run(true) - 0.4) < 1e-9, `clients all entered here last time: ${run(true)}`);
    });

    it('without reports at least 40 ms apart in the last second, assumes as many as this balancer kept since the report', () => {
      const p = new PendingLoad(10_000);
      p.count('b', report(1000, 0, 0), 1000);
      p.landed(1001);
      p.landed(1002);
      assert.equal(p.count('b', report(1000, 0, 0), 1005), 2, 'a burst from idle: even arrival assumed');
      // A report taken at 1002 (by b's clock), first used at 1010: what this balancer kept after 1002.
      p.landed(1003);
      assert.equal(p.count('b', report(1002, 0, 0), 1010), 1, 'counted from the report');
      p.landed(1011);
      assert.equal(p.count('b', report(1002, 0, 0), 1012), 2, '10 ms of reports: no rate yet');
      // Reports 40 ms apart (the first one counts) that show nothing opened for others while this
      // balancer kept 4: the assumption gives way in proportion, (0 + 2) / (4 + 2) of what it kept since.
      p.count('b', report(1050, 0, 0), 1050);
      p.landed(1051);
      assert.ok(Math.abs(p.count('b', report(1050, 0, 0), 1060) - 1 / 3) < 1e-9);
      // After a quiet spell (no recent reports), the assumption holds again.
      p.count('b', report(5000, 0, 0), 5000);
      p.landed(5000.5);
      assert.equal(p.count('b', report(5000, 0, 0), 5001), 1);
    });

    /**
     * For 200 ms this balancer keeps 2 new sessions every 20 ms, and b reports every 20 ms having
     * taken `peerPerRound` for itself meanwhile; then this balancer keeps 3 more. Returns the time
     * of b's last report.
     */
    const rounds = (p: PendingLoad, peerPerRound: number): number => {
      p.count('b', report(0, 0, 0), 0);
      let t = 0;
      for (let k = 1; k <= 10; k++) {
        t = 20 * k;
        p.landed(t - 10);
        p.landed(t - 5);
        p.count('b', report(t, peerPerRound * k, peerPerRound * k), t);
      }
      for (const dt of [2, 4, 6]) p.landed(t + dt);
      return t;
    };

    it('keeps assuming what this balancer kept since the report while reports show the peer taking as many (even arrival, faster than its rate)', () => {
      const p = new PendingLoad(10_000);
      const t = rounds(p, 2);
      // 3 kept since b's last report: the smoothed rate says 0.8 (8 ms of 0.1/ms), the even arrival b's reports show says 3.
      assert.ok(p.count('b', report(t, 20, 20), t + 8) >= 2.5, String(p.count('b', report(t, 20, 20), t + 8)));
    });

    it('gives the even-arrival assumption up as reports show every session entering here (one entry point)', () => {
      const p = new PendingLoad(10_000);
      // b's reports show nothing new.
      const t = rounds(p, 0);
      // Over its last 8 sessions b took none: (0 + 2) / (8 + 2) of the 3 kept since.
      assert.ok(Math.abs(p.count('b', report(t, 0, 0), t + 8) - 0.6) < 1e-9, String(p.count('b', report(t, 0, 0), t + 8)));
    });

    it('takes a report for no older than 50 ms more than since it was first used (clocks that disagree)', () => {
      const p = new PendingLoad(10_000);
      p.count('b', report(0, 0, 0), 1000);
      for (let t = 900; t <= 1000; t += 10) p.landed(t);
      // By b's clock the report is a second old; first used at 1000, so it counts from 950.
      assert.equal(p.count('b', report(0, 0, 0), 1000), 5);
    });
  });
});
