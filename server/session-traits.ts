import type { SessionTraits } from '../lib/balancer/rebalance';

/**
 * What makes a Meteor DDP session cheap to move, read defensively from ddp-server's Session
 * (packages/ddp-server/livedata_server.js: `_namedSubs` Map, `_universalSubs` array, `inQueue`
 * DoubleEndedQueue, `workerRunning`). Internals: anything missing reads as "unknown", never throws.
 */
export function meteorSessionTraits(session: unknown): SessionTraits {
  if (typeof session !== 'object' || session === null) return {};
  const s = session as {
    _namedSubs?: { size?: unknown };
    _universalSubs?: { length?: unknown };
    inQueue?: { length?: unknown };
    workerRunning?: unknown;
  };
  const named = typeof s._namedSubs?.size === 'number' ? s._namedSubs.size : 0;
  const universal = typeof s._universalSubs?.length === 'number' ? s._universalSubs.length : 0;
  const queued = typeof s.inQueue?.length === 'number' ? s.inQueue.length : 0;
  return { subscriptions: named + universal, busy: s.workerRunning === true || queued > 0 };
}
