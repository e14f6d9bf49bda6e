/**
 * The balancer's I/O: classify a request, ask the pure `route` where it goes, then serve it here,
 * answer it (sockjs info, rejects), or forward it to a peer with retries for new sessions.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { parse as parseCookie, serialize as serializeCookie } from 'cookie';
import type { ClusterConfig } from '../config';
import type { Member, MembershipView } from '../discovery/view';
import type { Logger } from '../log';
import type { Keys } from '../sign';
import { classify, type DdpFacts, type RequestFacts } from './classify';
import { HOP_HEADER, ReplayGuard, applyClientView, checkHop, clientViewOf, makeHop, type HopCheck } from './hop';
import { baseUrlFor, pinnedPath, sendInfo } from './info';
import { PendingLoad, type LoadReport } from './pending';
import { Forwarder, isRefusal, type ProxyAttempt, type Tunnel } from './proxy';
import { route, type Decision, type RoutePolicy } from './route';
import { SessionTable } from './sessions';
import { errorKind, type ErrorKind, type RouteReason } from '../reasons';

/** What routing reads of a request: its headers (webapp's categorized requests have them too). */
export type RequestLike = Pick<IncomingMessage, 'headers'>;

export interface BalancerStats {
  requests: number;
  upgrades: number;
  served: number;
  proxied: number;
  pinned: number;
  rejected: number;
  /** Requests that arrived from a peer with a verified hop header. */
  hopsIn: number;
  /** Requests and upgrades this instance forwarded to a peer. */
  hopsOut: number;
  retries: number;
  proxyErrors: number;
  untrustedHops: number;
  /** Refused by the Origin allow-list (CLUSTER_ALLOWED_ORIGINS). */
  forbiddenOrigins: number;
  /** Refused because too many proxied requests were pending. */
  overloaded: number;
  pendingProxies: number;
  byTransport: Record<string, number>;
  /** Requests and upgrades forwarded to a peer, by transport. */
  proxiedByTransport: Record<string, number>;
  /** Routing decisions by `<action>:<reason>`; reasons are the fixed codes of lib/reasons.ts. */
  byReason: Partial<Record<`${Decision['action']}:${RouteReason}`, number>>;
  sessionTable: number;
  openProxiedSockets: number;
}

export interface BalancerDeps {
  readonly config: ClusterConfig;
  readonly logger: Logger;
  readonly keys: Keys | null;
  readonly view: () => MembershipView;
  readonly random: () => number;
  readonly serveRequest: (req: IncomingMessage, res: ServerResponse) => void;
  readonly serveUpgrade: (req: IncomingMessage, socket: Socket, head: Buffer) => void;
  /** Passive health check: a connect to this member was refused or reset. */
  readonly peerDown: (memberId: string, reason: ErrorKind) => void;
  /**
   * Live DDP sessions on this instance. This instance's own load in the view is its last
   * heartbeat's while peers' is refreshed by every health check; without the live count, sessions
   * that peers proxied here since the heartbeat would be invisible to this balancer.
   */
  readonly liveSessions?: () => number;
  /** A polling request of `sessionId` is served here (not proxied); `res` is its response. */
  readonly servedPoll?: (sessionId: string, res: ServerResponse) => void;
  /** A new session was just routed: peers' load figures are worth refreshing. */
  readonly routedNew?: () => void;
  /** Issue 14: this request's connection was handed here by the primary, which routed it here: serve it. */
  readonly chosenHere?: (req: RequestLike) => boolean;
}

/** New sessions may be retried on another member at most this many times. */
const MAX_RETRIES = 2;
/** Long polls last up to Meteor's 45 s sockjs heartbeat; give them room, never Meteor's 5 s. */
const POLL_TIMEOUT_MS = 120_000;
const STREAMING = new Set(['xhr_streaming', 'eventsource', 'htmlfile', 'websocket']);
/**
 * Proxied requests and upgrades waiting for their peer at once; past it new ones get 503, so a
 * flood (or a stalled peer) can't pile up sockets and memory without bound. Long polls that are
 * already answered-and-streaming don't count.
 */
export const MAX_PENDING = 10_000;
/** Sessions this balancer remembers the member of (least recently used go first). */
export const SESSION_TABLE_MAX = 200_000;

export class Balancer {
  readonly #d: BalancerDeps;
  readonly #policy: RoutePolicy;
  readonly #forwarder = new Forwarder();
  readonly #pending: PendingLoad;
  readonly #sessions: SessionTable;
  readonly #replay = new ReplayGuard();
  readonly #stats: BalancerStats = {
    requests: 0, upgrades: 0, served: 0, proxied: 0, pinned: 0, rejected: 0, hopsIn: 0, hopsOut: 0,
    retries: 0, proxyErrors: 0, untrustedHops: 0, forbiddenOrigins: 0, overloaded: 0, pendingProxies: 0,
    byTransport: {}, proxiedByTransport: {}, byReason: {}, sessionTable: 0, openProxiedSockets: 0,
  };
  #pendingProxies = 0;
  /** Sessions opened here (served here, from clients or peers): reported as `opened`. */
  #opened = 0;
  /** The session-table owner as it was when a request arrived, for its retries. */
  readonly #ownerAtStart = new WeakMap<RequestLike, string | null>();
  /** Bodies of sends read before proxying, so a reset before any answer can replay them. */
  readonly #bodies = new WeakMap<IncomingMessage, Buffer>();
  readonly #origins: ReadonlySet<string>;
  readonly #endpointUrls = new Map<string, URL>();
  readonly #classifyOptions: { pathPrefix: string; dashboardPath: string };

  constructor(deps: BalancerDeps) {
    this.#d = deps;
    const c = deps.config;
    this.#policy = {
      selfWeight: c.selfWeight,
      hysteresis: 0.05,
      hysteresisSessions: 2,
      publicServices: c.publicServices,
      uiService: c.uiService,
      slowStartMs: c.slowStartMs,
    };
    this.#pending = new PendingLoad(Math.max(10_000, 5 * c.heartbeatMs));
    this.#sessions = new SessionTable(c.staleMs + 90_000, SESSION_TABLE_MAX);
    this.#classifyOptions = { pathPrefix: c.pathPrefix, dashboardPath: c.dashboardPath };
    this.#origins = new Set(c.allowedOrigins);
  }

  classify(req: IncomingMessage): RequestFacts {
    return classify(req.url ?? '/', this.#classifyOptions);
  }

  /** Handles a DDP or page request. */
  request(req: IncomingMessage, res: ServerResponse, facts: DdpFacts | { kind: 'page' }): void {
    this.#stats.requests++;
    const hop = this.admitted(req, facts);
    if (hop === null) return reply(res, 403, 'origin not allowed');
    const excluded = new Set<string>();
    const decision = this.route(req, facts, hop, excluded);
    this.count(facts, decision);
    // A session whose request its member refused (sockjs: 404 unknown session, 405 wrong method)
    // is not worth remembering: junk session ids must not fill the session table.
    if (facts.kind === 'transport') {
      const sessionId = facts.sessionId;
      res.once('finish', () => {
        if (res.statusCode >= 400 && res.statusCode < 500) this.#sessions.delete(sessionId);
      });
    }
    this.actWeb(req, res, facts, hop, decision, 0, excluded, false);
  }

  upgrade(req: IncomingMessage, socket: Socket, head: Buffer, facts: DdpFacts | { kind: 'page' }): void {
    this.#stats.upgrades++;
    const hop = this.admitted(req, facts);
    if (hop === null) return rejectUpgrade(socket, 403, 'origin not allowed');
    const excluded = new Set<string>();
    const decision = this.route(req, facts, hop, excluded);
    this.count(facts, decision);
    this.actUpgrade(req, socket, head, facts, hop, decision, 0, excluded);
  }

  /**
   * What every request and upgrade goes through first: note where this balancer last sent its
   * session (for retries), check its hop header, and apply the Origin allow-list. Null: refused.
   */
  private admitted(req: IncomingMessage, facts: DdpFacts | { kind: 'page' }): HopCheck | null {
    this.#ownerAtStart.set(req, facts.kind === 'transport' ? this.#sessions.get(facts.sessionId, Date.now()) : null);
    const hop = this.hop(req);
    if (facts.kind !== 'page' && hop.kind !== 'trusted' && !this.originAllowed(req)) {
      this.#stats.forbiddenOrigins++;
      return null;
    }
    return hop;
  }

  /**
   * The public balancer URL a new client of `service` (default: the UI service) should connect
   * to, counted as a new session there; null when the chosen member has no balancer URL (the
   * client then keeps its default URL and sockjs info pinning does the rest).
   */
  pickDdpUrl(req: RequestLike, service: string | null = null): string | null {
    const facts: DdpFacts = { kind: 'info', service, pinned: null, localUrl: '' };
    const d = this.route(req, facts, { kind: 'none' }, new Set());
    if (d.action !== 'pin' || d.member.balancer === null) return null;
    this.newSession(d.member);
    // The member's pinned path on its own balancer: that balancer serves the page's sessions
    // itself instead of routing them again (Meteor appends /sockjs or /websocket to the URL).
    return d.member.balancer + pinnedPath(d.member, d.member.service, this.#classifyOptions.pathPrefix);
  }

  stats(): BalancerStats {
    return {
      ...this.#stats,
      byTransport: { ...this.#stats.byTransport },
      proxiedByTransport: { ...this.#stats.proxiedByTransport },
      byReason: { ...this.#stats.byReason },
      pendingProxies: this.#pendingProxies,
      sessionTable: this.#sessions.size,
      openProxiedSockets: this.#forwarder.openUpgrades,
    };
  }

  /** Sessions ever opened here (monotonic), for load reports: peers retire pending entries by it. */
  opened(): number {
    return this.#opened;
  }

  /** New sessions kept for this instance that have not opened yet, for load reports. */
  pendingHere(): number {
    const self = this.#d.view().self;
    return self === null ? 0 : this.#pending.routed(self.id, this.report(self), Date.now());
  }

  // ---- Issue 14 (workers): the decision for a connection's first request, before HTTP parsing.
  /**
   * Where a request head read off a new connection goes, when that is a member `accept`s (one of
   * this machine's workers): counted as routed there (pending load, session table) exactly like a
   * proxied request. Null: this process handles the connection as usual (serves, answers, proxies).
   * A sockjs info pinned to such a member goes there too (it answers, pinning the session to
   * itself). Requests with a hop header, refused origins, pages and the health and dashboard routes
   * always stay here.
   */
  decideHead(head: { method: string; url: string; headers: Record<string, string> }, accept: (member: Member) => boolean): Member | null {
    if (head.headers[HOP_HEADER] !== undefined) return null;
    let facts = classify(head.url, this.#classifyOptions);
    // As attach's request handler: only GET info is answered by the balancer.
    if (facts.kind === 'info' && head.method !== 'GET') facts = { ...facts, kind: 'sockjs-other' };
    if (facts.kind === 'page' || facts.kind === 'malformed' || facts.kind === 'dashboard' || facts.kind === 'health') return null;
    const req = { headers: head.headers } as unknown as IncomingMessage;
    if (!this.originAllowed(req)) return null;
    this.#ownerAtStart.set(req, facts.kind === 'transport' ? this.#sessions.get(facts.sessionId, Date.now()) : null);
    const d = this.route(req, facts, { kind: 'none' }, new Set());
    if ((d.action !== 'proxy' && d.action !== 'pin') || !accept(d.member)) return null;
    // sockjs info pinned to a worker: that worker answers it, pinning the session to itself, so
    // the client's kept-alive connection carries the session's requests to their member directly.
    if (d.action === 'pin') this.newSession(d.member);
    else this.remember(facts, d, d.member);
    return d.member;
  }
  // ---- end issue 14

  /** Periodic housekeeping (expired sessions, nonces, pending counts); called by the owner's timer. */
  maintain(now: number): void {
    this.#sessions.prune(now);
    this.#replay.prune(Date.now());
    const view = this.#d.view();
    this.#pending.prune(new Set(view.byId.keys()));
  }

  /** Websockets this balancer proxies to peers: clients that depend on it as their entry. */
  tunnels(): Tunnel[] {
    return this.#forwarder.tunnels();
  }

  close(): void {
    this.#forwarder.close();
  }

  /**
   * Cross-site websocket hijacking guard: with an allow-list, a browser session (which always
   * sends Origin on websockets and cross-origin requests) must come from a listed origin.
   * Requests without Origin (same-origin GETs, Node/mobile DDP clients) pass.
   */
  private originAllowed(req: IncomingMessage): boolean {
    if (this.#origins.size === 0) return true;
    const origin = req.headers.origin;
    return origin === undefined || this.#origins.has(origin);
  }

  /** Counts a proxy attempt until its peer answered (or failed); false when over the cap. */
  private admit(): (() => void) | null {
    if (this.#pendingProxies >= MAX_PENDING) {
      this.#stats.overloaded++;
      return null;
    }
    this.#pendingProxies++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#pendingProxies--;
    };
  }

  private hop(req: IncomingMessage): HopCheck {
    const value = req.headers[HOP_HEADER];
    if (value === undefined) return { kind: 'none' };
    delete req.headers[HOP_HEADER];
    const check = checkHop(this.#d.keys, value, req.method ?? 'GET', req.url ?? '/', this.selfId(), Date.now(), this.#replay.check);
    if (check.kind === 'trusted') this.#stats.hopsIn++;
    if (check.kind === 'untrusted') {
      this.#stats.untrustedHops++;
      this.#d.logger.once('warn', `hop:${check.reason}`, 'balancer.untrusted_hop', {
        reason: check.reason, remote: req.socket.remoteAddress,
        note: check.reason === 'expired' ? 'check the clocks of the instances (NTP)' : 'header stripped',
      });
    }
    return check;
  }

  /** This instance's id, as peers know it (the one hop headers are addressed to). */
  private selfId(): string {
    return this.#d.view().self?.id ?? this.#d.config.instanceId;
  }

  /**
   * What `member` last reported, for matching pending entries. This instance reports itself live:
   * its session count now and the sessions it opened so far.
   */
  private report(member: Member): LoadReport {
    if (member.self) return { at: 0, sessions: this.#d.liveSessions?.() ?? member.load.sessions, opened: this.#opened, live: true };
    return { at: member.heartbeatAt, sessions: member.load.sessions, opened: member.load.opened ?? null, pending: member.load.pending ?? null };
  }

  /** Counts a new session routed to `member` (this instance included) until it opens there. */
  private newSession(member: Member): void {
    const now = Date.now();
    if (member.self) this.#pending.landed(now);
    this.#pending.add(member.id, this.report(member), now);
    this.#d.routedNew?.();
  }

  private route(req: RequestLike, facts: DdpFacts | { kind: 'page' }, hop: HopCheck, excluded: Set<string>): Decision {
    const view = this.#d.view();
    const now = Date.now();
    // Issue 14: the primary routed this connection's first request here already.
    const chosen = this.#d.chosenHere?.(req) ?? false;
    if (chosen && facts.kind === 'info' && view.self !== null) return { action: 'pin', member: view.self, reason: 'pinned endpoint' };
    return route({
      facts,
      view,
      policy: this.#policy,
      state: {
        // Trusted hops are served here; so are unsigned ones in a cluster without a secret and
        // expired ones (clock skew), which could otherwise bounce between peers.
        hop: hop.kind === 'trusted' || (hop.kind === 'untrusted' && (this.#d.keys === null || hop.reason === 'expired'))
          || chosen,
        pending: (id) => {
          const m = view.byId.get(id);
          return m ? this.#pending.count(id, this.report(m), now) : 0;
        },
        selfSessions: this.#d.liveSessions?.() ?? null,
        sessionOwner: this.#ownerAtStart.get(req) ?? null,
        excluded,
        cookieHash: facts.kind === 'page' ? uiCookie(req) : null,
        random: this.#d.random,
      },
    });
  }

  private count(facts: DdpFacts | { kind: 'page' }, d: Decision): void {
    const s = this.#stats;
    const key = facts.kind === 'transport' ? facts.transport : facts.kind;
    s.byTransport[key] = (s.byTransport[key] ?? 0) + 1;
    const reason = `${d.action}:${d.reason}` as const;
    s.byReason[reason] = (s.byReason[reason] ?? 0) + 1;
  }

  private countProxied(facts: DdpFacts | { kind: 'page' }): void {
    const s = this.#stats;
    s.proxied++;
    s.hopsOut++;
    const key = facts.kind === 'transport' ? facts.transport : facts.kind;
    s.proxiedByTransport[key] = (s.proxiedByTransport[key] ?? 0) + 1;
  }

  private remember(facts: DdpFacts | { kind: 'page' }, d: Decision, member: Member | null): void {
    const target = member ?? this.#d.view().self;
    if (target === null) return;
    const now = Date.now();
    // Counted as pending first, so that the count of sessions opened here, just below, matches it.
    if (d.action !== 'reject' && 'newSession' in d && d.newSession) this.newSession(target);
    if (target.self) {
      // Opened here: a websocket (each one a session), or the first receiving request of a sockjs
      // session (from a client or a peer) that this balancer has not seen served here before.
      if (facts.kind === 'raw-websocket') this.#opened++;
      else if (facts.kind === 'transport' && !SENDS.has(facts.transport) && this.#sessions.get(facts.sessionId, now) !== target.id) this.#opened++;
    }
    // Every session this balancer forwards, pinned ones included: if a pinned member dies, this
    // tells an established session (lost: 404) from a first poll (moved to a survivor).
    if (facts.kind === 'transport') this.#sessions.set(facts.sessionId, target.id, now);
  }

  private actWeb(req: IncomingMessage, res: ServerResponse, facts: DdpFacts | { kind: 'page' }, hop: HopCheck, d: Decision,
    tries: number, excluded: Set<string>, again: boolean): void {
    switch (d.action) {
      case 'reject':
        this.#stats.rejected++;
        return reply(res, d.status, d.reason);
      case 'pin': {
        this.#stats.pinned++;
        const service = ('service' in facts ? facts.service : null) ?? d.member.service;
        this.newSession(d.member);
        const c = this.#d.config;
        return sendInfo(req, res, { websocket: !c.disableWebsockets, cors: !c.disableSockjsCors, cookieNeeded: c.useJsessionid, pathPrefix: c.pathPrefix },
          baseUrlFor(req, d.member, service, c.pathPrefix, c));
      }
      case 'serve':
        this.#stats.served++;
        this.remember(facts, d, null);
        if (facts.kind === 'transport') this.#d.servedPoll?.(facts.sessionId, res);
        return this.serveWeb(req, res, facts, hop);
      case 'proxy': {
        if (!again) {
          this.countProxied(facts);
          this.remember(facts, d, d.member);
        }
        const url = 'localUrl' in facts ? facts.localUrl : (req.url ?? '/');
        req.url = url;
        req.socket.setTimeout('localUrl' in facts && STREAMING.has(transportOf(facts)) ? 0 : POLL_TIMEOUT_MS);
        // A send's body is read first (small ones only), so a reset before any answer can replay it.
        if (!again && tries === 0 && !this.#bodies.has(req) && bufferable(req, facts)) {
          return void readBody(req, MAX_REPLAY_BODY).then((body) => {
            this.#bodies.set(req, body);
            this.actWeb(req, res, facts, hop, d, tries, excluded, again);
          }, () => reply(res, 400, 'bad request body'));
        }
        const release = this.admit();
        if (release === null) return reply(res, 503, 'balancer overloaded');
        res.once('close', release);
        const body = this.#bodies.get(req) ?? null;
        const attempt = this.attempt(req, d.member, facts, body ?? (tries > 0 || again ? EMPTY : null), again, d.setCookie);
        this.#forwarder.web(req, res, attempt, (err, touched) => {
          release();
          this.#stats.proxyErrors++;
          const refused = isRefusal(err);
          if (refused && !touched) this.#d.peerDown(d.member.id, errorKind(err));
          this.#d.logger.once('warn', `proxy:${d.member.id}:${errorKind(err)}`, 'balancer.proxy_error', {
            to: d.member.endpoint, error: err, touched,
          });
          if (touched) return void res.destroy();
          // A reset before any answer, typically a kept-alive connection the peer had just closed,
          // says nothing about the peer: try it once more on a new connection.
          if (!refused && !again && (!hasBody(req) || body !== null)) {
            this.#stats.retries++;
            return this.actWeb(req, res, facts, hop, d, tries, excluded, true);
          }
          if (retryable(req, facts, d) && tries < MAX_RETRIES) {
            this.#stats.retries++;
            excluded.add(d.member.id);
            const next = this.route(req, facts, { kind: 'none' }, excluded);
            return this.actWeb(req, res, facts, hop, next, tries + 1, excluded, false);
          }
          reply(res, 502, 'upstream unavailable');
        }, release);
        return;
      }
    }
  }

  private actUpgrade(req: IncomingMessage, socket: Socket, head: Buffer, facts: DdpFacts | { kind: 'page' }, hop: HopCheck,
    d: Decision, tries: number, excluded: Set<string>): void {
    switch (d.action) {
      case 'reject':
        this.#stats.rejected++;
        return rejectUpgrade(socket, d.status, d.reason);
      case 'pin':
      case 'serve':
        this.#stats.served++;
        this.remember(facts, d, null);
        if ('localUrl' in facts) req.url = facts.localUrl;
        if (hop.kind === 'trusted') applyClientView(req, hop.client);
        return this.#d.serveUpgrade(req, socket, head);
      case 'proxy': {
        this.countProxied(facts);
        this.remember(facts, d, d.member);
        if ('localUrl' in facts) req.url = facts.localUrl;
        const release = this.admit();
        if (release === null) return rejectUpgrade(socket, 503, 'balancer overloaded');
        socket.once('close', release);
        const attempt = this.attempt(req, d.member, facts, null, true);
        this.#forwarder.upgrade(req, socket, head, attempt, (err) => {
          release();
          this.#stats.proxyErrors++;
          if (isRefusal(err)) this.#d.peerDown(d.member.id, errorKind(err));
          this.#d.logger.once('warn', `proxy:${d.member.id}:${errorKind(err)}`, 'balancer.proxy_error', { to: d.member.endpoint, error: err, upgrade: true });
          // A websocket upgrade always starts a session: nothing is lost by trying another member.
          if (tries < MAX_RETRIES && !socket.destroyed) {
            this.#stats.retries++;
            excluded.add(d.member.id);
            const next = this.route(req, facts, { kind: 'none' }, excluded);
            return this.actUpgrade(req, socket, head, facts, hop, next, tries + 1, excluded);
          }
          rejectUpgrade(socket, 502, 'upstream unavailable');
        }, release);
        return;
      }
    }
  }

  private serveWeb(req: IncomingMessage, res: ServerResponse, facts: DdpFacts | { kind: 'page' }, hop: HopCheck): void {
    if ('localUrl' in facts) req.url = facts.localUrl;
    if (hop.kind === 'trusted') {
      const restore = applyClientView(req, hop.client);
      res.once('close', restore);
    }
    this.#d.serveRequest(req, res);
  }

  /** A member's endpoint, parsed once (every proxied request needs it), not once per request. */
  private endpointUrl(endpoint: string): URL {
    let url = this.#endpointUrls.get(endpoint);
    if (url === undefined) {
      if (this.#endpointUrls.size >= 1024) this.#endpointUrls.clear();
      url = new URL(endpoint);
      this.#endpointUrls.set(endpoint, url);
    }
    return url;
  }

  private attempt(req: IncomingMessage, member: Member, facts: DdpFacts | { kind: 'page' }, body: Buffer | null, fresh: boolean,
    setCookie = false): ProxyAttempt {
    const client = clientViewOf(req);
    const hop = makeHop(this.#d.keys, req.method ?? 'GET', req.url ?? '/', client, this.selfId(), member.id, Date.now());
    const streaming = facts.kind === 'raw-websocket' || (facts.kind === 'transport' && STREAMING.has(facts.transport));
    return {
      target: this.endpointUrl(member.endpoint),
      headers: { [HOP_HEADER]: hop },
      timeoutMs: streaming ? 0 : POLL_TIMEOUT_MS,
      body,
      fresh,
      setCookie: setCookie ? uiCookieFor(member.endpointHash) : null,
    };
  }
}

const SENDS = new Set(['xhr_send', 'jsonp_send']);
const EMPTY = Buffer.alloc(0);
/** Send bodies up to this size are read before proxying and replayed once after a reset; larger ones stream. */
const MAX_REPLAY_BODY = 256 * 1024;

/** A send with a declared, small body: worth reading first so it can be replayed. */
function bufferable(req: IncomingMessage, facts: DdpFacts | { kind: 'page' }): boolean {
  if (facts.kind !== 'transport' || !SENDS.has(facts.transport)) return false;
  if (req.headers['transfer-encoding'] !== undefined) return false;
  const len = Number(req.headers['content-length']);
  return Number.isInteger(len) && len > 0 && len <= MAX_REPLAY_BODY;
}

function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) {
        req.destroy();
        reject(new Error('body too large'));
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
    req.on('aborted', () => reject(new Error('aborted')));
  });
}

/**
 * May a request that failed before any byte reached the client go to another member? New
 * sessions, receiving requests of a session whose member just died (the survivor opens it: it was
 * lost anyway, and a first poll right after a pin loses nothing), and bodiless page loads.
 * Never a send: its body was consumed and its session is gone.
 */
function retryable(req: IncomingMessage, facts: DdpFacts | { kind: 'page' }, d: Decision & { action: 'proxy' }): boolean {
  if (hasBody(req)) return false;
  if (d.newSession) return true;
  if (facts.kind === 'transport') return !SENDS.has(facts.transport);
  return facts.kind === 'page' && (req.method === 'GET' || req.method === 'HEAD');
}

function transportOf(facts: DdpFacts): string {
  return facts.kind === 'transport' ? facts.transport : facts.kind === 'raw-websocket' ? 'websocket' : facts.kind;
}

function hasBody(req: IncomingMessage): boolean {
  const len = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (len !== undefined && len !== '0');
}

export const UI_COOKIE = 'ddp-cluster-ui';

function uiCookie(req: RequestLike): string | null {
  const header = req.headers.cookie;
  // Cheap scan first: most page requests carry no affinity cookie at all.
  if (typeof header !== 'string' || !header.includes(UI_COOKIE)) return null;
  const value = parseCookie(header)[UI_COOKIE];
  return value !== undefined && /^[0-9a-f]{8,64}$/.test(value) ? value : null;
}

function uiCookieFor(hash: string): string {
  // Affinity for an hour: long enough for a visit, short enough not to skew the spread for long.
  return serializeCookie(UI_COOKIE, hash, { path: '/', maxAge: 3600, httpOnly: true, sameSite: 'lax' });
}

export function reply(res: ServerResponse, status: number, message: string): void {
  if (res.headersSent) return void res.destroy();
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store', Connection: 'close' });
  res.end(message + '\n');
}

const STATUS_TEXT: Readonly<Record<number, string>> = { 400: 'Bad Request', 403: 'Forbidden', 404: 'Not Found', 414: 'URI Too Long', 502: 'Bad Gateway', 503: 'Service Unavailable' };

export function rejectUpgrade(socket: Socket, status: number, message: string): void {
  if (socket.destroyed) return;
  const body = message + '\n';
  socket.end(`HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}
