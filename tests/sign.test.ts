import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { classify } from '../lib/balancer/classify';
import { endpointHash, hmac, keysFrom, sign, verify, type Keys } from '../lib/sign';

const OLD = 'old-secret-0123456789abcdef';
const NEW = 'new-secret-fedcba9876543210';
const PARTS = ['ddp-cluster/entry/v1', 'id1', 'web', 'http://10.0.0.1:3000', ''];

const keys = (current: string, previous: string | null = null): Keys => ({ current, previous });

describe('sign', () => {
  describe('keysFrom', () => {
    it('has no keys without a secret, even with a previous one', () => {
      assert.equal(keysFrom(null, null), null);
      assert.equal(keysFrom(null, OLD), null);
    });

    it('signs with the secret and keeps the previous one for verification', () => {
      assert.deepEqual(keysFrom(NEW, OLD), { current: NEW, previous: OLD });
      assert.deepEqual(keysFrom(NEW, null), { current: NEW, previous: null });
    });
  });

  describe('hmac', () => {
    it('is HMAC-SHA256 over the parts joined by the unit separator, base64url', () => {
      const want = createHmac('sha256', NEW).update(PARTS.join('\x1f')).digest('base64url');
      assert.equal(hmac(NEW, PARTS), want);
      assert.match(want, /^[A-Za-z0-9_-]{43}$/);
    });

    it('is deterministic and depends on secret and every part', () => {
      assert.equal(hmac(NEW, PARTS), hmac(NEW, [...PARTS]));
      assert.notEqual(hmac(NEW, PARTS), hmac(OLD, PARTS));
      for (let i = 0; i < PARTS.length; i++) {
        const changed = PARTS.map((p, j) => (j === i ? p + 'x' : p));
        assert.notEqual(hmac(NEW, changed), hmac(NEW, PARTS), `part ${i}`);
      }
    });

    it('keeps field boundaries: moving characters between parts changes the signature', () => {
      assert.notEqual(hmac(NEW, ['ab', 'c']), hmac(NEW, ['a', 'bc']));
      assert.notEqual(hmac(NEW, ['a', '']), hmac(NEW, ['a']));
    });
  });

  describe('sign and verify', () => {
    it('round-trips with the current secret', () => {
      const sig = sign(keys(NEW), PARTS);
      assert.equal(sig, hmac(NEW, PARTS));
      assert.equal(verify(keys(NEW), PARTS, sig), true);
    });

    it('signs with the current secret during rotation', () => {
      assert.equal(sign(keys(NEW, OLD), PARTS), hmac(NEW, PARTS));
    });

    it('verifies signatures from the previous secret during rotation, and only then', () => {
      const oldSig = hmac(OLD, PARTS);
      assert.equal(verify(keys(NEW, OLD), PARTS, oldSig), true);
      assert.equal(verify(keys(NEW, OLD), PARTS, hmac(NEW, PARTS)), true);
      assert.equal(verify(keys(NEW), PARTS, oldSig), false);
      assert.equal(verify(keys(OLD), PARTS, hmac(NEW, PARTS)), false);
    });

    it('rejects a signature from another secret or over other parts', () => {
      assert.equal(verify(keys(NEW, OLD), PARTS, hmac('third-secret-xxxxxxxxxxxx', PARTS)), false);
      assert.equal(verify(keys(NEW), PARTS, sign(keys(NEW), [...PARTS.slice(0, 3), 'http://evil:1', ''])), false);
    });

    it('rejects non-strings, empty, oversized and near-miss signatures without throwing', () => {
      const good = sign(keys(NEW), PARTS);
      for (const bad of [undefined, null, 42, {}, [good], Buffer.from(good), '', 'x'.repeat(129), good + 'A'.repeat(100),
        good.slice(0, -1), good + '=', good.toUpperCase(), good.slice(0, -1) + (good.endsWith('A') ? 'B' : 'A'), 'é'.repeat(43)]) {
        assert.equal(verify(keys(NEW, OLD), PARTS, bad), false, JSON.stringify(bad));
      }
    });
  });

  describe('endpointHash', () => {
    it('is the first 20 hex digits of SHA-256 of the URL', () => {
      const h = endpointHash('http://10.0.0.1:3000');
      assert.match(h, /^[0-9a-f]{20}$/);
      assert.equal(h, endpointHash('http://10.0.0.1:3000'));
      assert.notEqual(h, endpointHash('http://10.0.0.1:3001'));
      assert.notEqual(h, endpointHash('http://10.0.0.1:3000/'));
    });

    it('is accepted as a pinned endpoint by classify', () => {
      const h = endpointHash('https://app-1.internal:8443');
      const f = classify(`/cluster-ddp/${h}/web/sockjs/info`, { pathPrefix: '', dashboardPath: '/cluster' });
      assert.equal(f.kind === 'info' && f.pinned, h);
    });

    it('does not collide over 10,000 distinct endpoints', () => {
      const seen = new Set<string>();
      for (let i = 0; i < 10_000; i++) seen.add(endpointHash(`http://10.${i >> 8}.${i & 255}.1:3000`));
      assert.equal(seen.size, 10_000);
    });
  });
});
