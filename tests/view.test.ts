import assert from 'node:assert/strict';
import type { EntryDoc, MemberState } from '../lib/discovery/entry';
import { buildView, diffViews, emptyView, memberFrom, type Member, type MembershipView, type Observed } from '../lib/discovery/view';
import { endpointHash } from '../lib/sign';

const STALE_MS = 5000;

interface Spec {
  readonly service?: string;
  readonly state?: MemberState;
  readonly endpoint?: string;
  readonly balancer?: string | null;
  readonly sessions?: number;
  readonly ageMs?: number;
  readonly appVersion?: string;
}

function entry(id: string, spec: Spec = {}): EntryDoc {
  const endpoint = spec.endpoint ?? `http://${id}.internal:3000`;
  return {
    _id: id,
    service: spec.service ?? 'web',
    endpoint,
    endpointHash: endpointHash(endpoint),
    balancer: spec.balancer ?? null,
    state: spec.state ?? 'serving',
    appVersion: spec.appVersion ?? '1.0.0',
    pkgVersion: '0.1.0',
    host: `${id}.internal`,
    pid: 7,
    startedAt: new Date(1_000_000),
    heartbeatAt: new Date(2_000_000),
    heartbeatMs: 1000,
    seq: 3,
    servingMs: 60_000,
    load: { sessions: spec.sessions ?? 0, capacity: 100, elu: 0.1, delayMs: 1, cpu: 0.1, rss: 1 },
    sig: null,
  };
}

const obs = (id: string, spec: Spec = {}): Observed => ({ entry: entry(id, spec), ageMs: spec.ageMs ?? 250 });
const me = (id: string, spec: Spec = {}): Member =>
  Object.freeze({ ...memberFrom({ entry: entry(id, spec), ageMs: 0 }, STALE_MS), self: true, healthy: true });

function view(self: Member | null, ...observed: Observed[]): MembershipView {
  return buildView({ at: 42, observed, self, staleMs: STALE_MS, discoveryOk: true, stale: false });
}

const ids = (ms: readonly Member[] | undefined): string[] => (ms ?? []).map((m) => m.id);

describe('membership view', () => {
  describe('memberFrom', () => {
    it('copies the entry and judges health by heartbeat age against the stale horizon', () => {
      const m = memberFrom({ entry: entry('a', { balancer: 'https://lb.example.com', state: 'draining' }), ageMs: 1234.6 }, STALE_MS);
      assert.deepEqual(m, {
        id: 'a', service: 'web', endpoint: 'http://a.internal:3000', endpointHash: endpointHash('http://a.internal:3000'),
        balancer: 'https://lb.example.com', state: 'draining', healthy: true, self: false, appVersion: '1.0.0', pkgVersion: '0.1.0',
        host: 'a.internal', pid: 7, startedAt: 1_000_000, heartbeatAgeMs: 1235, heartbeatAt: 2_000_000, heartbeatMs: 1000, servingMs: 0,
        load: { sessions: 0, capacity: 100, elu: 0.1, delayMs: 1, cpu: 0.1, rss: 1 },
      });
      assert.ok(Object.isFrozen(m));
    });

    it('is unhealthy from exactly the stale horizon on', () => {
      assert.equal(memberFrom({ entry: entry('a'), ageMs: STALE_MS - 1 }, STALE_MS).healthy, true);
      assert.equal(memberFrom({ entry: entry('a'), ageMs: STALE_MS }, STALE_MS).healthy, false);
      assert.equal(memberFrom({ entry: entry('a'), ageMs: 1e9 }, STALE_MS).healthy, false);
    });

    it('never reports a negative heartbeat age', () => {
      assert.equal(memberFrom({ entry: entry('a'), ageMs: -50 }, STALE_MS).heartbeatAgeMs, 0);
    });
  });

  describe('buildView', () => {
    it('sorts members by id and indexes them by id', () => {
      const v = view(me('m'), obs('z'), obs('b'), obs('a2'), obs('a10'), obs('B'));
      assert.deepEqual(ids(v.members), ['B', 'a10', 'a2', 'b', 'm', 'z']);
      assert.deepEqual([...v.byId.keys()], ids(v.members));
      assert.equal(v.byId.get('z')?.endpoint, 'http://z.internal:3000');
    });

    it('uses the self member in place of its own entry from the collection', () => {
      const self = me('a', { sessions: 50 });
      const v = view(self, obs('a', { sessions: 1, ageMs: 1e9, state: 'draining' }), obs('b'));
      assert.equal(v.members.length, 2);
      assert.equal(v.self, self);
      assert.equal(v.byId.get('a'), self);
      assert.equal(v.byId.get('a')?.load.sessions, 50);
      assert.equal(v.members.filter((m) => m.self).length, 1);
    });

    it('works without a self member', () => {
      const v = view(null, obs('a'), obs('b'));
      assert.equal(v.self, null);
      assert.deepEqual(ids(v.members), ['a', 'b']);
      assert.ok(v.members.every((m) => !m.self));
    });

    it('groups members by service, each group sorted by id', () => {
      const v = view(me('c', { service: 'api' }), obs('b'), obs('a'), obs('d', { service: 'api' }), obs('e', { service: 'chat', ageMs: 1e9 }));
      assert.deepEqual(ids(v.byService.get('web')), ['a', 'b']);
      assert.deepEqual(ids(v.byService.get('api')), ['c', 'd']);
      assert.deepEqual(ids(v.byService.get('chat')), ['e'], 'unhealthy members are still listed');
      assert.equal(v.byService.get('nope'), undefined);
    });

    it('indexes members by endpoint hash', () => {
      const v = view(me('a'), obs('b'));
      assert.equal(v.byEndpointHash.get(endpointHash('http://b.internal:3000'))?.id, 'b');
      assert.equal(v.byEndpointHash.get(endpointHash('http://a.internal:3000'))?.id, 'a');
      assert.equal(v.byEndpointHash.size, 2);
    });

    it('prefers the healthy claimant of a duplicated endpoint, in either order', () => {
      const shared = 'http://10.0.0.1:3000';
      const h = endpointHash(shared);
      assert.equal(view(null, obs('a', { endpoint: shared, ageMs: 1e9 }), obs('b', { endpoint: shared })).byEndpointHash.get(h)?.id, 'b');
      assert.equal(view(null, obs('a', { endpoint: shared }), obs('b', { endpoint: shared, ageMs: 1e9 })).byEndpointHash.get(h)?.id, 'a');
      // Two healthy claimants: the first by id keeps it.
      assert.equal(view(null, obs('b', { endpoint: shared }), obs('a', { endpoint: shared })).byEndpointHash.get(h)?.id, 'a');
    });

    it('prefers this instance for its own endpoint over any other claimant', () => {
      const shared = 'http://10.0.0.1:3000';
      const h = endpointHash(shared);
      for (const self of ['a', 'm', 'z']) {
        const others = ['a', 'm', 'z'].filter((id) => id !== self).map((id) => obs(id, { endpoint: shared }));
        assert.equal(view(me(self, { endpoint: shared }), ...others).byEndpointHash.get(h)?.id, self);
      }
    });

    it('lists duplicated endpoints among healthy claimants only', () => {
      const shared = 'http://10.0.0.1:3000';
      const v = view(me('s', { endpoint: shared }), obs('a', { endpoint: shared }), obs('b', { endpoint: shared, ageMs: 1e9 }),
        obs('c', { endpoint: shared }), obs('d'));
      assert.deepEqual(v.duplicates, [{ endpoint: shared, ids: ['a', 'c', 's'] }]);
      assert.deepEqual(view(me('s'), obs('a', { endpoint: 'http://s.internal:3000', ageMs: 1e9 })).duplicates, []);
      assert.deepEqual(view(null, obs('a'), obs('b')).duplicates, []);
    });

    it('lists members that advertise a balancer URL', () => {
      const v = view(me('a', { balancer: 'https://a.example.com' }), obs('b'), obs('c', { balancer: 'https://c.example.com', ageMs: 1e9 }));
      assert.deepEqual(ids(v.balancers), ['a', 'c']);
    });

    it('carries at, discoveryOk and stale through', () => {
      const v = buildView({ at: 99, observed: [], self: null, staleMs: STALE_MS, discoveryOk: false, stale: true });
      assert.equal(v.at, 99);
      assert.equal(v.discoveryOk, false);
      assert.equal(v.stale, true);
    });

    it('is frozen', () => {
      const v = view(me('a'), obs('b', { endpoint: 'http://a.internal:3000' }));
      assert.ok(Object.isFrozen(v));
      assert.ok(Object.isFrozen(v.members));
      assert.ok(Object.isFrozen(v.balancers));
      assert.ok(Object.isFrozen(v.duplicates));
      assert.ok(v.duplicates.every((d) => Object.isFrozen(d) && Object.isFrozen(d.ids)));
      assert.ok(v.members.every((m) => Object.isFrozen(m)));
    });

    it('does not depend on the order of observations', () => {
      const list = [obs('c', { service: 'api' }), obs('a'), obs('b', { balancer: 'https://b.example.com' }), obs('d', { endpoint: 'http://a.internal:3000' })];
      const forward = view(me('e'), ...list);
      const backward = view(me('e'), ...[...list].reverse());
      assert.deepEqual(forward.members, backward.members);
      assert.deepEqual([...forward.byService], [...backward.byService]);
      assert.deepEqual([...forward.byEndpointHash].sort(), [...backward.byEndpointHash].sort());
      assert.deepEqual(forward.duplicates, backward.duplicates);
    });
  });

  describe('emptyView', () => {
    it('holds only this instance and says discovery has not answered', () => {
      const self = me('a');
      const v = emptyView(self, 5);
      assert.deepEqual(ids(v.members), ['a']);
      assert.equal(v.self, self);
      assert.equal(v.discoveryOk, false);
      assert.equal(v.stale, false);
      assert.equal(v.at, 5);
      assert.deepEqual(ids(v.byService.get('web')), ['a']);
      assert.deepEqual(emptyView(null, 0).members, []);
    });
  });

  describe('diffViews', () => {
    it('reports joined and left members', () => {
      const d = diffViews(view(me('a'), obs('b'), obs('c')), view(me('a'), obs('c'), obs('d'), obs('e')));
      assert.deepEqual(ids(d.joined), ['d', 'e']);
      assert.deepEqual(ids(d.left), ['b']);
      assert.deepEqual(d.changed, []);
    });

    it('reports a change of state, health, endpoint or balancer', () => {
      const before = view(me('a'), obs('s'), obs('h'), obs('e'), obs('b'));
      const after = view(me('a'), obs('s', { state: 'draining' }), obs('h', { ageMs: 1e9 }), obs('e', { endpoint: 'http://e2.internal:3000' }),
        obs('b', { balancer: 'https://b.example.com' }));
      const d = diffViews(before, after);
      assert.deepEqual(d.changed.map((c) => c.after.id), ['b', 'e', 'h', 's']);
      for (const c of d.changed) {
        assert.equal(c.before, before.byId.get(c.after.id));
        assert.equal(c.after, after.byId.get(c.after.id));
      }
      assert.deepEqual(d.joined, []);
      assert.deepEqual(d.left, []);
    });

    it('does not report load, heartbeat age or version changes', () => {
      const before = view(me('a', { sessions: 1 }), obs('b', { sessions: 1, ageMs: 10 }));
      const after = view(me('a', { sessions: 90 }), obs('b', { sessions: 70, ageMs: 4000, appVersion: '1.0.1' }));
      assert.deepEqual(diffViews(before, after), { joined: [], left: [], changed: [] });
    });

    it('treats a recovered member as changed, not joined', () => {
      const d = diffViews(view(null, obs('b', { ageMs: 1e9 })), view(null, obs('b')));
      assert.deepEqual(d.joined, []);
      assert.equal(d.changed.length, 1);
      assert.equal(d.changed[0]?.before.healthy, false);
      assert.equal(d.changed[0]?.after.healthy, true);
    });

    it('sees everything joining from an empty view and leaving into one', () => {
      const full = view(me('a'), obs('b'));
      assert.deepEqual(ids(diffViews(emptyView(null, 0), full).joined), ['a', 'b']);
      assert.deepEqual(ids(diffViews(full, emptyView(null, 0)).left), ['a', 'b']);
      assert.deepEqual(diffViews(full, full), { joined: [], left: [], changed: [] });
    });
  });
});

describe('membership view: serving time', () => {
  it('adds the observed heartbeat age to the serving time a serving member reported', () => {
    const base = memberFrom({ entry: { ...entryForServing(), state: 'serving', servingMs: 10_000 }, ageMs: 700 }, 5000);
    assert.equal(base.servingMs, 10_700);
    const draining = memberFrom({ entry: { ...entryForServing(), state: 'draining', servingMs: 10_000 }, ageMs: 700 }, 5000);
    assert.equal(draining.servingMs, 0);
  });
});

function entryForServing(): import('../lib/discovery/entry').EntryDoc {
  return {
    _id: 's', service: 'web', endpoint: 'http://s:1', endpointHash: endpointHash('http://s:1'), balancer: null, state: 'serving',
    appVersion: null, pkgVersion: '0', host: 'h', pid: 1, startedAt: new Date(0), heartbeatAt: new Date(0), heartbeatMs: 1000,
    seq: 1, servingMs: 0, load: { sessions: 0, capacity: 1, elu: 0, delayMs: 0, cpu: 0, rss: 0 }, sig: null,
  };
}
