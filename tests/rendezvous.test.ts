import assert from 'node:assert/strict';
import { rendezvous } from '../lib/balancer/rendezvous';

interface Candidate {
  readonly id: string;
}

const ids = (...names: string[]): Candidate[] => names.map((id) => ({ id }));
const keys = (n: number, prefix = 'session-'): string[] => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

function assignment(keyList: readonly string[], candidates: readonly Candidate[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const k of keyList) {
    const c = rendezvous(k, candidates);
    assert.ok(c, `no candidate for ${k}`);
    out.set(k, c.id);
  }
  return out;
}

function counts(a: ReadonlyMap<string, string>): Map<string, number> {
  const out = new Map<string, number>();
  for (const id of a.values()) out.set(id, (out.get(id) ?? 0) + 1);
  return out;
}

describe('rendezvous', () => {
  it('returns null with no candidates and the only one with one', () => {
    assert.equal(rendezvous('k', []), null);
    const only = { id: 'a' };
    assert.equal(rendezvous('k', [only]), only);
  });

  it('returns the candidate object itself, extra fields included', () => {
    const members = [{ id: 'a', port: 1 }, { id: 'b', port: 2 }, { id: 'c', port: 3 }];
    const m = rendezvous('xyz', members);
    assert.ok(m && members.includes(m));
  });

  it('is deterministic and independent of candidate order', () => {
    const forward = ids('a', 'b', 'c', 'd', 'e');
    const backward = [...forward].reverse();
    const rotated = [...forward.slice(2), ...forward.slice(0, 2)];
    for (const k of keys(500)) {
      const want = rendezvous(k, forward)?.id;
      assert.equal(rendezvous(k, forward)?.id, want);
      assert.equal(rendezvous(k, backward)?.id, want, k);
      assert.equal(rendezvous(k, rotated)?.id, want, k);
      // Fresh but equal objects (another balancer's view) agree too.
      assert.equal(rendezvous(k, ids('e', 'c', 'a', 'd', 'b'))?.id, want, k);
    }
  });

  it('spreads 3000 keys roughly uniformly over 3 members (each within ±15% of the mean)', () => {
    const c = counts(assignment(keys(3000), ids('member-a', 'member-b', 'member-c')));
    assert.equal(c.size, 3);
    for (const [id, n] of c) assert.ok(n >= 850 && n <= 1150, `${id} got ${n} of 3000`);
  });

  it('spreads keys roughly uniformly over 10 members', () => {
    const members = ids(...Array.from({ length: 10 }, (_, i) => `i-${i}`));
    const c = counts(assignment(keys(10_000, 'k'), members));
    assert.equal(c.size, 10);
    for (const [id, n] of c) assert.ok(n >= 850 && n <= 1150, `${id} got ${n} of 10000`);
  });

  it('moves only the removed member’s keys when one leaves', () => {
    const all = ids('a', 'b', 'c');
    const before = assignment(keys(3000), all);
    const after = assignment(keys(3000), all.filter((m) => m.id !== 'b'));
    let moved = 0;
    for (const [k, owner] of before) {
      if (owner === 'b') {
        moved++;
        assert.notEqual(after.get(k), 'b');
      } else {
        assert.equal(after.get(k), owner, `${k} moved from ${owner} though b left`);
      }
    }
    assert.ok(moved > 0);
    // The orphaned keys spread over both survivors.
    const orphans = [...before].filter(([, o]) => o === 'b').map(([k]) => after.get(k));
    const toA = orphans.filter((o) => o === 'a').length;
    assert.ok(toA > orphans.length * 0.35 && toA < orphans.length * 0.65, `${toA} of ${orphans.length} went to a`);
  });

  it('moves keys only onto a member that joins', () => {
    const before = assignment(keys(3000), ids('a', 'b', 'c'));
    const after = assignment(keys(3000), ids('a', 'b', 'c', 'd'));
    let taken = 0;
    for (const [k, owner] of before) {
      const now = after.get(k);
      if (now !== owner) {
        assert.equal(now, 'd', `${k} moved from ${owner} to ${String(now)}`);
        taken++;
      }
    }
    assert.ok(taken > 3000 * 0.2 && taken < 3000 * 0.3, `d took ${taken} of 3000`);
  });

  it('uses every candidate, even ids that are prefixes of one another', () => {
    const members = ids('a', 'ab');
    const picks = new Set(keys(200).map((k) => rendezvous(k, members)?.id));
    assert.deepEqual([...picks].sort(), ['a', 'ab']);
  });
});
