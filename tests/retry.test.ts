import assert from 'node:assert/strict';
import { RETRY_POLICY, retryVerdict, type FailedAttempt } from '../lib/balancer/retry';

const poll: FailedAttempt = {
  upgrade: false, facts: { kind: 'transport', service: 'web', pinned: null, serverId: '1', sessionId: 's', transport: 'xhr', opens: false, via: null, localUrl: '/sockjs/1/s/xhr' },
  method: 'POST', headers: {}, newSession: false, otherMembers: 0, sameMemberRetried: false, bodyKept: false,
  error: 'ECONNRESET', clientTouched: false, clientGone: false,
};
const send: FailedAttempt = {
  ...poll, facts: { ...poll.facts, transport: 'xhr_send' } as FailedAttempt['facts'], headers: { 'content-length': '20' },
};

describe('retry policy', () => {
  it('cuts an answer that already reached the client', () => {
    assert.equal(retryVerdict(RETRY_POLICY, { ...poll, clientTouched: true }), 'abandon');
  });

  it('tries the same member once more after a reset, never after a refusal', () => {
    assert.equal(retryVerdict(RETRY_POLICY, poll), 'same-member');
    assert.equal(retryVerdict(RETRY_POLICY, { ...poll, sameMemberRetried: true }), 'other-member');
    assert.equal(retryVerdict(RETRY_POLICY, { ...poll, error: 'ECONNREFUSED' }), 'other-member');
  });

  it('replays a send only with its body kept, and never moves it to another member', () => {
    assert.equal(retryVerdict(RETRY_POLICY, send), 'give-up');
    assert.equal(retryVerdict(RETRY_POLICY, { ...send, bodyKept: true }), 'same-member');
    assert.equal(retryVerdict(RETRY_POLICY, { ...send, bodyKept: true, sameMemberRetried: true }), 'give-up');
  });

  it('moves new sessions, polls and page GETs to at most maxOtherMembers others', () => {
    const refused = { ...poll, error: 'ECONNREFUSED' } as const;
    assert.equal(retryVerdict(RETRY_POLICY, { ...refused, otherMembers: RETRY_POLICY.maxOtherMembers }), 'give-up');
    const page: FailedAttempt = { ...refused, facts: { kind: 'page' }, method: 'GET' };
    assert.equal(retryVerdict(RETRY_POLICY, page), 'other-member');
    assert.equal(retryVerdict(RETRY_POLICY, { ...page, method: 'DELETE' }), 'give-up');
    assert.equal(retryVerdict(RETRY_POLICY, { ...page, method: 'DELETE', newSession: true }), 'other-member');
  });

  it('moves an upgrade to another member while the client is there, whatever the error', () => {
    const upgrade: FailedAttempt = { ...poll, upgrade: true, facts: { kind: 'raw-websocket', service: null, pinned: null, localUrl: '/websocket' } };
    assert.equal(retryVerdict(RETRY_POLICY, upgrade), 'other-member');
    assert.equal(retryVerdict(RETRY_POLICY, { ...upgrade, clientGone: true }), 'give-up');
    assert.equal(retryVerdict(RETRY_POLICY, { ...upgrade, otherMembers: 2 }), 'give-up');
  });
});
