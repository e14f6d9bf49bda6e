/**
 * The rebalancing decision: one pure function from the service's healthy serving members' load
 * figures (the same ones routing uses, slow-start ramp included), this instance's live count and
 * the policy to "shed this many sessions now" — or not. No I/O, no clock of its own.
 *
 * A member compares itself with its fair share of the service's sessions: the service's total
 * (plus sessions it closed recently that have not reappeared anywhere yet) split by ramped
 * capacity. It starts shedding when it is above that share by more than BOTH the relative
 * tolerance and the absolute one, and keeps shedding until it is within half of them
 * (hysteresis), so one session more or less never toggles it. A member at or under its share
 * never sheds, nor does one in slow start. The pace is a budget of closes per second; the closes themselves are paced by
 * lib/closer.ts.
 */
import type { Member } from '../discovery/view';
import { ramp } from './route';

export interface RebalancePolicy {
  /** Relative tolerance over the fair share, e.g. 0.1 = 10 %. */
  readonly tolerance: number;
  /** Absolute tolerance, sessions (both must be exceeded to start). */
  readonly toleranceSessions: number;
  /** Closes per second at most. */
  readonly ratePerSec: number;
  /** CLUSTER_SLOW_START: a ramping member's share grows like its routing weight. */
  readonly slowStartMs: number;
}

export interface RebalanceInput {
  /** The service's members as this instance sees them (self included); unhealthy or non-serving ones are ignored. */
  readonly members: readonly Member[];
  /** This instance's live session count (fresher than its own heartbeat). */
  readonly selfSessions: number;
  /** Sessions this instance closed recently that are not back anywhere yet (counted into the total). */
  readonly inFlight: number;
  /** Whether the previous decision was to shed (hysteresis). */
  readonly shedding: boolean;
  /** Close budget accumulated since the last decision (rate × elapsed, carried fraction included). */
  readonly budget: number;
  readonly policy: RebalancePolicy;
}

export interface RebalanceDecision {
  readonly shedding: boolean;
  /** Sessions to close now (whole number, ≤ budget). */
  readonly close: number;
  /** This instance's fair share, sessions (ramp-weighted); NaN when not computed. */
  readonly share: number;
  /** Why, for logs and the dashboard. */
  readonly reason: 'not serving' | 'alone' | 'ramping' | 'within tolerance' | 'above tolerance' | 'settling' | 'no budget';
}

const idle = (reason: RebalanceDecision['reason'], share = NaN): RebalanceDecision => ({ shedding: false, close: 0, share, reason });

export function rebalance(input: RebalanceInput): RebalanceDecision {
  const { policy } = input;
  const self = input.members.find((m) => m.self);
  if (!self || self.state !== 'serving') return idle('not serving');
  const peers = input.members.filter((m) => !m.self && m.healthy && m.state === 'serving' && m.service === self.service);
  if (peers.length === 0) return idle('alone');
  const all = [self, ...peers];
  const oldest = Math.max(...all.map((m) => m.servingMs));
  // A member in slow start is a receiver: its low ramp limits what it takes, never makes it shed
  // the sessions it has (a member that just came back, or just received sessions, keeps them).
  if (ramp(self, oldest, policy.slowStartMs) < 1) return idle('ramping');
  const effective = (m: Member): number => Math.max(1, m.load.capacity) * ramp(m, oldest, policy.slowStartMs);
  // Peers' figures as routing sees them: the report plus the new sessions they kept for themselves.
  const sessionsOf = (m: Member): number => (m.self ? input.selfSessions : m.load.sessions + (m.load.pending ?? 0));
  const total = all.reduce((n, m) => n + sessionsOf(m), 0) + Math.max(0, input.inFlight);
  const capacity = all.reduce((n, m) => n + effective(m), 0);
  const share = (total * effective(self)) / capacity;
  const mine = input.selfSessions;
  const startAt = Math.max(share * (1 + policy.tolerance), share + policy.toleranceSessions);
  const stopAt = Math.max(share * (1 + policy.tolerance / 2), share + policy.toleranceSessions / 2);
  const shedding = input.shedding ? mine > stopAt : mine > startAt;
  if (!shedding) return idle(input.shedding ? 'settling' : 'within tolerance', share);
  // Down to the stop threshold at most: the last few sessions over the share stay (no overshoot).
  const close = Math.min(Math.floor(input.budget), Math.ceil(mine - stopAt));
  if (close <= 0) return { shedding: true, close: 0, share, reason: 'no budget' };
  return { shedding: true, close, share, reason: 'above tolerance' };
}

/** What the cheapest session to move looks like: the order in which sessions are chosen to move. */
export interface SessionTraits {
  /** A method or message is being processed: moving it would re-send work. */
  readonly busy?: boolean;
  /** Its client reaches this instance through a peer's balancer (moving it costs no extra hop). */
  readonly hopped?: boolean;
  /** Subscriptions to resume after the move (the main reconnect cost). */
  readonly subscriptions?: number;
}

export interface Candidate<T> {
  readonly session: T;
  /** When this instance first saw it (ms, any monotonic clock shared with `now`). */
  readonly since: number;
  readonly traits: SessionTraits;
}

/**
 * The `n` sessions to move: never one younger than `minAgeMs`; idle before busy, hopped before
 * local, fewer subscriptions first, then the oldest (its reconnect cost is spread over the longest stay).
 */
export function chooseVictims<T>(candidates: readonly Candidate<T>[], n: number, now: number, minAgeMs: number): T[] {
  if (n <= 0) return [];
  const eligible = candidates.filter((c) => now - c.since >= minAgeMs);
  const key = (c: Candidate<T>): [number, number, number, number] => [
    c.traits.busy === true ? 1 : 0,
    c.traits.hopped === true ? 0 : 1,
    c.traits.subscriptions ?? 0,
    c.since,
  ];
  eligible.sort((a, b) => {
    const ka = key(a);
    const kb = key(b);
    for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return (ka[i] as number) - (kb[i] as number);
    return 0;
  });
  return eligible.slice(0, n).map((c) => c.session);
}
