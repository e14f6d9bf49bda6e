import assert from 'node:assert/strict';
import { chooseVictims, rebalance, type Candidate, type RebalanceInput, type RebalancePolicy } from '../lib/balancer/rebalance';
import { RecentIntake } from '../lib/balancer/intake';
import { route, type RoutePolicy, type RouteState } from '../lib/balancer/route';
import type { EntryDoc, MemberState } from '../lib/discovery/entry';
import { buildView, memberFrom, type Member, type MembershipView, type Observed } from '../lib/discovery/view';
import { endpointHash } from '../lib/sign';
import { prng } from './support/prng';

const STALE_MS = 5000;

interface Spec {
  readonly sessions?: number;
  readonly capacity?: number;
  readonly state?: MemberState;
  readonly servingMs?: number;
  readonly ageMs?: number;
  readonly service?: string;
}

function entry(id: string, spec: Spec = {}): EntryDoc {
  const endpoint = `http://${id}.internal:3000`;
  return {
    _id: id, service: spec.service ?? 'web', endpoint, endpointHash: endpointHash(endpoint), balancer: null,
    state: spec.state ?? 'serving', appVersion: '1.0.0', pkgVersion: '0.1.0', host: `${id}.internal`, pid: 1,
    startedAt: new Date(1_700_000_000_000), heartbeatAt: new Date(1_700_000_001_000), heartbeatMs: 1000, seq: 1,
    servingMs: spec.servingMs ?? 600_000,
    load: { sessions: spec.sessions ?? 0, capacity: spec.capacity ?? 1000, elu: 0.1, delayMs: 1, cpu: 0.1, rss: 1e8 },
    sig: null,
  };
}
const peer = (id: string, spec: Spec = {}): Observed => ({ entry: entry(id, spec), ageMs: spec.ageMs ?? 200 });
const me = (id: string, spec: Spec = {}): Member => Object.freeze({ ...memberFrom({ entry: entry(id, spec), ageMs: 0 }, STALE_MS), self: true, healthy: true });
const view = (self: Member, ...observed: Observed[]): MembershipView =>
  buildView({ at: 0, observed, self, staleMs: STALE_MS, discoveryOk: true, stale: false });

const POLICY: RebalancePolicy = { tolerance: 0.1, toleranceSessions: 10, ratePerSec: 5, slowStartMs: 30_000 };

function decide(v: MembershipView, selfSessions: number, over: Partial<RebalanceInput> = {}) {
  return rebalance({ members: v.byService.get('web') ?? [], selfSessions, inFlight: 0, shedding: false, budget: 5, policy: POLICY, ...over });
}

describe('rebalance decision', () => {
  it('sheds at most the budget when above its share by both tolerances', () => {
    // 3 × 1000 + a 4th, empty and fully ramped: share 750 each.
    const v = view(me('a', { sessions: 1000 }), peer('b', { sessions: 1000 }), peer('c', { sessions: 1000 }), peer('d', { sessions: 0 }));
    const d = decide(v, 1000);
    assert.equal(d.shedding, true);
    assert.equal(d.close, 5);
    assert.equal(Math.round(d.share), 750);
  });

  it('never sheds at or under its share, or within tolerance', () => {
    const v = view(me('a', { sessions: 100 }), peer('b', { sessions: 300 }), peer('c', { sessions: 300 }));
    assert.equal(decide(v, 100).close, 0);
    // Share 240; 260 is 8 % over: within the relative tolerance.
    const w = view(me('a', { sessions: 260 }), peer('b', { sessions: 230 }), peer('c', { sessions: 230 }));
    assert.deepEqual([decide(w, 260).shedding, decide(w, 260).close], [false, 0]);
  });

  it('needs the absolute tolerance too: small clusters do not move sessions over a handful', () => {
    // Share 10; 18 is 80 % over but only 8 sessions.
    const v = view(me('a', { sessions: 18 }), peer('b', { sessions: 6 }), peer('c', { sessions: 6 }));
    assert.equal(decide(v, 18).shedding, false);
  });

  it('has hysteresis: starts above the tolerance, stops within half of it', () => {
    // Share 300 (900 over 3): start above 330, stop at or under 315.
    const at = (mine: number, shedding: boolean) => {
      const v = view(me('a', { sessions: mine }), peer('b', { sessions: (900 - mine) / 2 }), peer('c', { sessions: (900 - mine) / 2 }));
      return decide(v, mine, { shedding });
    };
    assert.equal(at(324, false).shedding, false, 'not started within tolerance');
    assert.equal(at(324, true).shedding, true, 'keeps going above half the tolerance');
    assert.equal(at(324, true).close, 5);
    assert.equal(at(318, true).close, 3, 'no overshoot past the stop threshold');
    assert.equal(at(314, true).shedding, false, 'stops within half the tolerance');
    assert.equal(at(340, false).shedding, true);
  });

  it('counts sessions in flight, so a burst of closes does not lower the share under it', () => {
    // a closed 15 of its 345: they are reconnecting, not gone. Share with them: 315, stop at 330.75.
    const v = view(me('a', { sessions: 345 }), peer('b', { sessions: 300 }), peer('c', { sessions: 300 }));
    assert.equal(decide(v, 330, { shedding: true }).shedding, true, 'without them the share drops to 310');
    assert.equal(decide(v, 330, { shedding: true, inFlight: 15 }).shedding, false);
  });

  it('ignores unhealthy, draining and other services\' members, and does nothing alone or when not serving', () => {
    const v = view(me('a', { sessions: 500 }), peer('b', { sessions: 0, state: 'draining' }), peer('c', { sessions: 0, ageMs: STALE_MS + 1 }),
      peer('d', { sessions: 0, service: 'chat' }));
    assert.equal(decide(v, 500).reason, 'alone');
    const w = view(me('a', { sessions: 500, state: 'draining' }), peer('b', { sessions: 0 }));
    assert.equal(decide(w, 500).reason, 'not serving');
  });

  it('ramps what it sends a member in slow start, like routing does', () => {
    const young = (servingMs: number) =>
      view(me('a', { sessions: 1000 }), peer('b', { sessions: 1000 }), peer('c', { sessions: 1000 }), peer('d', { sessions: 0, servingMs }));
    const at1s = decide(young(1000), 1000);
    const at15s = decide(young(15_000), 1000);
    const done = decide(young(60_000), 1000);
    assert.equal(at1s.shedding, false, `share at 1 s ${at1s.share}`);
    assert.ok(at15s.share > done.share && at15s.share < at1s.share, `${at1s.share} > ${at15s.share} > ${done.share}`);
    assert.equal(done.shedding, true);
  });

  it('never sheds while in slow start itself (a member that came back keeps its sessions)', () => {
    const v = view(me('a', { sessions: 500, servingMs: 2000 }), peer('b', { sessions: 100 }), peer('c', { sessions: 100 }));
    assert.equal(decide(v, 500).reason, 'ramping');
  });

  it('weighs members by capacity', () => {
    // a has twice the capacity: its share of 900 is 450.
    const v = view(me('a', { sessions: 450, capacity: 2000 }), peer('b', { sessions: 225 }), peer('c', { sessions: 225 }));
    assert.equal(decide(v, 450).shedding, false);
    assert.equal(Math.round(decide(v, 450).share), 450);
  });
});

describe('rebalance victims', () => {
  const c = (id: string, since: number, traits: Candidate<string>['traits'] = {}): Candidate<string> => ({ session: id, since, traits });

  it('never moves a session younger than the minimum age', () => {
    assert.deepEqual(chooseVictims([c('young', 9_500), c('old', 0)], 5, 10_000, 1000), ['old']);
  });

  it('moves idle before busy, hopped before local, fewer subscriptions first, then the oldest', () => {
    const all = [
      c('busy', 0, { busy: true }), c('subs3', 0, { subscriptions: 3 }), c('subs1-new', 500, { subscriptions: 1 }),
      c('subs1-old', 100, { subscriptions: 1 }), c('hopped-subs5', 0, { hopped: true, subscriptions: 5 }),
    ];
    assert.deepEqual(chooseVictims(all, 5, 10_000, 1000), ['hopped-subs5', 'subs1-old', 'subs1-new', 'subs3', 'busy']);
    assert.deepEqual(chooseVictims(all, 0, 10_000, 1000), []);
  });
});

describe('slow start caps the share of new sessions', () => {
  const POLICY_R: RoutePolicy = { selfWeight: 1, hysteresis: 0.05, hysteresisSessions: 2, publicServices: [], uiService: 'web', slowStartMs: 30_000 };

  it('an empty member that just started takes about its ramp share of new sessions, not all of them', () => {
    // The chaos run: a restarted member next to two that served for minutes; before, it took 10 of the first 10.
    const v = view(me('lb', { service: 'lb' }), peer('old1', { sessions: 400 }), peer('old2', { sessions: 400 }), peer('new', { sessions: 0, servingMs: 500 }));
    const intake = new RecentIntake();
    const pending = new Map<string, number>();
    const random = prng(7);
    const took: string[] = [];
    for (let i = 0; i < 30; i++) {
      const st: RouteState = {
        pending: (id) => pending.get(id) ?? 0, selfSessions: null, sessionOwner: null, excluded: new Set(), hop: false, cookieHash: null,
        random, intake: (id) => intake.share(id, 1000 + i),
      };
      const d = route({ facts: { kind: 'info', service: null, pinned: null, localUrl: '/sockjs/info' }, view: v, policy: POLICY_R, state: st });
      assert.equal(d.action, 'pin');
      if (d.action !== 'pin') continue;
      intake.add(d.member.id, 1000 + i);
      pending.set(d.member.id, (pending.get(d.member.id) ?? 0) + 1);
      took.push(d.member.id);
    }
    const fresh = took.filter((id) => id === 'new').length;
    assert.ok(took.slice(0, 10).filter((id) => id === 'new').length <= 1, took.join(','));
    assert.ok(fresh >= 1 && fresh <= 3, `10 % ramp: ${fresh} of 30`);
  });

  it('forgets routed sessions after the window', () => {
    const intake = new RecentIntake(1000);
    intake.add('a', 0);
    intake.add('b', 500);
    assert.deepEqual(intake.share('a', 900), { member: 1, total: 2 });
    assert.deepEqual(intake.share('a', 1200), { member: 0, total: 1 });
  });
});
