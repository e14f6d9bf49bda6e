import assert from 'node:assert/strict';
import { checkEntry, signEntry, type EntryCheck, type EntryDoc } from '../lib/discovery/entry';
import { endpointHash, hmac, type Keys } from '../lib/sign';

const KEYS: Keys = { current: 'entry-test-secret-0123456789', previous: null };
const OTHER: Keys = { current: 'some-other-secret-9876543210', previous: null };

/** A well-formed document, unsigned (sig is filled in by signEntry). */
function doc(over: Partial<Omit<EntryDoc, 'sig'>> = {}): Omit<EntryDoc, 'sig'> {
  const endpoint = over.endpoint ?? 'http://10.0.0.7:3000';
  return {
    _id: 'inst-7',
    service: 'web',
    endpoint,
    endpointHash: endpointHash(endpoint),
    balancer: 'https://b7.example.com',
    state: 'serving',
    appVersion: '2.1.0',
    pkgVersion: '0.1.0',
    host: 'host-7',
    pid: 4242,
    startedAt: new Date('2024-01-01T00:00:00Z'),
    heartbeatAt: new Date('2024-01-01T00:01:00Z'),
    heartbeatMs: 1000,
    seq: 61,
    servingMs: 60_000,
    load: { sessions: 12, capacity: 500, elu: 0.25, delayMs: 3.5, cpu: 0.4, rss: 123_456_789 },
    ...over,
  };
}

/** The raw object as it would come out of the collection. */
const raw = (over: Record<string, unknown> = {}, keys: Keys | null = KEYS): Record<string, unknown> => ({ ...signEntry(keys, doc()), ...over });

function okEntry(check: EntryCheck): EntryDoc {
  assert.ok(check.ok, `expected accepted, got ${JSON.stringify(check)}`);
  return check.entry;
}

function reason(check: EntryCheck): string {
  assert.ok(!check.ok, `expected rejected, got ${JSON.stringify(check)}`);
  return check.reason;
}

describe('discovery entry', () => {
  describe('signing', () => {
    it('round-trips a signed entry unchanged', () => {
      const signed = signEntry(KEYS, doc());
      assert.equal(typeof signed.sig, 'string');
      assert.deepEqual(okEntry(checkEntry(signed, KEYS)), signed);
    });

    it('leaves sig null without keys and accepts any well-formed entry then', () => {
      const unsigned = signEntry(null, doc());
      assert.equal(unsigned.sig, null);
      assert.deepEqual(okEntry(checkEntry(unsigned, null)), unsigned);
      // Signed entries are fine too when nobody checks.
      assert.equal(checkEntry(signEntry(KEYS, doc()), null).ok, true);
      assert.equal(checkEntry(raw({ sig: 'garbage' }), null).ok, true);
    });

    it('rejects an unsigned entry when keys are set', () => {
      assert.equal(reason(checkEntry(signEntry(null, doc()), KEYS)), 'unsigned');
      assert.equal(reason(checkEntry(raw({ sig: undefined }), KEYS)), 'unsigned');
      assert.equal(reason(checkEntry(raw({ sig: 12345 }), KEYS)), 'unsigned');
    });

    it('rejects a bad signature and one made with another secret', () => {
      const signed = signEntry(KEYS, doc());
      assert.equal(reason(checkEntry({ ...signed, sig: 'AAAA' }, KEYS)), 'bad signature');
      assert.equal(reason(checkEntry({ ...signed, sig: '' }, KEYS)), 'bad signature');
      assert.equal(reason(checkEntry({ ...signed, sig: 'x'.repeat(10_000) }, KEYS)), 'bad signature');
      assert.equal(reason(checkEntry(signEntry(OTHER, doc()), KEYS)), 'bad signature');
    });

    it('covers _id, service, endpoint and balancer with the signature', () => {
      const signed = signEntry(KEYS, doc());
      for (const over of [{ _id: 'inst-8' }, { service: 'api' }, { endpoint: 'http://10.6.6.6:3000' }, { balancer: 'https://evil.example.com' }, { balancer: null }]) {
        const check = checkEntry({ ...signed, ...over }, KEYS);
        assert.equal(reason(check), 'bad signature', JSON.stringify(over));
      }
    });

    it('signs a null balancer distinctly from any URL', () => {
      const signed = signEntry(KEYS, doc({ balancer: null }));
      assert.equal(okEntry(checkEntry(signed, KEYS)).balancer, null);
      assert.equal(okEntry(checkEntry({ ...signed, balancer: undefined }, KEYS)).balancer, null);
    });

    it('does not cover state, load or heartbeat (they change every beat)', () => {
      const signed = signEntry(KEYS, doc());
      const e = okEntry(checkEntry({ ...signed, state: 'draining', seq: 62, load: { sessions: 1 } }, KEYS));
      assert.equal(e.state, 'draining');
      assert.equal(e.seq, 62);
    });

    it('verifies with the previous secret during rotation while signing with the current one', () => {
      const rotated: Keys = { current: OTHER.current, previous: KEYS.current };
      assert.equal(checkEntry(signEntry(KEYS, doc()), rotated).ok, true, 'old signer still trusted');
      const fresh = signEntry(rotated, doc());
      assert.equal(fresh.sig, signEntry(OTHER, doc()).sig, 'signs with the current secret');
      assert.equal(checkEntry(fresh, rotated).ok, true);
      assert.equal(checkEntry(fresh, OTHER).ok, true);
      assert.equal(reason(checkEntry(fresh, KEYS)), 'bad signature', 'a node that never rotated rejects the new secret');
    });

    it('uses the v1 entry identity, so a signature over other fields cannot be replayed', () => {
      const d = doc();
      const sig = hmac(KEYS.current, [d._id, d.service, d.endpoint, d.balancer ?? '']);
      assert.equal(reason(checkEntry({ ...d, sig }, KEYS)), 'bad signature');
    });
  });

  describe('endpoint hash', () => {
    it('recomputes the hash and ignores a forged endpointHash field', () => {
      const victim = endpointHash('http://10.0.0.1:3000');
      for (const keys of [null, KEYS]) {
        const e = okEntry(checkEntry(raw({ endpointHash: victim }, keys), keys));
        assert.equal(e.endpointHash, endpointHash('http://10.0.0.7:3000'));
        assert.notEqual(e.endpointHash, victim);
      }
      assert.equal(okEntry(checkEntry(raw({ endpointHash: undefined }, null), null)).endpointHash, endpointHash('http://10.0.0.7:3000'));
    });
  });

  describe('malformed documents', () => {
    it('rejects values that are not documents', () => {
      for (const v of [null, undefined, 'str', 42, true]) {
        assert.deepEqual(checkEntry(v, null), { ok: false, id: '?', reason: 'not a document' }, String(v));
      }
    });

    it('rejects a bad _id', () => {
      for (const id of ['', '-x', '_x', 'a.b', '../etc', 'a/b', 'a b', 'a\r\nb', 'x'.repeat(65), 'é', 5, null, undefined, {}, []]) {
        const check = checkEntry(raw({ _id: id }, null), null);
        assert.equal(reason(check), 'bad _id', JSON.stringify(id));
      }
      assert.equal(checkEntry(raw({ _id: 'x'.repeat(64) }, null), null).ok, true);
    });

    it('rejects a bad service', () => {
      for (const service of ['', 'a b', 'we.b', '-web', 'x'.repeat(65), 7, null, undefined, ['web']]) {
        assert.equal(reason(checkEntry(raw({ service }, null), null)), 'bad service', JSON.stringify(service));
      }
    });

    it('rejects endpoints that are not plain http(s) URLs', () => {
      for (const endpoint of ['javascript:alert(1)', 'ftp://10.0.0.1/', 'ws://10.0.0.1:3000', 'file:///etc/passwd', 'data:text/html,hi',
        'http://user:pw@10.0.0.1:3000', 'http://user@10.0.0.1:3000', 'https://:pw@h', 'not a url', '10.0.0.1:3000', '/relative', '',
        'http://' + 'a'.repeat(2050), 'http://exa mple.com', 42, null, undefined]) {
        assert.equal(reason(checkEntry(raw({ endpoint }, null), null)), 'bad endpoint', String(JSON.stringify(endpoint)).slice(0, 60));
      }
    });

    it('accepts http and https endpoints', () => {
      for (const endpoint of ['http://10.0.0.1:3000', 'https://app.internal', 'http://[::1]:3000', 'http://h:1/base']) {
        assert.equal(okEntry(checkEntry(raw({ endpoint }, null), null)).endpoint, endpoint);
      }
    });

    it('rejects a bad balancer URL but accepts a missing one', () => {
      for (const balancer of ['javascript:alert(1)', 'ftp://b', 'https://u:p@b.example.com', 'nope', '', 3]) {
        assert.equal(reason(checkEntry(raw({ balancer }, null), null)), 'bad balancer', JSON.stringify(balancer));
      }
      assert.equal(okEntry(checkEntry(raw({ balancer: undefined }, null), null)).balancer, null);
      assert.equal(okEntry(checkEntry(raw({ balancer: null }, null), null)).balancer, null);
    });

    it('rejects an unknown state', () => {
      for (const state of ['running', 'SERVING', '', null, undefined, 1, ['serving']]) {
        assert.equal(reason(checkEntry(raw({ state }, null), null)), 'bad state', JSON.stringify(state));
      }
      for (const state of ['starting', 'serving', 'draining']) assert.equal(checkEntry(raw({ state }, null), null).ok, true);
    });

    it('rejects missing or non-Date dates', () => {
      for (const over of [{ heartbeatAt: undefined }, { startedAt: undefined }, { heartbeatAt: '2024-01-01T00:00:00Z' },
        { startedAt: 1_700_000_000_000 }, { heartbeatAt: null }, { heartbeatAt: {} }]) {
        assert.equal(reason(checkEntry(raw(over, null), null)), 'bad dates', JSON.stringify(over));
      }
    });

    it('checks shape before the signature, so a malformed forged doc is reported as malformed', () => {
      assert.equal(reason(checkEntry(raw({ endpoint: 'javascript:x', sig: null }, null), KEYS)), 'bad endpoint');
    });

    it('reports the id of a rejected document when it has one', () => {
      const check = checkEntry(raw({ state: 'weird' }, null), null);
      assert.deepEqual(check, { ok: false, id: 'inst-7', reason: 'bad state' });
    });

    it('truncates huge informational strings', () => {
      const e = okEntry(checkEntry(raw({ appVersion: 'v'.repeat(100_000), pkgVersion: 'p'.repeat(1000), host: 'h'.repeat(100_000) }, null), null));
      assert.equal(e.appVersion?.length, 128);
      assert.equal(e.pkgVersion.length, 32);
      assert.equal(e.host.length, 255);
    });

    it('fills defaults for missing or mistyped informational fields', () => {
      const e = okEntry(checkEntry(raw({ appVersion: 5, pkgVersion: null, host: {}, pid: '12', heartbeatMs: -1, seq: NaN, sig: 7 }, null), null));
      assert.equal(e.appVersion, null);
      assert.equal(e.pkgVersion, '?');
      assert.equal(e.host, '?');
      assert.equal(e.pid, 0);
      assert.equal(e.heartbeatMs, 1000);
      assert.equal(e.seq, 0);
      assert.equal(e.sig, null);
    });

    it('sanitizes load figures: non-negative, finite, capacity ≥ 1, elu ≤ 1', () => {
      const e = okEntry(checkEntry(raw({ load: { sessions: -5, capacity: 0, elu: 7, delayMs: Infinity, cpu: 'x', rss: NaN } }, null), null));
      assert.deepEqual(e.load, { sessions: 0, capacity: 1, elu: 1, delayMs: 0, cpu: 0, rss: 0 });
      for (const load of [undefined, null, 'busy', 42]) {
        assert.deepEqual(okEntry(checkEntry(raw({ load }, null), null)).load, { sessions: 0, capacity: 1, elu: 0, delayMs: 0, cpu: 0, rss: 0 });
      }
    });

    it('copies only known fields', () => {
      const e = okEntry(checkEntry(raw({ extra: 'x', __proto__: { polluted: true } }, null), null));
      assert.equal('extra' in e, false);
      assert.equal('polluted' in e, false);
    });

    it('never throws on a batch of hostile documents', () => {
      const hostile: unknown[] = [
        {}, [], [1, 2], { _id: 'a' }, Object.create(null), { _id: 'a', service: 'web', endpoint: 'http://h', state: 'serving', startedAt: new Date(), heartbeatAt: new Date(), load: [] },
        { ...doc(), load: { sessions: { $gt: 1 } } }, { ...doc(), endpoint: 'http://h\u0000' }, { ...doc(), sig: { length: 3 } },
      ];
      for (const h of hostile) assert.doesNotThrow(() => checkEntry(h, KEYS), JSON.stringify(h));
    });
  });

  describe('regressions found in review', () => {
    // A BSON document can hold an embedded object as _id, e.g. { _id: { toString: 1 } }. The error
    // path's String(d._id) then throws "Cannot convert object to primitive value", and since
    // Registry#observe calls checkEntry inside the poll tick, one such document fails every tick:
    // the whole cluster view goes stale because of one bad row.
    it('never throws on an object _id whose toString is not a function', () => {
      for (const id of [{ toString: 1 }, { toString: 'x', valueOf: 'y' }, Object.create(null)]) {
        let check: EntryCheck | undefined;
        assert.doesNotThrow(() => { check = checkEntry(raw({ _id: id }, null), null); });
        assert.equal(check && reason(check), 'bad _id');
      }
    });

    // The rejected id is logged (and used as a log-once key): it must be bounded.
    it('bounds the id reported for a rejected document', () => {
      const check = checkEntry(raw({ _id: 'x'.repeat(1_000_000) }, null), null);
      assert.equal(reason(check), 'bad _id');
      assert.ok(!check.ok && check.id.length <= 128, `reported id is ${check.ok ? 0 : check.id.length} characters`);
    });

    // new URL() strips leading/trailing C0 controls and spaces and drops tabs/newlines anywhere, so
    // these parse, and the raw string (with its CR/LF/NUL) becomes the member's endpoint: it is logged
    // and shown as is, hashed to a second endpointHash for the same server, and missed by duplicate
    // detection. Config never produces such a URL (it stores origin + path).
    it('rejects endpoint and balancer URLs with whitespace or control characters', () => {
      for (const url of ['http://10.0.0.1:3000\r\n', 'http://10.0.0.1:3000\u0000', ' http://10.0.0.1:3000', 'http://10.0.0.1:3000/\nX-Evil: 1', 'http://10.0.\t0.1:3000']) {
        assert.equal(reason(checkEntry(raw({ endpoint: url }, null), null)), 'bad endpoint', JSON.stringify(url));
        assert.equal(reason(checkEntry(raw({ balancer: url }, null), null)), 'bad balancer', JSON.stringify(url));
      }
    });

    // new Date(NaN) is a Date; BSON dates outside JS range also decode to Invalid Date.
    it('rejects an Invalid Date', () => {
      assert.equal(reason(checkEntry(raw({ heartbeatAt: new Date(NaN) }, null), null)), 'bad dates');
      assert.equal(reason(checkEntry(raw({ startedAt: new Date('nope') }, null), null)), 'bad dates');
    });
  });
});
