/**
 * The dashboard at CLUSTER_DASHBOARD_PATH, on every instance (any one shows the whole cluster):
 *
 *   GET  <path>/              live page (login form until logged in)
 *   POST <path>/login         password → signed session cookie (same-origin POSTs only)
 *   POST <path>/logout        clears the cookie
 *   GET  <path>/api/cluster   JSON snapshot (?since=<ms>&events=<seq> for increments)
 *   GET  <path>/metrics       Prometheus text format
 *
 * API and metrics take the session cookie or HTTP Basic (any user name, the dashboard password).
 * `<path>/health` is answered by attach() itself, without authentication.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ClusterConfig } from '../config';
import type { RegistryEvents } from '../discovery/registry';
import type { Member, MembershipView } from '../discovery/view';
import type { Logger } from '../log';
import type { ClusterStats, RebalanceEvent } from '../outcomes';
import { createMetrics, healthResults, type ClusterMetrics } from '../metrics';
import { PACKAGE_VERSION } from '../version';
import { byMachine } from '../workers/group';
import {
  DashboardAuth, FailureLimiter, basicPassword, clearSessionCookie, clientKey, dashboardPasswords, sameOrigin,
  sessionCookieOf, setSessionCookie,
} from './auth';
import { EventLog, SessionHistory, stateEvents, type ClusterEvent, type EventKind, type Sample } from './history';
import { dashboardPage, loginPage } from './page';

/** What the dashboard reads; supplied by attach(). */
export interface DashboardDeps {
  readonly config: ClusterConfig;
  readonly logger: Logger;
  readonly view: () => MembershipView;
  readonly stats: () => ClusterStats;
  readonly on: <E extends keyof RegistryEvents>(event: E, listener: (...args: RegistryEvents[E]) => void) => void;
}

export interface Dashboard {
  /** Handles a request under CLUSTER_DASHBOARD_PATH; `sub` is the rest of the path ('/' for the root). */
  handle(req: IncomingMessage, res: ServerResponse, sub: string): void;
  close(): void;
}

/** One second per sample, ten minutes kept. */
export const HISTORY_INTERVAL_MS = 1000;
export const HISTORY_SAMPLES = 600;
const MAX_EVENTS = 200;
const MAX_BODY = 4096;

/** One member as the JSON API reports it. */
export interface ApiMember {
  readonly id: string;
  readonly service: string;
  readonly endpoint: string;
  readonly balancer: string | null;
  readonly state: string;
  readonly healthy: boolean;
  readonly self: boolean;
  readonly host: string;
  readonly pid: number;
  readonly sessions: number;
  readonly capacity: number;
  readonly elu: number;
  readonly delayMs: number;
  readonly cpu: number;
  readonly rss: number;
  readonly startedAt: number;
  readonly uptimeMs: number;
  readonly appVersion: string | null;
  readonly pkgVersion: string;
  readonly heartbeatAgeMs: number;
  readonly heartbeatMs: number;
  /** Sessions rebalancing moved away from the member so far (its heartbeat; null from older versions). */
  readonly moved: number | null;
  /** This instance's active health check of the member, when the core reports one. */
  readonly check: { readonly up: boolean; readonly checkedAt: number; readonly rttMs: number | null; readonly reason: string } | null;
}

export interface ApiCluster {
  readonly now: number;
  readonly instanceId: string;
  readonly self: string | null;
  readonly discovery: { readonly ok: boolean; readonly stale: boolean; readonly rttMs: number | null };
  /** Sessions and capacity add up the healthy members only (a dead member's last report is stale). */
  readonly totals: {
    readonly members: number; readonly healthy: number; readonly serving: number; readonly draining: number;
    readonly starting: number; readonly sessions: number; readonly capacity: number;
    /** Sessions rebalancing moved, summed over the members that report it. */
    readonly moved: number;
  };
  readonly members: readonly ApiMember[];
  readonly duplicates: MembershipView['duplicates'];
  /** This instance's balancer counters (ClusterStats without `health`). */
  readonly stats: Omit<ClusterStats, 'health'>;
  readonly historyIntervalMs: number;
  /** Samples newer than `?since=` (all kept ones without it), oldest first. */
  readonly history: readonly Sample[];
  /** Events after `?events=` (all kept ones without it), oldest first. */
  readonly events: readonly ClusterEvent[];
}

const COMMON_HEADERS: Readonly<Record<string, string>> = {
  'Cache-Control': 'no-store, private, max-age=0',
  Pragma: 'no-cache',
  Expires: '0',
  Vary: 'Cookie, Authorization',
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'same-origin',
  'X-Frame-Options': 'DENY',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

export function createDashboard(deps: DashboardDeps): Dashboard {
  const { config, logger } = deps;
  const passwords = dashboardPasswords(config);
  if (passwords.length === 0) return disabled(logger);
  const site: Site = {
    deps,
    base: config.pathPrefix + config.dashboardPath,
    access: new Access(passwords, config.forwardedCount, logger),
    watch: new ClusterWatch(deps),
    metrics: createMetrics({
      view: deps.view, stats: deps.stats, instanceId: config.instanceId, service: config.service,
      appVersion: config.appVersion, pkgVersion: PACKAGE_VERSION,
    }),
  };
  return {
    handle(req, res, sub) {
      serve(site, req, res, sub).catch((err: unknown) => {
        logger.error('dashboard.request_failed', { error: err, url: req.url?.slice(0, 200) });
        if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n');
        else res.destroy();
      });
    },
    close() {
      site.watch.close();
      site.metrics.close();
    },
  };
}

/** Without a password there is no dashboard: 404, and one warning a minute saying how to get one. */
function disabled(logger: Logger): Dashboard {
  return {
    handle(_req, res) {
      logger.once('warn', 'dashboard.disabled', 'dashboard.disabled', {
        reason: 'neither CLUSTER_DASHBOARD_PASSWORD nor CLUSTER_SECRET is set, so the dashboard has no password',
        fix: 'set CLUSTER_SECRET (the dashboard password is then derived from it) or CLUSTER_DASHBOARD_PASSWORD',
      });
      send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
    },
    close() {},
  };
}

/** What the dashboard's routes work with. */
interface Site {
  readonly deps: DashboardDeps;
  /** CLUSTER_DASHBOARD_PATH under ROOT_URL_PATH_PREFIX. */
  readonly base: string;
  readonly access: Access;
  readonly watch: ClusterWatch;
  readonly metrics: ClusterMetrics;
}

type AuthResult = { ok: true } | { ok: false; limitedMs: number; attempted: boolean };

/** Who may see the dashboard: session cookies and passwords, with failed attempts limited per client. */
class Access {
  readonly #auth: DashboardAuth;
  readonly #limiter = new FailureLimiter({ maxFailures: 10, windowMs: 5 * 60_000, maxEntries: 10_000 });
  readonly #forwardedCount: number;
  readonly #logger: Logger;

  constructor(passwords: readonly string[], forwardedCount: number, logger: Logger) {
    this.#auth = new DashboardAuth(passwords);
    this.#forwardedCount = forwardedCount;
    this.#logger = logger;
  }

  /** A request's session cookie, else its HTTP Basic password. */
  async authenticate(req: IncomingMessage): Promise<AuthResult> {
    const now = Date.now();
    if (await this.#auth.checkToken(sessionCookieOf(req), now)) return { ok: true };
    const password = basicPassword(req);
    if (password === null) return { ok: false, limitedMs: 0, attempted: false };
    return this.checkAttempt(req, password, now);
  }

  checkAttempt(req: IncomingMessage, password: string, now: number): AuthResult {
    const key = this.client(req);
    const wait = this.#limiter.blockedFor(key, now);
    if (wait > 0) return { ok: false, limitedMs: wait, attempted: true };
    if (this.#auth.checkPassword(password)) {
      this.#limiter.succeed(key);
      return { ok: true };
    }
    if (this.#limiter.fail(key, now)) {
      this.#logger.warn('dashboard.login_blocked', { client: key, note: 'too many wrong dashboard passwords; refusing this address for 5 min' });
    }
    return { ok: false, limitedMs: 0, attempted: true };
  }

  issueToken(now: number): Promise<{ token: string; expiresAt: number }> {
    return this.#auth.issueToken(now);
  }

  client(req: IncomingMessage): string {
    return clientKey(req, this.#forwardedCount);
  }
}

/**
 * What the dashboard remembers between requests, sampled every second: the sessions per member
 * (history) and the cluster's events, with down/up from two sources (heartbeat staleness, active
 * checks) merged into one 'down' per outage.
 */
class ClusterWatch {
  readonly history = new SessionHistory(HISTORY_SAMPLES);
  readonly events = new EventLog(MAX_EVENTS);
  readonly #deps: DashboardDeps;
  readonly #downBy = new Map<string, Set<'heartbeat' | 'check'>>();
  readonly #lastSessions = new Map<string, number>();
  #checks: Record<string, { up: boolean; reason: string }> = {};
  /** Rebalancing episodes of this instance already shown as events (the rebalancer keeps the last 50). */
  readonly #rebalanceSeen = new WeakSet<RebalanceEvent>();
  #closed = false;
  readonly #timer: NodeJS.Timeout;

  constructor(deps: DashboardDeps) {
    this.#deps = deps;
    const { config } = deps;
    deps.on('join', (m) => this.event('join', m.id, `${m.service} at ${m.endpoint} (${m.state})`));
    deps.on('leave', (m) => {
      this.#downBy.delete(m.id);
      this.event('leave', m.id, 'left the registry');
    });
    deps.on('change', (after, before) => {
      if (before.healthy !== after.healthy) {
        this.signal(after.id, 'heartbeat', !after.healthy, after.healthy ? 'heartbeat advancing again'
          : `no heartbeat for ${(config.staleMs / 1000).toFixed(1)} s`);
      }
      for (const e of stateEvents(before, after)) this.event(e.kind, after.id, e.detail);
    });
    deps.on('outage', (err) => this.event('outage', null, `discovery unreachable: ${err.message.slice(0, 200)}`));
    deps.on('recovered', () => this.event('recovered', null, 'discovery reachable again'));
    this.#timer = setInterval(() => {
      try {
        this.sample();
      } catch (err) {
        deps.logger.once('error', 'dashboard.sample_failed', 'dashboard.sample_failed', { error: err });
      }
    }, HISTORY_INTERVAL_MS);
    this.#timer.unref();
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
  }

  private event(kind: EventKind, member: string | null, detail: string): void {
    if (!this.#closed) this.events.add(Date.now(), kind, member, detail);
  }

  private signal(id: string, source: 'heartbeat' | 'check', down: boolean, detail: string): void {
    const set = this.#downBy.get(id) ?? new Set();
    const was = set.size > 0;
    if (down) set.add(source);
    else set.delete(source);
    if (set.size > 0) this.#downBy.set(id, set);
    else this.#downBy.delete(id);
    if (!was && set.size > 0) {
      this.event('down', id, detail);
      const n = this.#lastSessions.get(id) ?? 0;
      if (n > 0) this.event('failover', id, `${n} session${n === 1 ? '' : 's'} of ${id} move to the survivors`);
    } else if (was && set.size === 0) {
      this.event('up', id, detail);
    }
  }

  private sample(): void {
    const now = Date.now();
    const view = this.#deps.view();
    // Healthy members only: a dead member's last report is stale, its line should end.
    this.history.record(now, view.members.filter((m) => m.healthy));
    for (const m of view.members) if (m.healthy) this.#lastSessions.set(m.id, m.load.sessions);
    for (const id of this.#lastSessions.keys()) if (!view.byId.has(id)) this.#lastSessions.delete(id);
    const stats = this.#deps.stats();
    const h = healthResults(stats) ?? {};
    for (const [id, r] of Object.entries(h)) {
      const before = this.#checks[id];
      if (before === undefined ? !r.up : before.up !== r.up) {
        this.signal(id, 'check', !r.up, r.up ? 'health check passes again' : `health check failed: ${r.reason}`);
      }
    }
    this.#checks = h;
    this.rebalanceEvents(stats.rebalance?.events ?? []);
  }

  /** This instance's rebalancing episodes (its stats), as events: start and stop with what moved. */
  private rebalanceEvents(episodes: readonly RebalanceEvent[]): void {
    const id = this.#deps.config.instanceId;
    for (const e of episodes) {
      // By identity, not time: an episode's time is its decision's, which may precede a sample
      // that ran while the decision was still being taken.
      if (this.#rebalanceSeen.has(e)) continue;
      this.#rebalanceSeen.add(e);
      this.event('rebalance', id, e.kind === 'start'
        ? `above its fair share (${e.sessions} sessions, share ${Math.round(e.share)}): moving sessions`
        : `within its fair share (${e.sessions} sessions, share ${Math.round(e.share)}): stopped after moving ${e.moved ?? 0}`);
    }
  }
}

/** The JSON API's answer: the cluster now, and the history and events after the client's last ones. */
function snapshot({ deps, watch }: Site, since: number, afterSeq: number): ApiCluster {
  const view = deps.view();
  const all = deps.stats();
  const { health: _health, ...stats } = all;
  const h = healthResults(all);
  const now = Date.now();
  const healthy = view.members.filter((m) => m.healthy);
  return {
    now,
    instanceId: deps.config.instanceId,
    self: view.self?.id ?? null,
    discovery: { ok: view.discoveryOk, stale: view.stale, rttMs: stats.discoveryRttMs },
    totals: {
      members: view.members.length,
      healthy: healthy.length,
      serving: view.members.filter((m) => m.state === 'serving').length,
      draining: view.members.filter((m) => m.state === 'draining').length,
      starting: view.members.filter((m) => m.state === 'starting').length,
      sessions: healthy.reduce((s, m) => s + m.load.sessions, 0),
      capacity: healthy.reduce((s, m) => s + m.load.capacity, 0),
      moved: view.members.reduce((s, m) => s + (m.load.moved ?? 0), 0),
    },
    // By machine (host, then id): a primary's workers are listed right after it.
    members: byMachine(view.members).map((m) => apiMember(m, now, h?.[m.id] ?? null)),
    duplicates: view.duplicates,
    stats,
    historyIntervalMs: HISTORY_INTERVAL_MS,
    history: watch.history.since(since),
    events: watch.events.after(afterSeq),
  };
}

function html(res: ServerResponse, status: number, render: (nonce: string) => string, extra: Record<string, string | string[]> = {}): void {
  const nonce = randomBytes(16).toString('base64');
  const csp = `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; connect-src 'self'; img-src 'self'; `
    + `form-action 'self'; frame-ancestors 'none'; base-uri 'none'`;
  send(res, status, 'text/html; charset=utf-8', render(nonce), { 'Content-Security-Policy': csp, ...extra });
}

function unauthorized(req: IncomingMessage, res: ServerResponse, r: AuthResult): void {
  if (!r.ok && r.limitedMs > 0) {
    return send(res, 429, 'application/json', '{"error":"too many failed attempts"}\n', { 'Retry-After': String(Math.ceil(r.limitedMs / 1000)) });
  }
  // The page's own requests get no challenge, so the browser shows no Basic-auth prompt.
  const challenge: Record<string, string> = req.headers['x-ddp-cluster-dashboard'] ? {} : { 'WWW-Authenticate': 'Basic realm="ddp-cluster", charset="UTF-8"' };
  send(res, 401, 'application/json', '{"error":"authentication required"}\n', challenge);
}

/** The dashboard's routes. */
async function serve(site: Site, req: IncomingMessage, res: ServerResponse, sub: string): Promise<void> {
  const { base, access, deps: { config, logger } } = site;
  const method = req.method ?? 'GET';
  const read = method === 'GET' || method === 'HEAD';
  const url = new URL(req.url ?? '/', 'http://x');
  switch (sub) {
    case '/':
    case '/index.html': {
      if (!read) return notAllowed(res, 'GET, HEAD');
      const r = await access.authenticate(req);
      if (r.ok) return html(res, 200, (nonce) => dashboardPage({ base, nonce, instanceId: config.instanceId }));
      if (r.limitedMs > 0) return html(res, 429, (nonce) => loginPage({ base, nonce, error: tooMany(r.limitedMs) }), { 'Retry-After': String(Math.ceil(r.limitedMs / 1000)) });
      return html(res, r.attempted ? 401 : 200, (nonce) => loginPage({ base, nonce, error: r.attempted ? 'Wrong password.' : null }));
    }
    case '/login': {
      if (read) return redirect(res, `${base}/`);
      if (method !== 'POST') return notAllowed(res, 'POST');
      if (!sameOrigin(req)) return send(res, 403, 'text/plain; charset=utf-8', 'cross-site login refused\n');
      const body = await readBody(req);
      if (body === null) return send(res, 413, 'text/plain; charset=utf-8', 'request body too large\n');
      const password = new URLSearchParams(body).get('password') ?? '';
      const r = access.checkAttempt(req, password, Date.now());
      if (r.ok) {
        const { token, expiresAt } = await access.issueToken(Date.now());
        logger.info('dashboard.login', { client: access.client(req) });
        return redirect(res, `${base}/`, { 'Set-Cookie': setSessionCookie(req, base, token, expiresAt) });
      }
      if (r.limitedMs > 0) return html(res, 429, (nonce) => loginPage({ base, nonce, error: tooMany(r.limitedMs) }), { 'Retry-After': String(Math.ceil(r.limitedMs / 1000)) });
      return html(res, 401, (nonce) => loginPage({ base, nonce, error: 'Wrong password.' }));
    }
    case '/logout': {
      if (method !== 'POST') return notAllowed(res, 'POST');
      if (!sameOrigin(req)) return send(res, 403, 'text/plain; charset=utf-8', 'cross-site logout refused\n');
      return redirect(res, `${base}/`, { 'Set-Cookie': clearSessionCookie(req, base) });
    }
    case '/api/cluster': {
      if (!read) return notAllowed(res, 'GET, HEAD');
      const r = await access.authenticate(req);
      if (!r.ok) return unauthorized(req, res, r);
      const since = Number(url.searchParams.get('since') ?? -Infinity);
      const after = Number(url.searchParams.get('events') ?? 0);
      return send(res, 200, 'application/json', JSON.stringify(snapshot(site, Number.isFinite(since) ? since : -Infinity, Number.isFinite(after) ? after : 0)));
    }
    case '/metrics': {
      if (!read) return notAllowed(res, 'GET, HEAD');
      const r = await access.authenticate(req);
      if (!r.ok) return unauthorized(req, res, r);
      return send(res, 200, site.metrics.contentType, await site.metrics.metrics());
    }
    default:
      return send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
  }
}

export function apiMember(m: Member, now: number, check: ApiMember['check']): ApiMember {
  return {
    id: m.id, service: m.service, endpoint: m.endpoint, balancer: m.balancer, state: m.state, healthy: m.healthy, self: m.self,
    host: m.host, pid: m.pid, sessions: m.load.sessions, capacity: m.load.capacity, elu: m.load.elu, delayMs: m.load.delayMs,
    cpu: m.load.cpu, rss: m.load.rss, startedAt: m.startedAt, uptimeMs: Math.max(0, now - m.startedAt),
    appVersion: m.appVersion, pkgVersion: m.pkgVersion, heartbeatAgeMs: m.heartbeatAgeMs, heartbeatMs: m.heartbeatMs,
    moved: m.load.moved ?? null,
    check: check === null ? null : { up: check.up, checkedAt: check.checkedAt, rttMs: check.rttMs, reason: check.reason },
  };
}

function tooMany(ms: number): string {
  return `Too many wrong passwords from your address: try again in ${Math.ceil(ms / 60_000)} min.`;
}

function send(res: ServerResponse, status: number, type: string, body: string, extra: Record<string, string | string[]> = {}): void {
  if (res.headersSent) return void res.end();
  res.writeHead(status, { ...COMMON_HEADERS, 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), ...extra });
  res.end(body);
}

function redirect(res: ServerResponse, location: string, extra: Record<string, string | string[]> = {}): void {
  send(res, 303, 'text/plain; charset=utf-8', `see ${location}\n`, { Location: location, ...extra });
}

function notAllowed(res: ServerResponse, allow: string): void {
  send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', { Allow: allow });
}

/** The request body as text, or null when it exceeds MAX_BODY. */
function readBody(req: IncomingMessage): Promise<string | null> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY) over = true;
      else chunks.push(chunk);
    });
    req.on('end', () => resolve(over ? null : Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
