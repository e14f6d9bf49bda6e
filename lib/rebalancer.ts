/**
 * Active rebalancing, the driver: every tick it asks the pure decision (lib/balancer/rebalance.ts)
 * how many sessions to shed now, chooses them (cheapest to move, never younger than the minimum
 * age) and hands them to the shared paced closer, spread over the tick. Their clients reconnect
 * and routing sends them to less-loaded members. Off while draining or not serving.
 */
import type { ClusterConfig } from './config';
import type { Closable } from './drain';
import type { MembershipView } from './discovery/view';
import type { Logger } from './log';
import type { SessionCloser } from './closer';
import type { RebalanceEvent, RebalanceStats } from './outcomes';

export type { RebalanceEvent, RebalanceStats } from './outcomes';
import { chooseVictims, rebalance, type Candidate, type RebalancePolicy, type SessionTraits } from './balancer/rebalance';

export interface RebalancerDeps {
  readonly config: ClusterConfig;
  readonly logger: Logger;
  readonly view: () => MembershipView;
  readonly liveSessions: () => number;
  /** The live sessions (closable); null: nothing this instance can close. */
  readonly sessions: () => Iterable<Closable>;
  /** What makes a session cheap to move (host-specific; optional). */
  readonly traits?: (session: Closable) => SessionTraits;
  readonly closer: SessionCloser;
  readonly now?: () => number;
}

const EVENTS_MAX = 50;

export class Rebalancer {
  readonly #d: RebalancerDeps;
  readonly #policy: RebalancePolicy;
  readonly #since = new WeakMap<object, number>();
  readonly #events: RebalanceEvent[] = [];
  /** Closes of the last IN_FLIGHT window: [when, count]. */
  readonly #recent: [number, number][] = [];
  readonly #inFlightMs: number;
  readonly #tickMs: number;
  #timer: NodeJS.Timeout | null = null;
  #shedding = false;
  /** When the next rebalancing close may happen at the earliest (closes are one per 1/rate s). */
  #nextCloseAt = 0;
  #episode = 0;
  #share: number | null = null;
  #episodes = 0;
  #decisions = 0;

  constructor(deps: RebalancerDeps) {
    this.#d = deps;
    const c = deps.config;
    this.#policy = {
      tolerance: c.rebalanceTolerance, toleranceSessions: c.rebalanceToleranceSessions,
      ratePerSec: c.rebalanceRate, slowStartMs: c.slowStartMs,
    };
    this.#tickMs = Math.min(1000, c.heartbeatMs);
    // A closed session shows up again at its new member within a reconnect and a report or two.
    this.#inFlightMs = 2 * c.heartbeatMs + c.healthIntervalMs;
  }

  start(): void {
    if (!this.#d.config.rebalance || this.#timer !== null) return;
    this.#timer = setInterval(() => {
      try {
        this.tick();
      } catch (err) {
        this.#d.logger.once('error', 'rebalance.tick_failed', 'rebalance.tick_failed', { error: err });
      }
    }, this.#tickMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  stats(): RebalanceStats {
    const counts = this.#d.closer.counts();
    return {
      enabled: this.#d.config.rebalance, shedding: this.#shedding, moved: counts.rebalance, drained: counts.drain,
      share: this.#share, episodes: this.#episodes, decisions: this.#decisions, events: [...this.#events],
    };
  }

  /** One decision (public for tests; the timer calls it every tick). */
  tick(): number {
    const now = (this.#d.now ?? Date.now)();
    const sessions = [...this.#d.sessions()];
    // Ages: from when this driver first saw each session (the host's sessions carry no start time).
    for (const s of sessions) if (!this.#since.has(s)) this.#since.set(s, now);
    if (this.#d.closer.draining) return this.settle(now, 0, 'drain');
    const view = this.#d.view();
    const self = view.self;
    if (self === null) return 0;
    while (this.#recent.length > 0 && (this.#recent[0] as [number, number])[0] < now - this.#inFlightMs) this.#recent.shift();
    const inFlight = this.#recent.reduce((n, [, k]) => n + k, 0);
    // The budget: the closes that fit, one per 1/rate s, before the next tick (never a burst:
    // after a quiet hour the pace is the same as in the middle of an episode).
    const interval = 1000 / this.#policy.ratePerSec;
    const from = Math.max(now, this.#nextCloseAt);
    const budget = Math.max(0, Math.ceil((now + this.#tickMs - from) / interval));
    const live = this.#d.liveSessions();
    this.#decisions++;
    const d = rebalance({
      members: view.byService.get(self.service) ?? [], selfSessions: live, inFlight,
      shedding: this.#shedding, budget, policy: this.#policy,
    });
    this.#share = Number.isNaN(d.share) ? null : Math.round(d.share * 10) / 10;
    if (d.shedding && !this.#shedding) {
      this.#episode = 0;
      this.#episodes++;
      this.event({ at: now, kind: 'start', sessions: live, share: this.#share ?? 0 });
      this.#d.logger.info('rebalance.start', { sessions: live, share: this.#share, reason: d.reason });
    }
    if (!d.shedding) return this.settle(now, live, d.reason);
    this.#shedding = true;
    if (d.close <= 0) return 0;
    const traits = this.#d.traits;
    const candidates: Candidate<Closable>[] = sessions
      .filter((s) => !this.#d.closer.closing(s))
      .map((s) => ({ session: s, since: this.#since.get(s) ?? now, traits: traits ? safeTraits(traits, s) : {} }));
    const victims = chooseVictims(candidates, d.close, now, this.#d.config.rebalanceMinAgeMs);
    if (victims.length === 0) return 0;
    const closed = this.#d.closer.pace(victims, 'rebalance', interval, from);
    this.#nextCloseAt = from + closed * interval;
    this.#episode += closed;
    this.#recent.push([now, closed]);
    this.#d.logger.debug('rebalance.batch', { closed, sessions: live, share: this.#share });
    return closed;
  }

  private settle(now: number, live: number, reason: string): number {
    if (this.#shedding) {
      this.event({ at: now, kind: 'stop', sessions: live, share: this.#share ?? 0, moved: this.#episode });
      this.#d.logger.info('rebalance.stop', { sessions: live, share: this.#share, moved: this.#episode, reason });
    }
    this.#shedding = false;
    return 0;
  }

  private event(e: RebalanceEvent): void {
    this.#events.push(e);
    if (this.#events.length > EVENTS_MAX) this.#events.shift();
  }
}

function safeTraits(traits: (s: Closable) => SessionTraits, s: Closable): SessionTraits {
  try {
    return traits(s);
  } catch {
    return {};
  }
}
