/**
 * The routing decisions, pure: no I/O, no clock, no randomness of its own.
 *
 *   door()   what reaches the balancer at all: malformed URLs and upgrades of plain resources are
 *            refused, the health route and the dashboard are answered, upgrades outside DDP go to
 *            the app untouched; DDP requests and pages are balanced.
 *   route()  a balanced request, from (its facts, this instance, the membership view, policy, the
 *            balancer's small local state) to serve here | proxy to a member | pin a new session
 *            to a member (sockjs info) | reject.
 */
import type { Member, MembershipView } from '../discovery/view';
import type { DdpFacts, RequestFacts } from './classify';
import { rendezvous } from './rendezvous';
import type { MalformedReason, RouteReason } from '../outcomes';

export interface RoutePolicy {
  /** CLUSTER_SELF_WEIGHT: 1 = a full share here, 0 = only proxy (unless nobody else can serve). */
  readonly selfWeight: number;
  /** Stay here unless the best peer is this much less loaded (relative) ... */
  readonly hysteresis: number;
  /** ... plus this many sessions (absolute), so small clusters don't flap on one session. */
  readonly hysteresisSessions: number;
  readonly publicServices: readonly string[];
  /** CLUSTER_UI_SERVICE: the service behind pages and the default DDP connection. */
  readonly uiService: string | null;
  /** CLUSTER_SLOW_START: a member's effective capacity ramps over this long after it starts serving. */
  readonly slowStartMs: number;
}

export interface RouteState {
  /**
   * Sessions a member's load figure doesn't include yet: routed to it by this balancer and not yet
   * opened there, plus (peers) an estimate of those it opened for others since its report. May be
   * fractional.
   */
  readonly pending: (memberId: string) => number;
  /**
   * This instance's live session count, fresher than the report in the view (its last heartbeat);
   * null: use the view's figure.
   */
  readonly selfSessions: number | null;
  /** The member this balancer already routed this sockjs session to, if any. */
  readonly sessionOwner: string | null;
  /** Members that already failed for this very request (retries). */
  readonly excluded: ReadonlySet<string>;
  /** The request carried a verified hop header: a peer already chose this instance. */
  readonly hop: boolean;
  /**
   * This balancer carries polling sessions to their members itself (translate.ts): the polling
   * requests of a session whose path names it as `via` are translated here, not relayed.
   */
  readonly translates?: boolean;
  /**
   * CLUSTER_WORKERS_COUNT: the first request of a connection this machine's primary handed to
   * this worker, having routed it here already: served here like a hop (sockjs info: pinned here).
   */
  readonly handed?: boolean;
  /** Endpoint hash from the UI affinity cookie, for page requests. */
  readonly cookieHash: string | null;
  /** Uniform in [0, 1); injected so tests are deterministic. */
  readonly random: () => number;
  /**
   * New sessions this balancer routed recently to `memberId`, and in all (lib/balancer/intake.ts):
   * a member in slow start takes at most its ramp fraction of them. Absent: no cap.
   */
  readonly intake?: (memberId: string) => { readonly member: number; readonly total: number };
}

export type Decision =
  | { readonly action: 'serve'; readonly reason: RouteReason; readonly newSession: boolean }
  | { readonly action: 'proxy'; readonly member: Member; readonly reason: RouteReason; readonly newSession: boolean; readonly setCookie: boolean }
  /** A polling request of a session this balancer carries to `member` over one websocket (translate.ts). */
  | { readonly action: 'translate'; readonly member: Member; readonly reason: RouteReason; readonly newSession: boolean }
  | { readonly action: 'pin'; readonly member: Member; readonly reason: RouteReason }
  | { readonly action: 'reject'; readonly status: 404 | 503; readonly reason: RouteReason };

export interface RouteInput {
  readonly facts: DdpFacts | { readonly kind: 'page' };
  readonly view: MembershipView;
  readonly policy: RoutePolicy;
  readonly state: RouteState;
}

/** What the balancer routes: DDP requests (sockjs and raw websocket) and pages. */
export type Balanced = DdpFacts | { readonly kind: 'page' };

/** What happens to a request or upgrade before any balancing. */
export type DoorDecision =
  | { readonly action: 'refuse'; readonly status: 400 | 404 | 414; readonly reason: MalformedReason | 'not a websocket endpoint' }
  | { readonly action: 'health' }
  | { readonly action: 'dashboard'; readonly sub: string }
  /** A peer's websocket carrying one polling session it translates (carried.ts); trusted only with a valid hop header. */
  | { readonly action: 'carry' }
  /** An upgrade of a page, the dashboard or the health route: the app's, untouched. */
  | { readonly action: 'app' }
  | { readonly action: 'balance'; readonly facts: Balanced };

/** The front door's decision for classified `facts`, arriving as an HTTP request or a websocket upgrade. */
export function door(facts: RequestFacts, upgrade: boolean): DoorDecision {
  switch (facts.kind) {
    case 'malformed':
      return { action: 'refuse', status: facts.status, reason: facts.reason };
    case 'health':
      return upgrade ? { action: 'app' } : { action: 'health' };
    case 'dashboard':
      return upgrade ? { action: 'app' } : { action: 'dashboard', sub: facts.sub };
    case 'carry':
      return upgrade ? { action: 'carry' } : { action: 'refuse', status: 404, reason: 'not a carry upgrade' };
    case 'page':
      return upgrade ? { action: 'app' } : { action: 'balance', facts };
    case 'raw-websocket':
      return { action: 'balance', facts };
    case 'transport':
      // Of the sockjs transports only websocket is an upgrade.
      if (upgrade && facts.transport !== 'websocket') return { action: 'refuse', status: 400, reason: 'not a websocket endpoint' };
      return { action: 'balance', facts };
    default:
      // sockjs info, greeting, iframe: plain HTTP resources, never upgraded.
      return upgrade ? { action: 'refuse', status: 400, reason: 'not a websocket endpoint' } : { action: 'balance', facts };
  }
}

const serve = (reason: RouteReason, newSession = false): Decision => ({ action: 'serve', reason, newSession });
const reject = (status: 404 | 503, reason: RouteReason): Decision => ({ action: 'reject', status, reason });

export function route(input: RouteInput): Decision {
  const { facts, view, state } = input;
  // A sockjs info handed here answers with this member's pinned base_url, so the client's
  // kept-alive connection carries the session's requests to this worker with no hop.
  if (state.handed === true && facts.kind === 'info' && view.self !== null) return { action: 'pin', member: view.self, reason: 'pinned endpoint' };
  // A polling request of a session its entry balancer carries: only that balancer can serve it.
  if (facts.kind === 'transport' && facts.via !== null && facts.transport !== 'websocket') return routeCarried(input, facts, facts.via);
  if (state.hop || state.handed === true) return serve('hop from a peer');
  if (facts.kind === 'page') return routePage(input);

  const self = view.self;
  const service = facts.service ?? input.policy.uiService ?? self?.service ?? null;
  if (service === null) return serve('not clustered');
  if (facts.service !== null && !reachable(facts.service, input)) return reject(404, 'service not public');

  switch (facts.kind) {
    case 'info':
      return routeInfo(input, service, facts.pinned);
    case 'transport':
      if (facts.pinned !== null) return routePinned(input, service, facts.pinned, facts.opens, facts.sessionId);
      return routeSession(input, service, facts.sessionId, facts.opens);
    case 'raw-websocket':
      if (facts.pinned !== null) return routePinned(input, service, facts.pinned, true, null);
      return toTarget(input, service, pickNew(input, service), 'least loaded', true);
    case 'sockjs-other':
      if (self !== null && self.service === service) return serve('stateless sockjs resource');
      return toTarget(input, service, pickNew(input, service), 'stateless sockjs resource', false);
  }
}

/**
 * A polling request whose path names the balancer that carries its session (`via`, the session's
 * entry, which answered its sockjs info). There: routed like any pinned request, except that a
 * peer member is reached by translating (one websocket per session) instead of relaying each
 * poll. Anywhere else: to that balancer, which holds the session's sockjs state; if it is gone,
 * so is the session (404: the client reconnects), like a websocket whose tunnel broke.
 */
function routeCarried(input: RouteInput, facts: Extract<DdpFacts, { kind: 'transport' }>, via: string): Decision {
  const { view, state } = input;
  const self = view.self;
  if (self !== null && via === self.endpointHash) {
    const service = facts.service ?? input.policy.uiService ?? self.service;
    if (facts.service !== null && !reachable(facts.service, input)) return reject(404, 'service not public');
    const d = facts.pinned !== null ? routePinned(input, service, facts.pinned, false, facts.sessionId) : routeSession(input, service, facts.sessionId, false);
    if (d.action === 'proxy' && state.translates === true) return { action: 'translate', member: d.member, reason: d.reason, newSession: d.newSession };
    return d;
  }
  // Sent here by a peer, yet not ours: our views disagree; serving it here would open a stray session.
  if (state.hop) return reject(404, 'carrying balancer gone');
  const carrier = view.byEndpointHash.get(via);
  if (carrier && carrier.healthy && !state.excluded.has(carrier.id)) {
    return { action: 'proxy', member: carrier, reason: 'carrying balancer', newSession: false, setCookie: false };
  }
  return reject(404, 'carrying balancer gone');
}

/** Whether a service named in the path may be reached through this balancer. */
function reachable(service: string, { view, policy }: RouteInput): boolean {
  return service === view.self?.service || service === policy.uiService || policy.publicServices.includes(service);
}

function routeInfo(input: RouteInput, service: string, pinnedHash: string | null): Decision {
  const pinned = pinnedHash === null ? undefined : input.view.byEndpointHash.get(pinnedHash);
  if (pinned && pinned.service === service && pinned.healthy && pinned.state === 'serving' && !input.state.excluded.has(pinned.id)) {
    return { action: 'pin', member: pinned, reason: 'pinned endpoint' };
  }
  const member = pickNew(input, service);
  if (member) return { action: 'pin', member, reason: 'least loaded' };
  return fallback(input, service);
}

function routePinned(input: RouteInput, service: string, hash: string, opens: boolean, sessionId: string | null): Decision {
  const member = input.view.byEndpointHash.get(hash);
  // Existing sessions stay on a draining member; only a dead or unknown one loses them. A new
  // session (websocket) goes to a member that takes new sessions.
  if (member && member.service === service && member.healthy && !input.state.excluded.has(member.id)
    && (!opens || member.state === 'serving')) {
    return toTarget(input, service, member, 'pinned endpoint', false);
  }
  if (opens) return toTarget(input, service, pickNew(input, service), 'pinned endpoint gone, fresh pick', true);
  if (sessionId !== null) {
    const owner = input.state.sessionOwner;
    // Never seen here: most likely the first poll of a session that info pinned a moment before
    // its member died. Continue it as an unpinned session, so every balancer maps it to the same
    // survivor, where sockjs opens it. The client loses nothing.
    if (owner === null) return routeSession(input, service, sessionId, false);
    // Already moved by this balancer: follow it.
    if (owner !== member?.id) return routeSession(input, service, sessionId, false);
  }
  // An established session whose member is gone: its state is lost, so say so (the client
  // reconnects) rather than let another sockjs silently open a fresh session under it.
  return reject(404, member ? 'pinned endpoint is down' : 'no such endpoint');
}

function routeSession(input: RouteInput, service: string, sessionId: string, opens: boolean): Decision {
  const { view, state } = input;
  const owner = state.sessionOwner === null ? undefined : view.byId.get(state.sessionOwner);
  if (owner && owner.service === service && owner.healthy && !state.excluded.has(owner.id)) return toTarget(input, service, owner, 'session table', false);
  if (opens) return toTarget(input, service, pickNew(input, service), 'least loaded', true);
  // A polling session with no pin: every balancer maps its id to the same member.
  const members = (view.byService.get(service) ?? []).filter((m) => m.healthy && !state.excluded.has(m.id));
  const member = rendezvous(sessionId, members);
  if (member) return toTarget(input, service, member, 'rendezvous', false);
  return fallback(input, service);
}

function routePage(input: RouteInput): Decision {
  const { view, policy, state } = input;
  const ui = policy.uiService;
  const self = view.self;
  if (ui === null || (self !== null && self.service === ui && self.state === 'serving')) return serve('page');
  const cookie = state.cookieHash === null ? undefined : view.byEndpointHash.get(state.cookieHash);
  if (cookie && cookie.service === ui && cookie.healthy && cookie.state === 'serving' && !state.excluded.has(cookie.id)) {
    return toTarget(input, ui, cookie, 'ui cookie', false);
  }
  const member = pickNew(input, ui);
  if (!member) return serve('no ui member; page served here');
  if (member.self) return serve('page');
  return { action: 'proxy', member, reason: 'ui service', newSession: false, setCookie: true };
}

function toTarget(input: RouteInput, service: string, member: Member | null, reason: RouteReason, newSession: boolean): Decision {
  if (member === null) return fallback(input, service);
  if (member.self) return serve(reason, newSession);
  return { action: 'proxy', member, reason, newSession, setCookie: false };
}

/** Nobody eligible: serve here if this instance has the service at all (never take the app down). */
function fallback({ view }: RouteInput, service: string): Decision {
  if (view.self !== null && view.self.service === service) return serve('no eligible member; serving here', true);
  return reject(503, 'no healthy member');
}

/**
 * A member for a new session. A session stays where it landed: this instance serves it as long as
 * its own load (live, plus sessions routed here that have not opened yet) is within the
 * hysteresis of the least-loaded eligible member's (relative `hysteresis` plus `hysteresisSessions`).
 * Only when some member is meaningfully less loaded does it go elsewhere: to the less loaded of
 * two random other members (power of two choices, so balancers that see the same figures don't
 * all herd onto one). A balancer that is not itself a candidate picks by power of two choices.
 */
export function pickNew(input: RouteInput, service: string): Member | null {
  const { view, state, policy } = input;
  const candidates = (view.byService.get(service) ?? []).filter(
    (m) => m.healthy && m.state === 'serving' && !state.excluded.has(m.id),
  );
  if (candidates.length === 0) return null;
  if (candidates.length === 1) return candidates[0] ?? null;
  const oldest = Math.max(...candidates.map((m) => m.servingMs));
  // Slow start caps the share of new sessions too, not just a weight: an empty member's score
  // stays lowest whatever its weight, so it would take every new session until it caught up.
  const capped = candidates.filter((m) => !overRampShare(m, ramp(m, oldest, policy.slowStartMs), state));
  if (capped.length > 0 && capped.length < candidates.length) return pickAmong(input, capped, oldest);
  return pickAmong(input, candidates, oldest);
}

/** A ramping member that already took its ramp fraction of the new sessions routed recently. */
function overRampShare(m: Member, r: number, state: RouteState): boolean {
  if (r >= 1 || state.intake === undefined) return false;
  const { member, total } = state.intake(m.id);
  return member + 1 > r * (total + 1);
}

function pickAmong(input: RouteInput, candidates: readonly Member[], oldest: number): Member | null {
  const { state, policy } = input;
  if (candidates.length === 1) return candidates[0] ?? null;
  const weight = (m: Member): number => (m.self ? policy.selfWeight : 1) * ramp(m, oldest, policy.slowStartMs);
  const score = (m: Member): number => {
    // This instance: its live count. A peer: its report, with the new sessions it kept for itself.
    const sessions = m.self && state.selfSessions !== null ? state.selfSessions : m.load.sessions + (m.self ? 0 : m.load.pending ?? 0);
    return sessionScore(sessions + state.pending(m.id), m.load.capacity, weight(m));
  };

  const self = candidates.find((m) => m.self);
  const others = self ? candidates.filter((m) => m !== self) : candidates;
  const scores = new Map(others.map((m) => [m, score(m)]));
  if (self && policy.selfWeight > 0) {
    const least = Math.min(...scores.values());
    const margin = policy.hysteresisSessions / (Math.max(1, self.load.capacity) * weight(self));
    if (score(self) <= least * (1 + policy.hysteresis) + margin) return self;
  }
  if (others.length === 1) return others[0] ?? null;
  const i = Math.floor(state.random() * others.length) % others.length;
  let j = Math.floor(state.random() * (others.length - 1)) % (others.length - 1);
  if (j >= i) j++;
  const a = others[i] as Member;
  const b = others[j] as Member;
  const sa = scores.get(a) as number;
  const sb = scores.get(b) as number;
  return sa < sb || (sa === sb && a.id < b.id) ? a : b;
}

/** Members that started serving within this much of the oldest one started together. */
const STARTED_TOGETHER_MS = 5000;

/**
 * Slow start: the share of its capacity a member offers, from 10% when it starts serving to 100%
 * after `slowStartMs`, so the sessions of a restarted or drained peer don't all land on it at once.
 * Relative to the oldest candidate: when the whole cluster starts together nobody is held back
 * (and small differences in when members were observed don't skew the spread).
 */
export function ramp(m: Member, oldestServingMs: number, slowStartMs: number): number {
  const ref = Math.min(slowStartMs, oldestServingMs);
  if (ref <= 0 || m.servingMs >= ref - STARTED_TOGETHER_MS) return 1;
  return Math.min(1, Math.max(0.1, m.servingMs / ref));
}

/**
 * Sessions (reported + pending + this one) per unit of weighted capacity, like HAProxy's
 * leastconn with weights. Event-loop figures are reported but not used here: sampled at
 * different moments by different members they add noise, not signal, to a per-session choice.
 */
export function loadScore(m: Member, pending: number, weight: number): number {
  return sessionScore(m.load.sessions + pending, m.load.capacity, weight);
}

function sessionScore(sessions: number, capacity: number, weight: number): number {
  if (weight <= 0) return Infinity;
  return (sessions + 1) / (Math.max(1, capacity) * weight);
}
