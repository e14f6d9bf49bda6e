/**
 * Active health checks of peers (HAProxy-style interval, timeout, fall and rise) plus passive
 * detection: a refused connect marks a peer down at once (a reset doesn't: it is retried). The registry's heartbeat says
 * "alive as of a second ago"; the check says "reachable from here now", which also covers a peer
 * that a partition hides from this balancer only.
 */
import { EventEmitter } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import type { Member, MembershipView } from '../discovery/view';
import { errorKind, type HealthStatus, type MemberState } from '../outcomes';

export type { HealthStatus } from '../outcomes';

export interface HealthOptions {
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly fall: number;
  readonly rise: number;
  /** Path of the health route on every instance, e.g. '/cluster/health' (with the path prefix). */
  readonly path: string;
}

interface Peer {
  member: Member;
  status: HealthStatus | null;
  fails: number;
  oks: number;
  inFlight: boolean;
  /** performance.now() when the last check began. */
  startedAt: number;
}

/** On-demand checks (`refresh`) of one peer begin at least this far apart. */
export const REFRESH_GAP_MS = 10;

export interface HealthEvents {
  /** Up/down or reported state changed; `before` is the previous result (null: the first). */
  change: [id: string, status: HealthStatus, before: HealthStatus | null];
  /** A check brought newer load figures. */
  load: [id: string, status: HealthStatus];
}

export class HealthChecker extends EventEmitter<HealthEvents> {
  readonly #opts: HealthOptions;
  readonly #peers = new Map<string, Peer>();
  readonly #agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  readonly #tlsAgent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  #timer: NodeJS.Timeout | null = null;

  constructor(opts: HealthOptions) {
    super();
    this.#opts = opts;
  }

  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.round(), this.#opts.intervalMs);
    this.#timer.unref();
  }

  /** Tracks the peers of a new view (not this instance itself). */
  update(view: MembershipView): void {
    const seen = new Set<string>();
    for (const m of view.members) {
      if (m.self) continue;
      seen.add(m.id);
      const p = this.#peers.get(m.id);
      if (p) p.member = m;
      else this.#peers.set(m.id, { member: m, status: null, fails: 0, oks: 0, inFlight: false, startedAt: -Infinity });
    }
    for (const id of this.#peers.keys()) if (!seen.has(id)) this.#peers.delete(id);
  }

  status(id: string): HealthStatus | null {
    return this.#peers.get(id)?.status ?? null;
  }

  all(): Record<string, HealthStatus> {
    const out: Record<string, HealthStatus> = {};
    for (const [id, p] of this.#peers) if (p.status) out[id] = p.status;
    return out;
  }

  /** Passive detection: a connect to `id` was refused or reset. Down at once, rise as usual. */
  markDown(id: string, reason: string): void {
    const p = this.#peers.get(id);
    if (!p) return;
    p.fails = Math.max(p.fails, this.#opts.fall);
    p.oks = 0;
    this.set(p, { up: false, checkedAt: Date.now(), rttMs: null, reason: `passive: ${reason}`, state: p.status?.state ?? null, load: p.status?.load ?? null });
  }

  /**
   * Fresher load figures now, between rounds: checks every peer that is up, has no check in
   * flight and was last checked at least REFRESH_GAP_MS ago. Called by the balancer as it routes
   * new sessions, so during a burst it compares its own live load with peers' figures that are
   * milliseconds old rather than up to a health interval. Peers that are down wait for their round
   * (rise keeps its pace). With `service`, only that service's peers: the others don't compete for
   * the session, and each check wakes a peer (an idle one spends ~0.4 ms of CPU on it).
   */
  refresh(service: string | null = null): void {
    if (this.#timer === null) return;
    const now = performance.now();
    for (const p of this.#peers.values()) {
      if (service !== null && p.member.service !== service) continue;
      if (!p.inFlight && p.status?.up !== false && now - p.startedAt >= REFRESH_GAP_MS) this.check(p);
    }
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.#agent.destroy();
    this.#tlsAgent.destroy();
  }

  private round(): void {
    for (const p of this.#peers.values()) if (!p.inFlight) this.check(p);
  }

  private check(p: Peer): void {
    p.inFlight = true;
    p.startedAt = performance.now();
    const target = new URL(this.#opts.path, p.member.endpoint);
    const secure = target.protocol === 'https:';
    const began = performance.now();
    const id = p.member.id;
    const done = (ok: boolean, reason: string, state: MemberState | null, load: HealthStatus['load'] = null): void => {
      p.inFlight = false;
      if (this.#peers.get(id) !== p) return; // left the view meanwhile
      const rttMs = Math.round((performance.now() - began) * 10) / 10;
      if (ok) {
        p.oks++;
        p.fails = 0;
      } else {
        p.fails++;
        p.oks = 0;
      }
      const wasUp = p.status?.up ?? true;
      // Unknown peers start up (the heartbeat vouches for them); then fall/rise decide.
      const up = wasUp ? p.fails < this.#opts.fall : p.oks >= this.#opts.rise;
      this.set(p, { up, checkedAt: Date.now(), rttMs: ok ? rttMs : null, reason, state, load: load ?? p.status?.load ?? null });
    };
    const req = (secure ? https : http).get(target, { agent: secure ? this.#tlsAgent : this.#agent, timeout: this.#opts.timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (body.length < 4096) body += chunk;
      });
      res.on('end', () => {
        const answer = parseHealth(body);
        // 503 while draining is still alive; what matters is that the right instance answered.
        if (answer === null) return done(false, `bad answer (HTTP ${res.statusCode ?? 0})`, null);
        if (answer.id !== id) return done(false, 'another instance answers at this endpoint', null);
        done(true, 'ok', answer.state, answer.load);
      });
      res.on('error', (err) => done(false, errorKind(err), null));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error(`no answer within ${this.#opts.timeoutMs} ms`), { code: 'ETIMEDOUT' })));
    req.on('error', (err: Error) => done(false, errorKind(err), null));
  }

  private set(p: Peer, status: HealthStatus): void {
    const before = p.status;
    p.status = status;
    if (!before || before.up !== status.up || before.state !== status.state) this.emit('change', p.member.id, status, before);
    else if (status.load !== null && status.load.at !== before.load?.at) this.emit('load', p.member.id, status);
  }
}

function parseHealth(body: string): { id: string; state: MemberState | null; load: HealthStatus['load'] } | null {
  try {
    const v = JSON.parse(body) as { id?: unknown; status?: unknown; sessions?: unknown; capacity?: unknown; at?: unknown; opened?: unknown; pending?: unknown };
    if (typeof v.id !== 'string') return null;
    const state = v.status === 'serving' || v.status === 'draining' || v.status === 'starting' ? v.status : null;
    const n = (x: unknown): number | null => (typeof x === 'number' && Number.isFinite(x) && x >= 0 ? x : null);
    const sessions = n(v.sessions);
    const capacity = n(v.capacity);
    const at = n(v.at);
    const opened = n(v.opened);
    const pending = n(v.pending);
    const load = sessions !== null && capacity !== null && at !== null
      ? { sessions, capacity: Math.max(1, capacity), at, ...(opened !== null ? { opened } : {}), ...(pending !== null ? { pending } : {}) } : null;
    return { id: v.id, state, load };
  } catch {
    return null;
  }
}

/**
 * The view routing uses: the registry's, with each peer's health and state overlaid from the
 * checks. A peer the checks say is down is unhealthy whatever its heartbeat; a peer the checks
 * reach keeps its sessions through a short heartbeat gap (its registry writes may lag) but not
 * indefinitely: a registry entry dead for long may be another process on the same port.
 */
export function overlayHealth(view: MembershipView, status: (id: string) => HealthStatus | null, staleMs: number,
  rebuild: (members: Member[]) => MembershipView): MembershipView {
  let changed = false;
  const members = view.members.map((m) => {
    if (m.self) return m;
    const s = status(m.id);
    if (s === null) return m;
    const healthy = s.up && (m.healthy || m.heartbeatAgeMs < 3 * staleMs);
    const state = s.up && s.state !== null ? s.state : m.state;
    // Load from the check when it is newer than the heartbeat's (checks run twice as often, and on
    // through a discovery outage).
    const fresher = s.up && s.load !== null && s.load.at > m.heartbeatAt ? s.load : null;
    if (healthy === m.healthy && state === m.state && fresher === null) return m;
    changed = true;
    if (fresher === null) return { ...m, healthy, state };
    const load = {
      ...m.load, sessions: fresher.sessions, capacity: fresher.capacity,
      ...(fresher.opened !== undefined ? { opened: fresher.opened } : {}), ...(fresher.pending !== undefined ? { pending: fresher.pending } : {}),
    };
    return { ...m, healthy, state, heartbeatAt: fresher.at, load };
  });
  return changed ? rebuild(members) : view;
}
