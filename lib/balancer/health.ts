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
import { FEED_CONTENT_TYPE, FEED_KEEPALIVE_MS, FEED_TICK_MS } from './feed';
import { takenAt } from './pending';

export type { HealthStatus } from '../outcomes';

export interface HealthOptions {
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly fall: number;
  readonly rise: number;
  /** Path of the health route on every instance, e.g. '/cluster/health' (with the path prefix). */
  readonly path: string;
  /**
   * The headers that authenticate a watch of `member`'s load feed at `url` (feed.ts); null: no
   * watches (no secret to sign them with), on-demand checks only.
   */
  readonly watchHeaders?: (member: Member, url: string) => Record<string, string> | null;
}

interface Peer {
  member: Member;
  status: HealthStatus | null;
  fails: number;
  oks: number;
  inFlight: boolean;
  /** performance.now() when the last check began. */
  startedAt: number;
  /** The watch of its load feed (feed.ts), open or opening; null: none. */
  watch: http.ClientRequest | null;
  /** The watch streams: its figures come as they change, no on-demand check needed. */
  watchLive: boolean;
  /** performance.now() of the watch's last line. */
  watchAt: number;
  /**
   * The feed beats (feed.ts): a line every `beatMs` for `activeMs` after a change, so its silence
   * then means "late", not "unchanged". 0: it doesn't (an older version).
   */
  beatMs: number;
  activeMs: number;
  /** The figures of the feed's last line (figuresKey), and when they last differed from the line's before (Date.now()). */
  lineKey: string | null;
  changedAt: number;
  /** As of when the last line's figures held, by Date.now(): its `at`, bounded like a report's (pending.ts takenAt). */
  lineHeld: number;
  /** performance.now() before which no new watch is opened (after a failed or refused one). */
  watchRetryAt: number;
  /** Reopens the watch once watchRetryAt has come. */
  watchTimer: NodeJS.Timeout | null;
}

/** A watch that failed is opened again after this long. */
export const WATCH_RETRY_MS = 1000;
/** A peer that answered a watch with something else than a feed (an older version) is asked again after this long. */
export const WATCH_UNSUPPORTED_RETRY_MS = 60_000;
/** Answers to a watch that mean "not now, nor soon": asked again after WATCH_UNSUPPORTED_RETRY_MS. */
const WATCH_REFUSALS = new Set([200, 403, 404, 405, 503]);
/** A watch silent for this long is stuck: closed, and opened again. */
export const WATCH_SILENT_MS = 3 * FEED_KEEPALIVE_MS;
/** Longest feed line read; a longer one ends the watch. */
const WATCH_LINE_MAX = 8192;

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
    for (const p of this.#peers.values()) this.watchIfDue(p);
  }

  /** Tracks the peers of a new view (not this instance itself). */
  update(view: MembershipView): void {
    const seen = new Set<string>();
    for (const m of view.members) {
      if (m.self) continue;
      seen.add(m.id);
      const p = this.#peers.get(m.id);
      if (p) {
        // Another endpoint: the watch of the old one says nothing about it.
        const moved = p.member.endpoint !== m.endpoint;
        if (moved) this.unwatch(p, 0);
        p.member = m;
        if (moved) this.watchIfDue(p);
      } else {
        this.#peers.set(m.id, {
          member: m, status: null, fails: 0, oks: 0, inFlight: false, startedAt: -Infinity,
          watch: null, watchLive: false, watchAt: 0, beatMs: 0, activeMs: 0, lineKey: null, changedAt: -Infinity, lineHeld: 0, watchRetryAt: 0, watchTimer: null,
        });
        this.watchIfDue(this.#peers.get(m.id) as Peer);
      }
    }
    for (const [id, p] of this.#peers) {
      if (seen.has(id)) continue;
      this.unwatch(p, 0);
      this.#peers.delete(id);
    }
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
   * the session, and each check wakes a peer (an idle one spends ~0.4 ms of CPU on it). Peers whose
   * load feed streams are skipped: their figures come as they change.
   */
  refresh(service: string | null = null): void {
    if (this.#timer === null) return;
    const now = performance.now();
    for (const p of this.#peers.values()) {
      if (service !== null && p.member.service !== service) continue;
      if (!p.watchLive && !p.inFlight && p.status?.up !== false && now - p.startedAt >= REFRESH_GAP_MS) this.check(p);
    }
  }

  /**
   * Until when `id`'s figures reported at `at` (the view's) are known to hold, by Date.now(). A
   * quiet feed sends a line within FEED_TICK_MS of any change, so its silence vouches for them
   * until about a tick ago; a feed that changed less than its active time ago beats, so its
   * figures hold only as of its last line (a busy peer's lines come late: the longer it is silent,
   * the more it may have taken meanwhile). Null without a live feed, or when `at` is older than
   * the feed's figures (the view has not caught up with the last line yet).
   */
  heldAt(id: string, at: number): number | null {
    const p = this.#peers.get(id);
    if (p === undefined || !p.watchLive || at < (p.status?.load?.at ?? -Infinity)) return null;
    const now = Date.now();
    // The peer beats for activeMs after its change; the line saying so came a little later.
    if (p.beatMs > 0 && now - p.changedAt < p.activeMs - p.beatMs) return p.lineHeld;
    return Math.max(p.lineHeld, now - FEED_TICK_MS);
  }

  /** Peers whose load feed this instance watches now. */
  get watching(): number {
    let n = 0;
    for (const p of this.#peers.values()) if (p.watchLive) n++;
    return n;
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    for (const p of this.#peers.values()) this.unwatch(p, 0);
    this.#agent.destroy();
    this.#tlsAgent.destroy();
  }

  private round(): void {
    const now = performance.now();
    for (const p of this.#peers.values()) {
      if (!p.inFlight) this.check(p);
      if (p.watchLive && now - p.watchAt > WATCH_SILENT_MS) this.unwatch(p, WATCH_RETRY_MS);
      else this.watchIfDue(p);
    }
  }

  /** Opens `p`'s watch unless one is open, it failed recently, the checks have `p` down, or this checker isn't running. */
  private watchIfDue(p: Peer): void {
    if (this.#timer !== null && p.watch === null && performance.now() >= p.watchRetryAt && p.status?.up !== false) this.watch(p);
  }

  /**
   * Opens a watch of `p`'s load feed: its health answer as JSON lines, one per change. Liveness
   * stays with the checks (a line never marks a peer up); the lines only keep its figures fresh.
   */
  private watch(p: Peer): void {
    const url = `${this.#opts.path}?watch=1`;
    const headers = this.#opts.watchHeaders?.(p.member, url) ?? null;
    if (headers === null) return;
    const target = new URL(url, p.member.endpoint);
    const secure = target.protocol === 'https:';
    const req = (secure ? https : http).get(target, { agent: false, headers, timeout: this.#opts.timeoutMs }, (res) => {
      if (p.watch !== req) return void req.destroy();
      const type = res.headers['content-type'] ?? '';
      if (res.statusCode !== 200 || !type.startsWith(FEED_CONTENT_TYPE)) {
        // An older version answers a plain health check (or 404/405), a 403 is a secret mismatch and
        // a 503 a full feed: none of that changes within a second, so ask again much later.
        res.resume();
        return this.unwatch(p, WATCH_REFUSALS.has(res.statusCode ?? 0) ? WATCH_UNSUPPORTED_RETRY_MS : WATCH_RETRY_MS);
      }
      req.setTimeout(0);
      p.watchLive = true;
      p.watchAt = performance.now();
      const beat = feedParams(type);
      p.beatMs = beat.beatMs;
      p.activeMs = beat.activeMs;
      p.lineKey = null;
      p.changedAt = -Infinity;
      let buffered = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffered += chunk;
        let nl = buffered.indexOf('\n');
        while (nl !== -1 && p.watch === req) {
          this.fed(p, buffered.slice(0, nl));
          buffered = buffered.slice(nl + 1);
          nl = buffered.indexOf('\n');
        }
        if (buffered.length > WATCH_LINE_MAX) this.unwatch(p, WATCH_RETRY_MS);
      });
      res.on('end', () => {
        if (p.watch === req) this.unwatch(p, WATCH_RETRY_MS);
      });
    });
    p.watch = req;
    req.on('timeout', () => req.destroy());
    req.on('error', () => undefined);
    req.on('close', () => {
      if (p.watch === req) this.unwatch(p, WATCH_RETRY_MS);
    });
  }

  /**
   * One line of `p`'s feed: its figures, if it is the instance it should be and the checks have it
   * up. A beat (the figures held already) only says until when they hold: no new status, so no
   * view rebuild per beat.
   */
  private fed(p: Peer, line: string): void {
    p.watchAt = performance.now();
    const answer = parseHealth(line);
    if (answer === null || answer.id !== p.member.id) return this.unwatch(p, WATCH_UNSUPPORTED_RETRY_MS);
    const now = Date.now();
    const key = figuresKey(answer.state, answer.load);
    // The first line after a watch opens says nothing of when the figures changed.
    if (key !== p.lineKey && p.lineKey !== null) p.changedAt = now;
    p.lineKey = key;
    p.lineHeld = answer.load === null ? now : takenAt(answer.load.at, now);
    const before = p.status;
    if (before !== null && !before.up) return;
    if (before !== null && before.load !== null && figuresKey(before.state, before.load) === key) return;
    this.set(p, {
      up: true, checkedAt: Date.now(), rttMs: before?.rttMs ?? null, reason: before?.reason ?? 'ok',
      state: answer.state, load: newer(answer.load, before?.load ?? null),
    });
  }

  /** Closes `p`'s watch (if any); a new one may open after `retryMs`. */
  private unwatch(p: Peer, retryMs: number): void {
    const req = p.watch;
    p.watch = null;
    p.watchLive = false;
    p.watchRetryAt = performance.now() + retryMs;
    if (p.watchTimer !== null) clearTimeout(p.watchTimer);
    p.watchTimer = null;
    req?.destroy();
    if (retryMs > 0 && this.#timer !== null && this.#peers.get(p.member.id) === p) {
      p.watchTimer = setTimeout(() => {
        p.watchTimer = null;
        if (this.#peers.get(p.member.id) !== p) return;
        // A timer may fire a millisecond before performance.now() says retryMs passed (it counts
        // from the loop's cached time): due now, or it would wait for the next round.
        p.watchRetryAt = Math.min(p.watchRetryAt, performance.now());
        this.watchIfDue(p);
      }, retryMs);
      p.watchTimer.unref();
    }
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
      this.set(p, { up, checkedAt: Date.now(), rttMs: ok ? rttMs : null, reason, state, load: newer(load, p.status?.load ?? null) });
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

/**
 * `a`, the figures just received, unless `b`, the ones held, are slightly newer: a check's answer
 * that was in flight while a feed line arrived. Only within a second, so that a peer whose clock
 * stepped back is not ignored until it catches up.
 */
function newer(a: HealthStatus['load'], b: HealthStatus['load']): HealthStatus['load'] {
  if (a === null) return b;
  return b !== null && b.at > a.at && b.at - a.at < 1000 ? b : a;
}

const BEAT_PARAM = /;\s*beat=(\d{1,6})\s*(?:;|$)/;
const ACTIVE_PARAM = /;\s*active=(\d{1,6})\s*(?:;|$)/;

/** A feed's `beat=` and `active=` media type parameters (feed.ts), in ms; 0 when absent or absurd. */
function feedParams(type: string): { beatMs: number; activeMs: number } {
  const beatMs = Number(BEAT_PARAM.exec(type)?.[1] ?? 0);
  const activeMs = Number(ACTIVE_PARAM.exec(type)?.[1] ?? 0);
  return beatMs > 0 && activeMs > beatMs ? { beatMs, activeMs } : { beatMs: 0, activeMs: 0 };
}

/** The figures of a health answer that routing uses, as one string (equal strings: nothing changed). */
function figuresKey(state: MemberState | null, load: HealthStatus['load']): string {
  return load === null ? `${state}` : `${state} ${load.sessions} ${load.capacity} ${load.opened} ${load.pending}`;
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
