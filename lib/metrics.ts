/**
 * Prometheus metrics for one attached instance, in a registry of its own (never prom-client's
 * global one). Every value is computed at scrape time from stats() and view() in `collect()`, so
 * nothing here runs on the request path. Each instance reports the whole cluster as it sees it
 * (per-member gauges labelled `member`) plus its own balancer counters.
 */
import { Counter, Gauge, Registry, type Metric } from 'prom-client';
import type { MembershipView } from './discovery/view';
import { MEMBER_STATES } from './discovery/entry';
import { subscribe } from './events';
import { ROUTE_ACTIONS, ROUTE_REASONS, type ClusterStats, type ErrorKind, type HealthStatus, type RebalanceStats } from './outcomes';

const ACTIONS: ReadonlySet<string> = new Set(ROUTE_ACTIONS);
const REASONS: ReadonlySet<string> = new Set(ROUTE_REASONS);

export interface MetricsDeps {
  readonly view: () => MembershipView;
  /** The instance's stats, read defensively: a missing figure is no sample (or 0), never a failed scrape. */
  readonly stats: () => MetricsStats;
  readonly instanceId: string;
  readonly service: string | null;
  readonly appVersion: string | null;
  readonly pkgVersion: string;
}

export interface ClusterMetrics {
  readonly registry: Registry;
  readonly contentType: string;
  /** The exposition text. */
  metrics(): Promise<string>;
  /** Stops listening to the instance's events. */
  close(): void;
}

/** What the metrics read of a health-check result. */
export type CheckResult = Pick<HealthStatus, 'up' | 'checkedAt' | 'rttMs' | 'reason'>;

/** The ClusterStats the metrics read; any figure may be missing. */
export type MetricsStats = Readonly<Partial<Omit<ClusterStats, 'health'>> & { readonly health?: Readonly<Record<string, CheckResult>> }>;

export const METRIC_NAMES = [
  'ddp_cluster_info',
  'ddp_cluster_member_sessions',
  'ddp_cluster_member_capacity',
  'ddp_cluster_member_healthy',
  'ddp_cluster_member_heartbeat_age_seconds',
  'ddp_cluster_member_event_loop_utilization',
  'ddp_cluster_member_event_loop_delay_seconds',
  'ddp_cluster_member_cpu_cores',
  'ddp_cluster_member_rss_bytes',
  'ddp_cluster_member_start_time_seconds',
  'ddp_cluster_members',
  'ddp_cluster_requests_total',
  'ddp_cluster_routed_requests_total',
  'ddp_cluster_proxied_total',
  'ddp_cluster_routing_decisions_total',
  'ddp_cluster_proxy_errors_total',
  'ddp_cluster_proxy_errors_by_kind_total',
  'ddp_cluster_proxy_retries_total',
  'ddp_cluster_untrusted_hops_total',
  'ddp_cluster_hops_total',
  'ddp_cluster_session_table_entries',
  'ddp_cluster_open_proxied_sockets',
  'ddp_cluster_sessions_closed_total',
  'ddp_cluster_rebalancing',
  'ddp_cluster_rebalance_episodes_total',
  'ddp_cluster_discovery_up',
  'ddp_cluster_view_stale',
  'ddp_cluster_health_check_up',
  'ddp_cluster_health_check_rtt_seconds',
  'ddp_cluster_health_check_age_seconds',
  'ddp_cluster_discovery_rtt_seconds',
] as const;

interface Snapshot {
  readonly view: MembershipView;
  readonly stats: MetricsStats;
  readonly now: number;
}

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
/** Milliseconds to seconds without float noise (0.0021, not 0.0021000000000000003). */
const sec = (ms: number): number => Math.round(ms * 1000) / 1e6;
const counts = (v: Readonly<Record<string, number | undefined>> | undefined): [string, number][] =>
  v === undefined ? [] : Object.entries(v).map(([k, n]) => [k, num(n)]);

/** The health-check results of `stats`, one per member id; null when the stats have none. */
export function healthResults(stats: MetricsStats): Record<string, CheckResult> | null {
  const h = stats.health;
  if (h === undefined) return null;
  const out: Record<string, CheckResult> = {};
  for (const [id, r] of Object.entries(h)) {
    out[id] = { up: r.up, checkedAt: num(r.checkedAt), rttMs: r.rttMs, reason: r.reason };
  }
  return out;
}

export function createMetrics(deps: MetricsDeps): ClusterMetrics {
  const registry = new Registry();

  // One snapshot per scrape: prom-client calls every collect() in the same tick.
  let cached: Snapshot | null = null;
  const snap = (): Snapshot => {
    if (cached === null) {
      cached = { view: deps.view(), stats: deps.stats(), now: Date.now() };
      setImmediate(() => (cached = null));
    }
    return cached;
  };

  const gauge = (name: string, help: string, labelNames: readonly string[], fill: (g: Gauge, s: Snapshot) => void): Gauge =>
    new Gauge({
      name, help, labelNames: [...labelNames], registers: [registry],
      collect(this: Gauge) {
        this.reset();
        fill(this, snap());
      },
    });
  const counter = (name: string, help: string, labelNames: readonly string[], fill: (c: Counter, s: Snapshot) => void): Counter =>
    new Counter({
      name, help, labelNames: [...labelNames], registers: [registry],
      collect(this: Counter) {
        this.reset();
        fill(this, snap());
      },
    });

  const perMember = (name: string, help: string, value: (m: MembershipView['members'][number], now: number) => number): Gauge =>
    gauge(name, help, ['member', 'service'], (g, s) => {
      for (const m of s.view.members) g.set({ member: m.id, service: m.service }, value(m, s.now));
    });

  gauge('ddp_cluster_info', 'This instance (always 1).', ['instance', 'service', 'app_version', 'version'], (g) => {
    g.set({ instance: deps.instanceId, service: deps.service ?? '', app_version: deps.appVersion ?? '', version: deps.pkgVersion }, 1);
  });
  perMember('ddp_cluster_member_sessions', 'Live DDP sessions each member reported in its last heartbeat.', (m) => m.load.sessions);
  perMember('ddp_cluster_member_capacity', 'Sessions each member is sized for (CLUSTER_CAPACITY).', (m) => m.load.capacity);
  perMember('ddp_cluster_member_healthy', '1 if the member is healthy as this instance sees it (heartbeat and health checks), else 0.', (m) => (m.healthy ? 1 : 0));
  perMember('ddp_cluster_member_heartbeat_age_seconds', 'Seconds since the member\'s heartbeat last advanced, by this instance\'s clock.', (m) => sec(m.heartbeatAgeMs));
  perMember('ddp_cluster_member_event_loop_utilization', 'Event-loop utilization of the member over its last heartbeat interval (0..1).', (m) => m.load.elu);
  perMember('ddp_cluster_member_event_loop_delay_seconds', 'Event-loop delay p99 of the member over its last heartbeat interval.', (m) => sec(m.load.delayMs));
  perMember('ddp_cluster_member_cpu_cores', 'CPU used by the member over its last heartbeat interval, in cores.', (m) => m.load.cpu);
  perMember('ddp_cluster_member_rss_bytes', 'Resident set size of the member.', (m) => m.load.rss);
  perMember('ddp_cluster_member_start_time_seconds', 'Start time of the member, Unix seconds.', (m) => sec(m.startedAt));

  gauge('ddp_cluster_members', 'Members by state and health, as this instance sees them.', ['state', 'health'], (g, s) => {
    for (const state of MEMBER_STATES) for (const health of ['healthy', 'unhealthy']) g.set({ state, health }, 0);
    for (const m of s.view.members) g.inc({ state: m.state, health: m.healthy ? 'healthy' : 'unhealthy' });
  });

  counter('ddp_cluster_requests_total', 'HTTP requests and websocket upgrades the balancer handled.', ['kind'], (c, s) => {
    c.inc({ kind: 'request' }, num(s.stats.requests));
    c.inc({ kind: 'upgrade' }, num(s.stats.upgrades));
  });
  counter('ddp_cluster_routed_requests_total', 'Requests and upgrades the balancer routed, by transport (sockjs transport, info, raw-websocket, page...).', ['transport'], (c, s) => {
    for (const [k, n] of counts(s.stats.byTransport)) c.inc({ transport: k }, n);
  });
  counter('ddp_cluster_proxied_total', 'Requests and upgrades forwarded to a peer, by transport.', ['transport'], (c, s) => {
    for (const [k, n] of counts(s.stats.proxiedByTransport)) c.inc({ transport: k }, n);
  });
  counter('ddp_cluster_routing_decisions_total', 'Routing decisions by action (serve, proxy, pin, reject) and reason.', ['action', 'reason'], (c, s) => {
    // Only the fixed codes become labels: the label set stays bounded whatever the stats hold.
    for (const [k, n] of counts(s.stats.byReason)) {
      const i = k.indexOf(':');
      const action = k.slice(0, i);
      const reason = k.slice(i + 1);
      if (i !== -1 && ACTIONS.has(action) && REASONS.has(reason)) c.inc({ action, reason }, n);
    }
  });
  const scalar = (name: string, help: string, field: 'proxyErrors' | 'retries' | 'untrustedHops' | 'lostRelayedPolls'): void =>
    void counter(name, help, [], (c, s) => c.inc(num(s.stats[field])));
  scalar('ddp_cluster_proxy_errors_total', 'Proxied requests and upgrades that failed.', 'proxyErrors');
  // Fed by the lifecycle events (events.ts), not by stats(): error kinds are a fixed set of codes.
  const errorsByKind = new Map<ErrorKind, number>();
  const unsubscribe = subscribe(deps.instanceId, { proxyError: (e) => void errorsByKind.set(e.error, (errorsByKind.get(e.error) ?? 0) + 1) });
  counter('ddp_cluster_proxy_errors_by_kind_total', 'Proxied requests and upgrades that failed, by error kind.', ['kind'], (c) => {
    for (const [kind, n] of errorsByKind) c.inc({ kind }, n);
  });
  scalar('ddp_cluster_proxy_retries_total', 'New sessions retried on another member after a failed connect.', 'retries');
  scalar('ddp_cluster_untrusted_hops_total', 'Requests whose hop header did not verify (stripped).', 'untrustedHops');
  scalar('ddp_cluster_lost_relayed_polls_total', 'Polling sessions here closed (404) because the peer relaying them went away while an answer may have been in flight.', 'lostRelayedPolls');
  counter('ddp_cluster_hops_total', 'Requests forwarded between instances: in = received with a verified hop header, out = forwarded to a peer.', ['direction'], (c, s) => {
    c.inc({ direction: 'in' }, num(s.stats.hopsIn));
    c.inc({ direction: 'out' }, num(s.stats.hopsOut));
  });
  gauge('ddp_cluster_session_table_entries', 'Polling sessions in this balancer\'s session table.', [], (g, s) => g.set(num(s.stats.sessionTable)));
  gauge('ddp_cluster_load_feeds_watching', 'Peers whose load feed this instance watches now (the others are checked on demand).', [], (g, s) => g.set(num(s.stats.loadFeeds?.watching)));
  gauge('ddp_cluster_load_feed_watchers', 'Peers watching this instance\'s load feed now.', [], (g, s) => g.set(num(s.stats.loadFeeds?.watchers)));
  gauge('ddp_cluster_open_proxied_sockets', 'Websockets this instance is proxying to peers now.', [], (g, s) => g.set(num(s.stats.openProxiedSockets)));
  gauge('ddp_cluster_translated_sessions', 'Polling sessions this instance carries to peers over a websocket now (CLUSTER_POLLING_HOP=translate).', [], (g, s) => g.set(num(s.stats.translatedSessions)));
  gauge('ddp_cluster_carried_sessions', 'Sessions peers carry to this member over a websocket now.', [], (g, s) => g.set(num(s.stats.carriedSessions)));
  // Rebalancing (issue 15): what the shared closer closed, by reason, and whether this instance sheds now.
  const rebalance = (s: Snapshot): Partial<RebalanceStats> => s.stats.rebalance ?? {};
  counter('ddp_cluster_sessions_closed_total', 'Sessions this instance closed on purpose so their clients reconnect elsewhere: drain or rebalance.', ['reason'], (c, s) => {
    c.inc({ reason: 'drain' }, num(rebalance(s).drained));
    c.inc({ reason: 'rebalance' }, num(rebalance(s).moved));
  });
  gauge('ddp_cluster_rebalancing', '1 while this instance is above its fair share and sheds sessions, else 0.', [], (g, s) => g.set(rebalance(s).shedding === true ? 1 : 0));
  counter('ddp_cluster_rebalance_episodes_total', 'Times this instance started shedding sessions (the dashboard lists the recent ones).', [], (c, s) => c.inc(num(rebalance(s).episodes)));
  gauge('ddp_cluster_discovery_up', '1 if the last discovery poll succeeded, else 0.', [], (g, s) => g.set(s.view.discoveryOk ? 1 : 0));
  gauge('ddp_cluster_view_stale', '1 if discovery has been unreachable longer than CLUSTER_VIEW_STALE_AFTER, else 0.', [], (g, s) => g.set(s.view.stale ? 1 : 0));

  // Active health checks: only members with a result have samples.
  const checks = (name: string, help: string, value: (r: CheckResult, now: number) => number | null): Gauge =>
    gauge(name, help, ['member'], (g, s) => {
      for (const [id, r] of Object.entries(healthResults(s.stats) ?? {})) {
        const v = value(r, s.now);
        if (v !== null) g.set({ member: id }, v);
      }
    });
  checks('ddp_cluster_health_check_up', '1 if this instance\'s active health check of the member passes, else 0.', (r) => (r.up ? 1 : 0));
  checks('ddp_cluster_health_check_rtt_seconds', 'Round-trip time of the last successful health check of the member.', (r) => (r.rttMs === null ? null : sec(r.rttMs)));
  checks('ddp_cluster_health_check_age_seconds', 'Seconds since the last health-check result for the member.', (r, now) => sec(Math.max(0, now - r.checkedAt)));

  // Registered once the core reports it, so a build without it exposes no fake zero.
  let rtt: Metric | null = null;
  let lastRttMs: number | null = null;

  return {
    registry,
    contentType: registry.contentType,
    async metrics() {
      const s = snap();
      if (typeof s.stats.discoveryRttMs === 'number') lastRttMs = s.stats.discoveryRttMs;
      if (rtt === null && lastRttMs !== null) {
        rtt = gauge('ddp_cluster_discovery_rtt_seconds', 'Round-trip time of the last successful discovery heartbeat and poll.', [], (g) => {
          if (lastRttMs !== null) g.set(sec(lastRttMs));
        });
      }
      return registry.metrics();
    },
    close: unsubscribe,
  };
}
