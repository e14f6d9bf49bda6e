/**
 * Membership: who is in the cluster and how loaded they are, as this instance routes by it. One
 * object owns the registry (heartbeats and polls), the active health checks and their overlay
 * onto the registry's view, the load this instance reports, and the pending-load accounting (new
 * sessions routed to a member that its reports don't show yet). The balancer reads `view()` and
 * tells it what it routed; the app listens to its events, each listener isolated by the registry.
 */
import type { ClusterConfig } from './config';
import { Registry, type RegistryEvents } from './discovery/registry';
import { viewFromMembers, type Member, type MembershipView } from './discovery/view';
import { HealthChecker, overlayHealth } from './balancer/health';
import { LoadFeed } from './balancer/feed';
import { publish } from './events';
import { RecentIntake } from './balancer/intake';
import { PendingLoad, type LoadReport } from './balancer/pending';
import { LoadSampler } from './load';
import type { Logger } from './log';
import type { ErrorKind, HealthStatus, MemberState } from './outcomes';
import type { Keys } from './sign';
import type { ServerResponse } from 'node:http';
import { HOP_HEADER, makeHop, type ClientView } from './balancer/hop';

/** A load watch is the instance's own request: no client behind it. */
const NO_CLIENT: ClientView = { remoteAddress: null, forwardedFor: null };

export interface MembershipOptions {
  readonly config: ClusterConfig;
  readonly logger: Logger;
  /** Live DDP sessions on this instance now (never throws). */
  readonly sessionCount: () => number;
  /** Sessions rebalancing moved away from here so far, for heartbeats (lib/rebalancer.ts). */
  readonly moved?: () => number;
}

/** The health route's answer: this instance's state and load, fresher than its last heartbeat. */
export interface HealthReport {
  readonly ok: boolean;
  readonly body: {
    readonly status: MemberState; readonly id: string | null; readonly service: string | null; readonly discoveryOk: boolean;
    readonly sessions: number; readonly capacity: number; readonly opened: number; readonly pending: number; readonly at: number;
  };
}

export type MembershipListener<E extends keyof RegistryEvents> = (...args: RegistryEvents[E]) => void;

export class Membership {
  readonly #config: ClusterConfig;
  readonly #sessionCount: () => number;
  readonly #sampler: LoadSampler;
  readonly #registry: Registry;
  readonly #checker: HealthChecker;
  readonly #pending: PendingLoad;
  /** New sessions routed recently per member, for slow start's share cap (route.ts). */
  readonly #intake = new RecentIntake();
  /** The view routing uses: the registry's, with the health checks overlaid; rebuilt on change only. */
  #view: MembershipView;
  /** Fresher load figures from a round of checks: one rebuild per round, not per peer. */
  #rebuildQueued = false;
  /** Sessions opened here (served here, from clients or peers): reported as `opened`. */
  #opened = 0;
  /** The registry samples the load once while it is built, before there is a view to count pending sessions in. */
  #built = false;
  /** This instance's health answer, pushed to the peers that watch it (feed.ts). */
  readonly #feed: LoadFeed;

  constructor(o: MembershipOptions) {
    this.#config = o.config;
    this.#sessionCount = o.sessionCount;
    this.#pending = new PendingLoad(Math.max(10_000, 5 * o.config.heartbeatMs));
    this.#sampler = new LoadSampler(o.sessionCount, o.config.capacity,
      () => (this.#built ? { opened: this.#opened, pending: this.pendingHere(), moved: o.moved?.() ?? 0 } : { opened: 0, pending: 0 }));
    this.#registry = new Registry({ config: o.config, logger: o.logger, load: () => this.#sampler.sample() });
    this.#checker = new HealthChecker({
      intervalMs: o.config.healthIntervalMs, timeoutMs: o.config.healthTimeoutMs, fall: o.config.healthFall, rise: o.config.healthRise,
      path: `${o.config.pathPrefix}${o.config.dashboardPath}/health`,
      // A watch of a peer's load feed is signed for that peer like any hop; without a secret, none.
      watchHeaders: (member, url) => {
        const keys = this.keys;
        if (keys === null) return null;
        return { [HOP_HEADER]: makeHop(keys, 'GET', url, NO_CLIENT, this.selfId(), member.id, Date.now()) };
      },
    });
    this.#feed = new LoadFeed({
      key: () => {
        const b = this.healthReport().body;
        return `${b.status} ${b.sessions} ${b.opened} ${b.pending} ${b.capacity}`;
      },
      body: () => JSON.stringify(this.healthReport().body),
    });
    this.#view = this.#registry.view();
    this.#registry.on('view', () => this.rebuild());
    this.#checker.on('change', (id, status, before) => {
      this.rebuild();
      // Peers start up (their heartbeat vouches for them): only a change of up/down is news. A
      // failed check that doesn't reach `fall` yet is not "up".
      if ((before?.up ?? true) !== status.up) {
        publish('peer', () => ({ instanceId: o.config.instanceId, member: id, up: status.up, reason: status.reason, state: status.state }));
      }
    });
    this.#checker.on('load', () => {
      if (this.#rebuildQueued) return;
      this.#rebuildQueued = true;
      setImmediate(() => {
        this.#rebuildQueued = false;
        this.rebuild();
      });
    });
    this.#built = true;
  }

  /** Starts heartbeating, polling and checking peers. */
  start(): void {
    this.#registry.start();
    this.#checker.start();
  }

  /** The membership routing uses (immutable; a new object on every change). */
  view(): MembershipView {
    return this.#view;
  }

  /** Resolves after the first successful discovery poll (at once without discovery). */
  ready(): Promise<void> {
    return this.#registry.ready();
  }

  get state(): MemberState {
    return this.#registry.state;
  }

  setState(state: MemberState): void {
    this.#registry.setState(state);
  }

  /** The cluster's signing keys (derived once from the config); null without CLUSTER_SECRET. */
  get keys(): Keys | null {
    return this.#registry.keys;
  }

  get rttMs(): number | null {
    return this.#registry.rttMs;
  }

  /** This instance's id, as peers know it (the one hop headers are addressed to). */
  selfId(): string {
    return this.#view.self?.id ?? this.#config.instanceId;
  }

  /** Live DDP sessions on this instance now. */
  liveSessions(): number {
    return this.#sessionCount();
  }

  /** Active health-check results per peer. */
  health(): Record<string, HealthStatus> {
    return this.#checker.all();
  }

  /** Passive health check: a connect to this member was refused or reset. */
  peerDown(memberId: string, reason: ErrorKind): void {
    this.#checker.markDown(memberId, reason);
  }

  /** Counts a new session routed to `member` (this instance included) until it opens there. */
  newSession(member: Member): void {
    const now = Date.now();
    if (member.self) this.#pending.landed(now);
    this.#pending.add(member.id, this.report(member), now);
    this.#intake.add(member.id, now);
    // The figures of the peers it competed with are worth refreshing.
    this.#checker.refresh(member.service);
  }

  /** New sessions this instance routed recently to `memberId`, and in all (slow start's share cap). */
  intake(memberId: string, now: number): { member: number; total: number } {
    return this.#intake.share(memberId, now);
  }

  /** A session opened here (served here, from a client or a peer). */
  openedHere(): void {
    this.#opened++;
  }

  /** Sessions ever opened here (monotonic), for load reports: peers retire pending entries by it. */
  opened(): number {
    return this.#opened;
  }

  /** New sessions routed to `memberId` that its load figure doesn't include yet (may be fractional). */
  pending(memberId: string, now: number): number {
    const m = this.#view.byId.get(memberId);
    return m ? this.#pending.count(memberId, this.report(m), now) : 0;
  }

  /** New sessions kept for this instance that have not opened yet, for load reports. */
  pendingHere(): number {
    const self = this.#view.self;
    return self === null ? 0 : this.#pending.routed(self.id, this.report(self), Date.now());
  }

  /** The health route's answer: 503 unless serving (or not registered at all). */
  healthReport(): HealthReport {
    const view = this.#registry.view();
    const state = this.#registry.state;
    return {
      ok: state === 'serving' || !this.#registry.registered,
      body: {
        status: state, id: view.self?.id ?? null, service: view.self?.service ?? null, discoveryOk: view.discoveryOk,
        sessions: this.#sessionCount(), capacity: this.#config.capacity, opened: this.#opened, pending: this.pendingHere(), at: Date.now(),
      },
    };
  }

  /** Serves a peer's watch of this instance's load feed on `res` (authenticated by the caller); false past the cap. */
  watch(res: ServerResponse): boolean {
    return this.#feed.add(res);
  }

  /** Load feeds now: peers whose feed this instance watches, and peers watching this instance's. */
  feeds(): { watching: number; watchers: number } {
    return { watching: this.#checker.watching, watchers: this.#feed.size };
  }

  /** Periodic housekeeping: pending entries of members that left. */
  maintain(): void {
    this.#pending.prune(new Set(this.#view.byId.keys()));
  }

  /** Listens to membership events; a listener that throws or rejects is logged and the others still run. */
  on<E extends keyof RegistryEvents>(event: E, listener: MembershipListener<E>): void {
    this.#registry.on(event, listener as never);
  }

  off<E extends keyof RegistryEvents>(event: E, listener: MembershipListener<E>): void {
    this.#registry.off(event, listener as never);
  }

  /** Deregisters and stops the checks and the load sampler. */
  async close(): Promise<void> {
    this.#feed.close();
    this.#checker.close();
    await this.#registry.close();
    this.#sampler.close();
  }

  private rebuild(): void {
    const v = this.#registry.view();
    this.#checker.update(v);
    this.#view = overlayHealth(v, (id) => this.#checker.status(id), this.#config.staleMs, (members) => viewFromMembers(members, v));
  }

  /**
   * What `member` last reported, for matching pending entries. This instance reports itself live:
   * its session count now and the sessions it opened so far.
   */
  private report(member: Member): LoadReport {
    if (member.self) return { at: 0, sessions: this.#sessionCount(), opened: this.#opened, live: true };
    return {
      at: member.heartbeatAt, sessions: member.load.sessions, opened: member.load.opened ?? null, pending: member.load.pending ?? null,
      heldAt: this.#checker.heldAt(member.id, member.heartbeatAt),
    };
  }
}
