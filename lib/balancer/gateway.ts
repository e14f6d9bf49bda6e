/**
 * The gateway: the server's 'request' and 'upgrade' listeners. Every request and upgrade goes
 * through the same named steps over one exchange (exchange.ts):
 *
 *   classify  the URL → facts (classify.ts, pure)
 *   admit     the front door's decision (route.ts door(), pure) and, for what is balanced, the
 *             hop header and the Origin allow-list → a verified peer, a plain client, or refused
 *   route     facts + admission + membership → serve here | proxy | pin | reject (route.ts, pure)
 *   act       on the exchange: reply | serve here | forward; a failed forward is tried again as
 *             RETRY_POLICY (retry.ts) says, over one explicit Attempt
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { parse as parseCookie, serialize as serializeCookie } from 'cookie';
import type { ClusterConfig } from '../config';
import type { Member } from '../discovery/view';
import type { Logger } from '../log';
import { publish } from '../events';
import type { HealthReport, Membership } from '../membership';
import { ClusterError, errorKind, type BalancerStats } from '../outcomes';
import { classify, type DdpFacts, type RequestFacts } from './classify';
import { UpgradeExchange, WebExchange, sendSized, type Exchange, type ServeRequest, type ServeUpgrade } from './exchange';
import { HOP_HEADER, ReplayGuard, checkHop, clientViewOf, makeHop, type HopCheck } from './hop';
import { baseUrlFor, pinnedPath, sendInfo } from './info';
import { Forwarder, type ProxyAttempt, type Tunnel } from './proxy';
import { RETRY_POLICY, isRefusal, retryVerdict } from './retry';
import { door, route, type Balanced, type Decision, type DoorDecision, type RoutePolicy } from './route';
import { ProxiedPolls, type ProxiedPoll } from './polls';
import { RelayedPolls } from './relayed';
import { SessionTable } from './sessions';
import { RecentIds } from './recent';
import { CARRY_PROTOCOL_PARAM, CarriedSessions, SOCKJS_HEADERS, sockjsServerOf } from './carried';
import { Translator, type CarryTarget } from './translate';
import { CARRY_PATH } from './classify';

export type { BalancerStats } from '../outcomes';
export { reply, rejectUpgrade } from './exchange';

/** What routing reads of a request: its headers (webapp's categorized requests have them too). */
export type RequestLike = Pick<IncomingMessage, 'headers'>;

export interface GatewayDeps {
  readonly config: ClusterConfig;
  readonly logger: Logger;
  /**
   * The view to route by, the signing keys, and the load accounting: told of every new session
   * routed, of sessions opened here and of peers that refused a connect. Its live session count
   * matters: this instance's own load in the view is its last heartbeat's while peers' is
   * refreshed by every health check; without it, sessions that peers proxied here since the
   * heartbeat would be invisible to this balancer.
   */
  readonly membership: Membership;
  readonly random: () => number;
  /** The app's own listeners, for what is served here. */
  readonly serveRequest: ServeRequest;
  readonly serveUpgrade: ServeUpgrade;
  /** The dashboard, for requests under CLUSTER_DASHBOARD_PATH; `sub` is the rest of the path. */
  readonly dashboard: (req: IncomingMessage, res: ServerResponse, sub: string) => void;
  /** A polling request of `sessionId` is served here (not proxied); `res` is its response. */
  readonly servedPoll?: (sessionId: string, res: ServerResponse) => void;
  /**
   * CLUSTER_WORKERS_COUNT: this request is the first of a connection the primary handed to this
   * worker, having routed it here already (decideHead() there): serve it. Asked once per request.
   */
  readonly chosenHere?: (req: IncomingMessage) => boolean;
  /**
   * The app's sockjs server (Meteor: `Meteor.server.stream_server.server`): polling sessions this
   * balancer is the entry of are translated with a sockjs server built like it (translate.ts), and
   * sessions peers carry here are handed to it (carried.ts). Absent: polling is relayed.
   */
  readonly sockjsServer?: unknown;
}

/** A request head read off a new connection, before HTTP parsing (lib/workers/handoff.ts). */
export interface RequestHead {
  readonly method: string;
  readonly url: string;
  /** Lower-case names. */
  readonly headers: Readonly<Record<string, string>>;
}

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

/** One balanced request or upgrade on its way: what it is, who vouched for it, and where it has been tried. */
interface Attempt {
  readonly x: Exchange;
  readonly facts: Balanced;
  readonly hop: HopCheck;
  /** The member this balancer had already sent the session to when the request arrived (for every retry). */
  readonly owner: string | null;
  /** Members that failed for this request. */
  readonly excluded: Set<string>;
  decision: Decision;
  /** Members tried after the first one. */
  otherMembers: number;
  /** This try is the one more on the same member, on a new connection. */
  sameMember: boolean;
  /** A send's body, read before forwarding so that a reset before any answer can replay it. */
  body: Buffer | null;
}

/** What the front door lets through: refused, answered here, or balanced (with its hop check). */
type Admission =
  | Exclude<DoorDecision, { action: 'balance' }>
  | { readonly action: 'forbidden' }
  /** A polling session a drain moved away from here: refused, so its client reconnects elsewhere. */
  | { readonly action: 'moved' }
  /** A polling session here whose relaying peer went away with an answer maybe in flight (relayed.ts): refused, so its client reconnects. */
  | { readonly action: 'lost' }
  | {
    readonly action: 'balance'; readonly facts: Balanced; readonly hop: HopCheck; readonly owner: string | null;
    /** The primary handed this connection here, routed here already (CLUSTER_WORKERS_COUNT). */
    readonly handed: boolean;
  };

type Proxy = Extract<Decision, { action: 'proxy' }>;
type Translate = Extract<Decision, { action: 'translate' }>;

export class Gateway {
  readonly #d: GatewayDeps;
  readonly #m: Membership;
  readonly #policy: RoutePolicy;
  readonly #forwarder = new Forwarder();
  readonly #sessions: SessionTable;
  readonly #replay = new ReplayGuard();
  /** Hop headers made before this (an earlier process with this instance id may have seen them) are refused. */
  readonly #startedAt = Date.now();
  /** Polling sessions forwarded to peers, for a drain to move (polls.ts). */
  readonly #polls = new ProxiedPolls();
  /** Polls served here for a relaying peer, and the sessions lost with one (relayed.ts). */
  readonly #relayed = new RelayedPolls((sessionId) => {
    this.#stats.lostRelayedPolls++;
    this.#d.logger.once('warn', 'relayed-poll-lost', 'balancer.relayed_poll_lost', {
      sessionId: sessionId.slice(0, 64), note: 'a peer relaying this polling session went away while an answer may have been in flight: the session is closed (404) so its client reconnects',
    });
  });
  readonly #stats: BalancerStats = {
    requests: 0, upgrades: 0, served: 0, proxied: 0, pinned: 0, rejected: 0, hopsIn: 0, hopsOut: 0,
    retries: 0, proxyErrors: 0, untrustedHops: 0, lostRelayedPolls: 0, forbiddenOrigins: 0, overloaded: 0, pendingProxies: 0,
    byTransport: {}, proxiedByTransport: {}, byReason: {}, sessionTable: 0, openProxiedSockets: 0,
    translated: 0, carriedIn: 0, translatedSessions: 0, carriedSessions: 0, pollingHop: 'relay',
  };
  #pendingProxies = 0;
  readonly #origins: ReadonlySet<string>;
  readonly #endpointUrls = new Map<string, URL>();
  readonly #classifyOptions: { pathPrefix: string; dashboardPath: string };
  /** Polling sessions this balancer carries to peers (null: it relays them). */
  readonly #translator: Translator | null;
  /** Polling sessions peers carry to this member. */
  readonly #carried: CarriedSessions | null;
  /** Sessions whose member refused to take them carried: relayed (oldest forgotten first). */
  readonly #relayOnly = new RecentIds(RELAY_ONLY_MAX);

  constructor(deps: GatewayDeps) {
    this.#d = deps;
    this.#m = deps.membership;
    const c = deps.config;
    this.#policy = {
      selfWeight: c.selfWeight,
      hysteresis: 0.05,
      hysteresisSessions: 2,
      publicServices: c.publicServices,
      uiService: c.uiService,
      slowStartMs: c.slowStartMs,
    };
    this.#sessions = new SessionTable(c.staleMs + 90_000, SESSION_TABLE_MAX);
    this.#classifyOptions = { pathPrefix: c.pathPrefix, dashboardPath: c.dashboardPath };
    this.#origins = new Set(c.allowedOrigins);
    const app = sockjsServerOf(deps.sockjsServer);
    // Without a secret a carry upgrade can't be authenticated: neither side of it then.
    const carrying = app !== null && deps.membership.keys !== null;
    this.#translator = carrying && c.pollingHop === 'translate' ? Translator.for(app) : null;
    this.#carried = carrying ? new CarriedSessions(app, (err) => deps.logger.once('error', 'carried-connection', 'balancer.carried_connection_failed', { error: err })) : null;
  }

  /** The server's 'request' listener. */
  readonly request = (req: IncomingMessage, res: ServerResponse): void => {
    const x = new WebExchange(req, res, this.#d.serveRequest);
    try {
      this.handle(x);
    } catch (err) {
      this.#d.logger.error('balancer.request_failed', { error: err, url: req.url?.slice(0, 200) });
      x.reply(500, 'internal error');
    }
  };

  /** The server's 'upgrade' listener. */
  readonly upgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    // An error on a client socket must never become an uncaught exception.
    socket.on('error', () => socket.destroy());
    const x = new UpgradeExchange(req, socket, head, this.#d.serveUpgrade);
    try {
      this.handle(x);
    } catch (err) {
      this.#d.logger.error('balancer.upgrade_failed', { error: err, url: req.url?.slice(0, 200) });
      x.reply(500, 'internal error');
    }
  };

  /** The path of every request and upgrade: classify → admit → route → act. */
  private handle(x: Exchange): void {
    const admission = this.admit(x, this.classify(x));
    if (admission.action !== 'balance') return this.answer(x, admission);
    const { facts, hop, owner, handed } = admission;
    const excluded = new Set<string>();
    const decision = this.route(x.req, facts, hop, owner, excluded, handed);
    const a: Attempt = { x, facts, hop, owner, excluded, decision, otherMembers: 0, sameMember: false, body: null };
    this.count(facts, a.decision);
    this.published(a);
    // A session whose request its member refused (sockjs: 404 unknown session, 405 wrong method)
    // is not worth remembering: junk session ids must not fill the session table.
    if (x.kind === 'request' && facts.kind === 'transport') {
      const { res } = x;
      const sessionId = facts.sessionId;
      res.once('finish', () => {
        if (res.statusCode >= 400 && res.statusCode < 500) this.#sessions.delete(sessionId);
      });
    }
    this.act(a);
  }

  /** Step 1, classify: the URL's facts. */
  private classify(x: Exchange): RequestFacts {
    return this.classifyHead(x.req.method ?? '', x.req.url ?? '/', x.kind === 'upgrade');
  }

  /** Only GET info is answered by the balancer; preflights go to sockjs like any resource. */
  private classifyHead(method: string, url: string, upgrade: boolean): RequestFacts {
    const facts = classify(url, this.#classifyOptions);
    if (!upgrade && facts.kind === 'info' && method !== 'GET') return { ...facts, kind: 'sockjs-other' };
    return facts;
  }

  /**
   * Step 2, admit: the front door's decision (route.ts door()); what is balanced is counted, its
   * session's member as this balancer last sent it noted (for retries), its hop header checked and
   * the Origin allow-list applied.
   */
  private admit(x: Exchange, facts: RequestFacts): Admission {
    // Asked once per request: true only for the first request of a connection the primary handed here.
    const handed = this.#d.chosenHere?.(x.req) ?? false;
    const d = door(facts, x.kind === 'upgrade');
    if (d.action !== 'balance') return d;
    if (x.kind === 'request') this.#stats.requests++;
    else this.#stats.upgrades++;
    const owner = d.facts.kind === 'transport' ? this.#sessions.get(d.facts.sessionId, Date.now()) : null;
    const hop = this.hop(x.req);
    if (d.facts.kind !== 'page' && hop.kind !== 'trusted' && !this.originAllowed(x.req)) {
      this.#stats.forbiddenOrigins++;
      return { action: 'forbidden' };
    }
    if (x.kind === 'request' && d.facts.kind === 'transport') {
      if (this.#polls.moved(d.facts.sessionId)) return { action: 'moved' };
      if (this.#relayed.lost(d.facts.sessionId)) return { action: 'lost' };
    }
    return { action: 'balance', facts: d.facts, hop, owner, handed };
  }

  /** What the front door answers itself. */
  private answer(x: Exchange, d: Exclude<Admission, { action: 'balance' }>): void {
    switch (d.action) {
      case 'refuse':
        return x.reply(d.status, d.reason);
      case 'forbidden':
        return x.reply(403, 'origin not allowed');
      case 'moved':
        return x.reply(404, 'session moved');
      case 'lost':
        return x.reply(404, 'session lost');
      case 'app':
        return x.serveHere(null);
      case 'health':
        if (x.kind !== 'request') return x.serveHere(null);
        if (isWatch(x.req.url ?? '')) return this.watch(x);
        return health(x.res, this.#m.healthReport());
      case 'dashboard':
        if (x.kind === 'request') return this.#d.dashboard(x.req, x.res, d.sub);
        return x.serveHere(null);
      case 'carry':
        return this.acceptCarry(x);
    }
  }

  /** A peer's watch of this instance's load feed (feed.ts): only with a valid hop header, and capped. */
  private watch(x: WebExchange): void {
    if (x.req.method !== 'GET') return x.reply(405, 'a load watch is a GET');
    if (this.hop(x.req, false).kind !== 'trusted') return x.reply(403, 'a load watch needs a valid hop header');
    if (!this.#m.watch(x.res)) return x.reply(503, 'too many load watches');
  }

  /** A peer's websocket carrying one polling session (carried.ts): only with a valid hop header. */
  private acceptCarry(x: Exchange): void {
    if (x.kind !== 'upgrade') return x.reply(404, 'not a carry upgrade');
    const hop = this.hop(x.req);
    if (hop.kind !== 'trusted') return x.reply(403, 'carry needs a valid hop header');
    if (this.#carried === null) return x.reply(404, 'this member takes no carried sessions');
    if (!this.#carried.accept(x.req, x.socket, x.head, hop.client)) return x.reply(503, 'too many carried sessions');
    this.#stats.carriedIn++;
    // A session opened here: peers match it against the sessions they routed here (pending.ts).
    this.#m.openedHere();
  }

  /** Step 3, route: where it goes (route.ts route(), pure). */
  private route(req: RequestLike, facts: Balanced, hop: HopCheck, owner: string | null, excluded: Set<string>, handed = false): Decision {
    const view = this.#m.view();
    const now = Date.now();
    return route({
      facts,
      view,
      policy: this.#policy,
      state: {
        // Trusted hops are served here; so are unsigned ones in a cluster without a secret and
        // expired ones (clock skew), which could otherwise bounce between peers.
        hop: hop.kind === 'trusted' || (hop.kind === 'untrusted' && (this.#m.keys === null || hop.reason === 'expired')),
        handed,
        translates: this.#translator !== null,
        pending: (id) => this.#m.pending(id, now),
        selfSessions: this.#m.liveSessions(),
        sessionOwner: owner,
        excluded,
        cookieHash: facts.kind === 'page' ? uiCookie(req) : null,
        random: this.#d.random,
        intake: (id) => this.#m.intake(id, now),
      },
    });
  }

  /** Tells the `ddp-cluster:route` channel's subscribers, if any. */
  private published({ x, facts, decision, otherMembers }: Attempt): void {
    this.publishRoute(x.kind, facts, decision, otherMembers);
  }

  private publishRoute(exchange: Exchange['kind'], facts: Balanced, d: Decision, retry: number): void {
    publish('route', () => ({
      instanceId: this.#d.config.instanceId, exchange, transport: facts.kind === 'transport' ? facts.transport : facts.kind,
      action: d.action, reason: d.reason, member: d.action === 'proxy' || d.action === 'pin' ? d.member.id : null, retry,
    }));
  }

  /** Step 4, act: the decision on the exchange. */
  private act(a: Attempt): void {
    const { x, decision: d } = a;
    switch (d.action) {
      case 'reject':
        this.#stats.rejected++;
        return x.reply(d.status, d.reason);
      case 'pin':
        // Only sockjs info is pinned, and info is never an upgrade.
        if (x.kind === 'request') return this.pin(x, a.facts, d);
        return this.serveHere(a);
      case 'serve':
        return this.serveHere(a);
      case 'proxy':
        return this.forward(a, d);
      case 'translate':
        return this.translate(a, d);
    }
  }

  /**
   * A polling request of a session this balancer carries to `d.member` (translate.ts): to the
   * translator's sockjs, after opening the session's websocket to the member on its first request.
   * A member that can't be reached is tried like a failed forward: another one, before any byte
   * reached the client.
   */
  private translate(a: Attempt, d: Translate): void {
    const { x, facts } = a;
    const translator = this.#translator;
    if (x.kind !== 'request' || facts.kind !== 'transport' || translator === null) return this.forward(a, relayOf(d));
    const sessionId = facts.sessionId;
    const known = translator.has(sessionId);
    if (!known && (translator.full || SENDS.has(facts.transport) || this.#relayOnly.has(sessionId))) {
      // A send never opens a session; an unknown one is relayed (its member answers as sockjs would).
      return this.forward(a, relayOf(d));
    }
    this.#stats.translated++;
    this.remember(facts, d, d.member);
    this.watchRelayed(a, x, facts);
    x.req.url = facts.localUrl;
    x.req.socket.setTimeout(STREAMING.has(facts.transport) ? 0 : POLL_TIMEOUT_MS);
    if (known) return translator.serve(sessionId, x.req, x.res);
    const release = this.admitProxy();
    if (release === null) return x.reply(503, 'balancer overloaded');
    x.onClose(release);
    translator.open(sessionId, x.req, x.res, this.carryTarget(x.req, a.hop, d.member, facts.transport), (err, answered) => {
      release();
      if (!answered) return this.translateFailed(a, d, err);
      // The member takes no carried sessions (an older version during a rolling upgrade, or no
      // sockjs server to hand them to): this session is relayed to it, every request.
      this.#relayOnly.add(sessionId);
      this.forward(a, relayOf(d));
    }, release);
  }

  /** The carry websocket's URL on `member` and its headers: the client's that sockjs keeps, and a hop header. */
  private carryTarget(req: IncomingMessage, hop: HopCheck, member: Member, transport: string): CarryTarget {
    const endpoint = this.endpointUrl(member.endpoint);
    const path = `${this.#classifyOptions.pathPrefix}${CARRY_PATH}?${CARRY_PROTOCOL_PARAM}=${PROTOCOL_OF[transport] ?? 'xhr-polling'}`;
    const client = hop.kind === 'trusted' ? hop.client : clientViewOf(req);
    const headers: Record<string, string> = {};
    for (const name of SOCKJS_HEADERS) {
      const v = req.headers[name];
      if (typeof v === 'string' && name !== 'x-forwarded-for') headers[name] = v;
    }
    headers[HOP_HEADER] = makeHop(this.#m.keys, 'GET', path, client, this.#m.selfId(), member.id, Date.now());
    return { url: `${endpoint.protocol === 'https:' ? 'wss:' : 'ws:'}//${endpoint.host}${path}`, headers };
  }

  /** The member of a new carried session could not be reached: another one, as for a failed forward. */
  private translateFailed(a: Attempt, d: Translate, err: Error): void {
    const { x } = a;
    this.#stats.proxyErrors++;
    const kind = errorKind(err);
    if (isRefusal(RETRY_POLICY, kind)) this.#m.peerDown(d.member.id, kind);
    publish('proxyError', () => ({
      instanceId: this.#d.config.instanceId, exchange: x.kind, member: d.member.id, endpoint: d.member.endpoint, error: kind, cause: err,
      clientTouched: false, verdict: a.otherMembers < MAX_TRANSLATE_TRIES ? 'other-member' : 'give-up',
    }));
    if (a.otherMembers >= MAX_TRANSLATE_TRIES) return x.reply(502, 'upstream unavailable');
    this.retryElsewhere(a, d.member);
  }

  /** Routes the attempt again without `failed` (and every member that failed it before), then acts. */
  private retryElsewhere(a: Attempt, failed: Member): void {
    this.#stats.retries++;
    a.excluded.add(failed.id);
    a.otherMembers++;
    a.sameMember = false;
    a.decision = this.route(a.x.req, a.facts, { kind: 'none' }, a.owner, a.excluded);
    this.published(a);
    this.act(a);
  }

  /** Answers sockjs info with the pinned base_url of the member a new session goes to. */
  private pin(x: WebExchange, facts: Balanced, d: Extract<Decision, { action: 'pin' }>): void {
    this.#stats.pinned++;
    const service = ('service' in facts ? facts.service : null) ?? d.member.service;
    this.#m.newSession(d.member);
    const c = this.#d.config;
    // A peer reached through this balancer: this balancer carries the session's polling (translate.ts).
    const via = this.#translator !== null && !d.member.self && d.member.balancer === null ? this.#m.view().self : null;
    sendInfo(x.req, x.res, { websocket: !c.disableWebsockets, cors: !c.disableSockjsCors, cookieNeeded: c.useJsessionid, pathPrefix: c.pathPrefix },
      baseUrlFor(x.req, d.member, service, c.pathPrefix, c, via));
  }

  private serveHere(a: Attempt): void {
    const { x, facts } = a;
    this.#stats.served++;
    this.remember(facts, a.decision, null);
    if (x.kind === 'request' && facts.kind === 'transport') {
      this.#d.servedPoll?.(facts.sessionId, x.res);
      this.watchRelayed(a, x, facts);
    }
    if ('localUrl' in facts) x.req.url = facts.localUrl;
    x.serveHere(a.hop.kind === 'trusted' ? a.hop.client : null);
  }

  /**
   * A receiving poll a peer relayed here (the client's request reached it): an answer written to
   * that peer may die with it (relayed.ts).
   */
  private watchRelayed(a: Attempt, x: WebExchange, facts: Extract<Balanced, { kind: 'transport' }>): void {
    if (a.hop.kind === 'trusted' && !SENDS.has(facts.transport)) this.#relayed.watch(facts.sessionId, x.req, x.res);
  }

  /** A try on the decision's member: counted, remembered, then sent (a small send's body read first). */
  private forward(a: Attempt, d: Proxy): void {
    const { x, facts } = a;
    this.countProxied(facts);
    this.remember(facts, d, d.member);
    if (x.kind === 'request' && facts.kind === 'transport' && !SENDS.has(facts.transport)) this.#polls.track(facts.sessionId, x.res, Date.now());
    this.prepare(a);
    if (x.kind === 'request' && a.otherMembers === 0 && a.body === null && bufferable(x.req, facts)) {
      return void readBody(x.req, MAX_REPLAY_BODY).then((body) => {
        a.body = body;
        this.send(a, d);
      }, () => x.reply(400, 'bad request body'));
    }
    this.send(a, d);
  }

  /**
   * The URL the member's sockjs expects, and (requests) the client socket's idle limit. A request
   * for the balancer that carries its session keeps its path: that balancer routes it again.
   */
  private prepare({ x, facts, decision }: Attempt): void {
    const local = 'localUrl' in facts && decision.reason !== 'carrying balancer';
    if (x.kind === 'upgrade') {
      if (local) x.req.url = facts.localUrl;
      return;
    }
    if (local) x.req.url = facts.localUrl;
    x.req.socket.setTimeout('localUrl' in facts && STREAMING.has(transportOf(facts)) ? 0 : POLL_TIMEOUT_MS);
  }

  private send(a: Attempt, d: Proxy): void {
    const { x } = a;
    const release = this.admitProxy();
    if (release === null) return x.reply(503, 'balancer overloaded');
    x.onClose(release);
    const attempt = x.kind === 'request'
      ? this.proxyAttempt(x.req, d.member, a.facts, a.body ?? (a.otherMembers > 0 || a.sameMember ? EMPTY : null), a.sameMember, d.setCookie)
      : this.proxyAttempt(x.req, d.member, a.facts, null, true);
    x.forward(this.#forwarder, attempt, (err, touched) => this.failed(a, d, release, err, touched), release);
  }

  /** A try failed: the passive health check, then what RETRY_POLICY says. */
  private failed(a: Attempt, d: Proxy, release: () => void, err: Error, touched: boolean): void {
    const { x } = a;
    release();
    this.#stats.proxyErrors++;
    const kind = errorKind(err);
    if (isRefusal(RETRY_POLICY, kind) && !touched) this.#m.peerDown(d.member.id, kind);
    const verdict = retryVerdict(RETRY_POLICY, {
      upgrade: x.kind === 'upgrade', facts: a.facts, method: x.req.method ?? '', headers: x.req.headers, newSession: d.newSession,
      otherMembers: a.otherMembers, sameMemberRetried: a.sameMember, bodyKept: a.body !== null, error: kind, clientTouched: touched,
      clientGone: x.kind === 'upgrade' && x.socket.destroyed,
    });
    // The instance's logger subscribes to this (events.ts logEvents).
    publish('proxyError', () => ({
      instanceId: this.#d.config.instanceId, exchange: x.kind, member: d.member.id, endpoint: d.member.endpoint, error: kind, cause: err,
      clientTouched: touched, verdict,
    }));
    switch (verdict) {
      case 'abandon':
        return void (x.kind === 'request' ? x.res.destroy() : x.socket.destroy());
      case 'same-member':
        this.#stats.retries++;
        a.sameMember = true;
        this.prepare(a);
        return this.send(a, d);
      case 'other-member':
        return this.retryElsewhere(a, d.member);
      case 'give-up':
        return x.reply(502, 'upstream unavailable');
    }
  }

  /**
   * The public balancer URL a new client of `service` (default: the UI service) should connect
   * to, counted as a new session there; null when the chosen member has no balancer URL (the
   * client then keeps its default URL and sockjs info pinning does the rest).
   */
  pickDdpUrl(req: RequestLike, service: string | null = null): string | null {
    const facts: DdpFacts = { kind: 'info', service, pinned: null, localUrl: '' };
    const d = this.route(req, facts, { kind: 'none' }, null, new Set());
    if (d.action !== 'pin' || d.member.balancer === null) return null;
    this.#m.newSession(d.member);
    // The member's pinned path on its own balancer: that balancer serves the page's sessions
    // itself instead of routing them again (Meteor appends /sockjs or /websocket to the URL).
    return d.member.balancer + pinnedPath(d.member, d.member.service, this.#classifyOptions.pathPrefix);
  }

  /**
   * CLUSTER_WORKERS_COUNT, in the primary: where the first request of a new connection goes,
   * decided from its head before HTTP parsing, when that is a member `accept`s (one of this
   * machine's workers, which then gets the connection itself). Counted as routed there (pending
   * load, session table) exactly like a proxied request; a sockjs info pinned to such a member goes
   * there too (it answers, pinning the session to itself). Null: this process handles the
   * connection as usual. Requests with a hop header, refused or answered by the front door, refused
   * origins and pages always stay here.
   */
  decideHead(head: RequestHead, accept: (member: Member) => boolean): Member | null {
    if (head.headers[HOP_HEADER] !== undefined) return null;
    const upgrade = isUpgrade(head);
    const d = door(this.classifyHead(head.method, head.url, upgrade), upgrade);
    if (d.action !== 'balance' || d.facts.kind === 'page') return null;
    const req: RequestLike = { headers: head.headers };
    if (!this.originAllowed(req)) return null;
    const facts = d.facts;
    const owner = facts.kind === 'transport' ? this.#sessions.get(facts.sessionId, Date.now()) : null;
    const decision = this.route(req, facts, { kind: 'none' }, owner, new Set());
    if ((decision.action !== 'proxy' && decision.action !== 'pin') || !accept(decision.member)) return null;
    if (decision.action === 'pin') this.#m.newSession(decision.member);
    else this.remember(facts, decision, decision.member);
    this.publishRoute(upgrade ? 'upgrade' : 'request', facts, decision, 0);
    return decision.member;
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
      translatedSessions: this.#translator?.size ?? 0,
      carriedSessions: this.#carried?.size ?? 0,
      pollingHop: this.#translator !== null ? 'translate' : 'relay',
    };
  }

  /** Periodic housekeeping (expired sessions, nonces); called by the owner's timer. */
  maintain(now: number): void {
    this.#sessions.prune(now);
    this.#replay.prune(Date.now());
    this.#polls.prune(now);
  }

  /** Polling sessions this balancer forwards to peers: clients that depend on it as their entry. */
  proxiedPolls(): ProxiedPoll[] {
    return this.#polls.sessions(Date.now());
  }

  /** Websockets this balancer proxies to peers and polling sessions it carries: clients that depend on it as their entry. */
  tunnels(): Tunnel[] {
    const carried = this.#translator?.tunnels() ?? [];
    return carried.length === 0 ? this.#forwarder.tunnels() : [...this.#forwarder.tunnels(), ...carried];
  }

  close(): void {
    this.#forwarder.close();
    this.#translator?.close();
    this.#carried?.close();
  }

  /**
   * Cross-site websocket hijacking guard: with an allow-list, a browser session (which always
   * sends Origin on websockets and cross-origin requests) must come from a listed origin.
   * Requests without Origin (same-origin GETs, Node/mobile DDP clients) pass.
   */
  private originAllowed(req: RequestLike): boolean {
    if (this.#origins.size === 0) return true;
    const origin = req.headers.origin;
    return origin === undefined || this.#origins.has(origin);
  }

  /** Counts a proxy attempt until its peer answered (or failed); null when over the cap. */
  private admitProxy(): (() => void) | null {
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

  /** Checks (and removes) a request's hop header; a trusted one counts as a hop in unless it only opens a load watch. */
  private hop(req: IncomingMessage, countIn = true): HopCheck {
    const value = req.headers[HOP_HEADER];
    if (value === undefined) return { kind: 'none' };
    delete req.headers[HOP_HEADER];
    const check = checkHop(this.#m.keys, value, req.method ?? 'GET', req.url ?? '/', this.#m.selfId(), Date.now(), this.#replay.check, this.#startedAt);
    if (check.kind === 'trusted' && countIn) this.#stats.hopsIn++;
    if (check.kind === 'untrusted') {
      this.#stats.untrustedHops++;
      this.#d.logger.once('warn', `hop:${check.reason}`, 'balancer.untrusted_hop', {
        reason: check.reason, remote: req.socket.remoteAddress,
        note: check.reason === 'expired' || check.reason === 'made before this instance started' ? 'check the clocks of the instances (NTP)' : 'header stripped',
      });
    }
    return check;
  }

  private count(facts: Balanced, d: Decision): void {
    const s = this.#stats;
    const key = facts.kind === 'transport' ? facts.transport : facts.kind;
    s.byTransport[key] = (s.byTransport[key] ?? 0) + 1;
    const reason = `${d.action}:${d.reason}` as const;
    s.byReason[reason] = (s.byReason[reason] ?? 0) + 1;
  }

  private countProxied(facts: Balanced): void {
    const s = this.#stats;
    s.proxied++;
    s.hopsOut++;
    const key = facts.kind === 'transport' ? facts.transport : facts.kind;
    s.proxiedByTransport[key] = (s.proxiedByTransport[key] ?? 0) + 1;
  }

  private remember(facts: Balanced, d: Decision, member: Member | null): void {
    const target = member ?? this.#m.view().self;
    if (target === null) return;
    const now = Date.now();
    // Counted as pending first, so that the count of sessions opened here, just below, matches it.
    if (d.action !== 'reject' && 'newSession' in d && d.newSession) this.#m.newSession(target);
    if (target.self) {
      // Opened here: a websocket (each one a session), or the first receiving request of a sockjs
      // session (from a client or a peer) that this balancer has not seen served here before.
      if (facts.kind === 'raw-websocket') this.#m.openedHere();
      else if (facts.kind === 'transport' && !SENDS.has(facts.transport) && this.#sessions.get(facts.sessionId, now) !== target.id) this.#m.openedHere();
    }
    // Every session this balancer forwards, pinned ones included: if a pinned member dies, this
    // tells an established session (lost: 404) from a first poll (moved to a survivor).
    if (facts.kind === 'transport') this.#sessions.set(facts.sessionId, target.id, now);
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

  private proxyAttempt(req: IncomingMessage, member: Member, facts: Balanced, body: Buffer | null, fresh: boolean, setCookie = false): ProxyAttempt {
    const client = clientViewOf(req);
    const hop = makeHop(this.#m.keys, req.method ?? 'GET', req.url ?? '/', client, this.#m.selfId(), member.id, Date.now());
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

/**
 * The health route, for peers' checks and external load balancers: 503 unless serving. It also
 * carries the live session count, the sessions ever opened here and those kept for here that have
 * not opened yet, so peers see load changes between heartbeats and through a discovery outage,
 * and can tell which sessions they routed here arrived (even those that closed again since).
 */
function health(res: ServerResponse, report: HealthReport): void {
  // Peers without a load feed to this instance ask for it up to every REFRESH_GAP_MS while sessions arrive.
  sendSized(res, report.ok ? 200 : 503, ['Content-Type', 'application/json', 'Cache-Control', 'no-store'], JSON.stringify(report.body));
}

/** A health request asking for the load feed (`?watch=1`) instead of one answer. */
function isWatch(url: string): boolean {
  const q = url.indexOf('?');
  return q !== -1 && new URLSearchParams(url.slice(q + 1)).get('watch') === '1';
}

const SENDS = new Set(['xhr_send', 'jsonp_send']);
/** The sockjs protocol name of each receiving transport (what sockjs reports as `connection.protocol`). */
const PROTOCOL_OF: Readonly<Record<string, string>> = {
  xhr: 'xhr-polling', xhr_streaming: 'xhr-streaming', eventsource: 'eventsource', htmlfile: 'htmlfile', jsonp: 'jsonp-polling',
};
/** Sessions remembered as relay-only at most (their member refused a carry upgrade). */
const RELAY_ONLY_MAX = 10_000;
/** Members tried for a new carried session before the client gets 502. */
const MAX_TRANSLATE_TRIES = 2;

/** A translate decision carried out as a relay (the translator can't take it). */
function relayOf(d: Translate): Proxy {
  return { action: 'proxy', member: d.member, reason: d.reason, newSession: d.newSession, setCookie: false };
}
const EMPTY = Buffer.alloc(0);
/** Send bodies up to this size are read before proxying and replayed once after a reset; larger ones stream. */
const MAX_REPLAY_BODY = 256 * 1024;

/** A send with a declared, small body: worth reading first so it can be replayed. */
function bufferable(req: IncomingMessage, facts: Balanced): boolean {
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
        reject(new ClusterError('DDPC_ERR_BODY_TOO_LARGE', 'body too large'));
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
    req.on('aborted', () => reject(new Error('aborted')));
  });
}

/** A head asking for a protocol upgrade (Node's server emits 'upgrade' for it, not 'request'). */
function isUpgrade(head: RequestHead): boolean {
  return head.headers.upgrade !== undefined && /(^|,)\s*upgrade\s*(,|$)/i.test(head.headers.connection ?? '');
}

function transportOf(facts: DdpFacts): string {
  return facts.kind === 'transport' ? facts.transport : facts.kind === 'raw-websocket' ? 'websocket' : facts.kind;
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
