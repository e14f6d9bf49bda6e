/**
 * `attach(httpServer, options)`: puts the cluster in front of a Node http.Server that already has
 * its DDP server (sockjs) installed. Every 'request' and 'upgrade' reaches the balancer first; what
 * it serves here goes to the listeners that were installed before, exactly as they'd have run.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { parseConfig, redactedConfig, type ClusterConfig, type ClusterOptions } from './config';
import type { RegistryEvents } from './discovery/registry';
import type { MembershipView } from './discovery/view';
import { createLogger, type Logger } from './log';
import { Gateway, rejectUpgrade, reply, type RequestLike } from './balancer/gateway';
import type { Tunnel } from './balancer/proxy';
import { createDashboard } from './dashboard';
import { drainSessions, type Closable, type DrainReport } from './drain';
import { LocalSessions } from './local-sessions';
import { SessionCloser } from './closer';
import { Rebalancer } from './rebalancer';
import type { SessionTraits } from './balancer/rebalance';
import type { ProxiedPoll } from './balancer/polls';
import { logEvents, publish } from './events';
import { Membership } from './membership';
import type { ClusterStats, MemberState } from './outcomes';
import { startWorkersRole, workerConfig, type WorkersOptions, type WorkersRole } from './workers';

export interface AttachOptions extends ClusterOptions {
  /** Live DDP sessions on this instance (Meteor: `Meteor.server.sessions.size`). */
  readonly sessionCount?: () => number;
  /**
   * The live DDP sessions, for a drain to close (Meteor: `Meteor.server.sessions.values()`).
   * Without it a drain closes the websockets it served and lets polling sessions end with the process.
   */
  readonly sessions?: () => Iterable<Closable>;
  /**
   * What makes one of `sessions()` cheap to move, for rebalancing (Meteor: subscriptions, busy).
   * Without it sessions are moved oldest first.
   */
  readonly sessionTraits?: (session: Closable) => SessionTraits;
  readonly logger?: Logger;
  /** Environment to read CLUSTER_* from; defaults to process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Uniform random in [0, 1) for the power-of-two-choices pick; for deterministic tests. */
  readonly random?: () => number;
  /** CLUSTER_WORKERS_COUNT: worker ports and program; see README "Every core: workers". */
  readonly workers?: WorkersOptions;
  /**
   * A direct way into the app's SockJS server for what is served here, past listeners that only
   * wrap it. Each returns true when it took the request (or upgrade); false sends it through the
   * app's listeners as usual. The Meteor glue passes sockjs's own `middleware()` when Meteor's
   * listeners have their standard shape: Meteor's wrapper (ddp-server's /websocket redirect)
   * resolves a module with fs.statSync on every request, a quarter of an xhr poll's CPU.
   */
  readonly sockjsEntry?: SockjsEntry;
  /**
   * The app's sockjs server (sockjs 0.3, what Meteor keeps as `Meteor.server.stream_server.server`).
   * With it, a polling session this instance is the entry of but another member serves is carried
   * to that member over one websocket (CLUSTER_POLLING_HOP=translate, lib/balancer/translate.ts),
   * and sessions peers carry here are handed to it as sockjs connections. Without it (or without
   * CLUSTER_SECRET) every poll of such a session is relayed.
   */
  readonly sockjsServer?: unknown;
}

export interface SockjsEntry {
  request(req: IncomingMessage, res: ServerResponse): boolean;
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer): boolean;
}

export type { ClusterStats } from './outcomes';

export interface ClusterHandle {
  readonly config: ClusterConfig;
  readonly logger: Logger;
  view(): MembershipView;
  stats(): ClusterStats;
  /** Resolves after the first successful discovery poll (at once without discovery). */
  ready(): Promise<void>;
  setState(state: MemberState): void;
  /**
   * Rolling-deploy drain: advertise `draining` (peers stop sending new sessions within a
   * heartbeat), then close this instance's sessions gradually over CLUSTER_DRAIN_WINDOW.
   * Resolves when all are closed; call close() after it to deregister. Calling it again (a CLI
   * drain, then SIGTERM) returns the drain already running.
   */
  drain(options?: { windowMs?: number }): Promise<DrainReport>;
  /**
   * For rewriting a page's DDP_DEFAULT_CONNECTION_URL: the pinned path on the balancer URL of the member a new
   * client should use, or null to keep the default.
   */
  pickDdpUrl(req: RequestLike, service?: string | null): string | null;
  on<E extends keyof RegistryEvents>(event: E, listener: (...args: RegistryEvents[E]) => void): void;
  off<E extends keyof RegistryEvents>(event: E, listener: (...args: RegistryEvents[E]) => void): void;
  /** Deregisters, stops timers and puts the original listeners back. */
  close(): Promise<void>;
}

type RequestListener = (req: IncomingMessage, res: ServerResponse) => void;
type UpgradeListener = (req: IncomingMessage, socket: Socket, head: Buffer) => void;

const MAINTAIN_EVERY_MS = 5_000;

export function attach(server: Server, options: AttachOptions = {}): ClusterHandle {
  const env = options.env ?? process.env;
  // A worker (CLUSTER_WORKER_ID) takes the id, endpoint and weight its primary assigned.
  const config = workerConfig(parseConfig(options, env), env);
  const logger = options.logger ?? createLogger(config.logLevel, { instance: config.instanceId });
  warnAboutSetup(config, logger);
  // The lifecycle events (events.ts) this instance publishes: its logger is one subscriber.
  const unlog = logEvents(config.instanceId, logger);
  const local = new LocalSessions();
  const sessionCount = options.sessionCount === undefined ? (): number => local.count(Date.now()) : withOpening(guardedCount(options.sessionCount, logger), local);
  // One paced closer for the drain and rebalancing (closer.ts): a drain takes over queued moves.
  const closer = new SessionCloser(options.random ?? Math.random);
  const membership = new Membership({ config, logger, sessionCount, moved: () => closer.counts().rebalance });
  const liveSessions = (): Iterable<Closable> => (options.sessions ? options.sessions() : local.sockets());
  const app = takeOver(server, local, logger, options.sockjsEntry);
  const sockjsEntry = options.sockjsEntry ? 'direct' : 'listeners';
  const stats = (): ClusterStats => {
    const view = membership.view();
    return {
      ...gateway.stats(), instanceId: config.instanceId, state: membership.state, sessions: sessionCount(),
      members: view.members.length, healthyMembers: view.members.filter((m) => m.healthy).length, discoveryOk: view.discoveryOk,
      health: membership.health(), loadFeeds: membership.feeds(), discoveryRttMs: membership.rttMs, rebalance: rebalancer.stats(), workers: workers.stats(),
      sockjsEntry,
    };
  };
  const dashboard = createDashboard({ config, logger, view: () => membership.view(), stats, on: (event, listener) => membership.on(event, listener) });
  const gateway = new Gateway({
    config, logger, membership, random: options.random ?? Math.random, serveRequest: app.serveRequest, serveUpgrade: app.serveUpgrade,
    sockjsServer: options.sockjsServer,
    dashboard: (req, res, sub) => dashboard.handle(req, res, sub),
    // Polls served here that sockjs accepted (not a 404 for an unknown session): the fallback count.
    servedPoll: (sessionId, res) => res.once('finish', () => {
      if (res.statusCode < 400) local.polled(sessionId, Date.now());
    }),
    // A connection the primary handed to this worker: its first request was routed here already.
    chosenHere: (req) => workers.chosenHere(req),
  });
  app.install(gateway.request, gateway.upgrade);
  const rebalancer = new Rebalancer({
    config, logger, view: () => membership.view(), liveSessions: sessionCount, sessions: liveSessions, closer,
    ...(options.sessionTraits ? { traits: options.sessionTraits } : {}),
  });

  const serving = (): void => {
    if (membership.state === 'starting') membership.setState('serving');
  };
  if (server.listening) serving();
  else server.once('listening', serving);
  const timer = setInterval(() => {
    gateway.maintain(Date.now());
    membership.maintain();
    local.prune(Date.now());
  }, MAINTAIN_EVERY_MS);
  timer.unref();

  let draining: Promise<DrainReport> | null = null;
  const drain = (o: { windowMs?: number } = {}): Promise<DrainReport> => {
    // Idempotent: a CLI drain followed by SIGTERM is one paced drain, not two at twice the rate.
    draining ??= withWorkers(drainHere({
      config, membership, closer, windowMs: o.windowMs ?? config.drainWindowMs, tunnels: gateway.tunnels(), polls: gateway.proxiedPolls(),
      sessions: liveSessions,
    }), workers, logger);
    return draining;
  };
  // `ddp-cluster drain <id>`: drain like on SIGTERM, but stay up (draining) for the operator to stop.
  membership.on('drainRequested', () => {
    if (membership.state !== 'draining') void drain().catch((err: unknown) => logger.error('drain.failed', { error: err }));
  });
  // CLUSTER_WORKERS_COUNT: the primary starts its workers and hands them connections; a worker takes them.
  const workers = startWorkersRole({
    server, config, env, logger, options: options.workers,
    decideHead: (head, accept) => gateway.decideHead(head, accept),
    drainSelf: async () => {
      await drain();
      await handle.close();
    },
  });
  membership.start();
  rebalancer.start();
  logger.info('cluster.attached', { config: redactedConfig(config), sockjsEntry });

  let closed: Promise<void> | null = null;
  const handle: ClusterHandle = {
    config, logger, stats, drain,
    view: () => membership.view(),
    ready: () => membership.ready(),
    setState: (state) => membership.setState(state),
    pickDdpUrl: (req, service = null) => gateway.pickDdpUrl(req, service),
    on: (event, listener) => membership.on(event, listener),
    off: (event, listener) => membership.off(event, listener),
    close(): Promise<void> {
      closed ??= (async () => {
        clearInterval(timer);
        rebalancer.stop();
        closer.stop();
        server.off('listening', serving);
        app.restore();
        await workers.close();
        gateway.close();
        dashboard.close();
        await membership.close();
        // A drain still running keeps its log lines: stop logging events when it is done.
        void (draining ?? Promise.resolve()).then(unlog, unlog);
      })();
      return closed;
    },
  };
  return handle;
}

/** Misconfigurations that still run, said once at startup. */
function warnAboutSetup(config: ClusterConfig, logger: Logger): void {
  if (config.secret === null && config.discoveryUrl !== null) {
    logger.warn('cluster.no_secret', {
      note: 'CLUSTER_SECRET is not set: registry entries are unsigned and proxied clients keep the balancer\'s address',
      fix: 'set CLUSTER_SECRET to the same random value (at least 16 bytes) on every instance',
    });
  }
  if (config.discoveryUrl !== null && config.service !== null && config.endpointUrl === null) {
    logger.warn('cluster.no_endpoint', {
      note: 'CLUSTER_SERVICE is set but CLUSTER_ENDPOINT_URL is not: this instance balances but does not register',
      fix: 'set CLUSTER_ENDPOINT_URL to the URL peers use to reach this instance, e.g. http://10.0.0.5:3000',
    });
  }
}

/**
 * The host's session count, but at least the websockets served here now. A host counts a session
 * once the client's DDP `connect` is processed (Meteor: `Meteor.server.sessions`); a websocket
 * is served (and no longer pending at the balancers that routed it, pending.ts) before that. In a
 * burst that takes tens of milliseconds, and an instance busy with its own arrivals would report
 * ten new sessions as none: its peers would send it more.
 */
function withOpening(count: () => number, local: LocalSessions): () => number {
  return () => Math.max(count(), local.websockets());
}

/**
 * The host's session count is app code: if it throws, keep the last good figure (a bug there must
 * not stop heartbeats, where it would look like a discovery outage, nor fail the health route).
 */
function guardedCount(hostCount: () => number, logger: Logger): () => number {
  let lastCount = 0;
  return () => {
    try {
      const n = hostCount();
      if (Number.isFinite(n) && n >= 0) lastCount = n;
    } catch (err) {
      logger.once('error', 'cluster.session_count_threw', 'cluster.session_count_threw', { error: err, keeping: lastCount });
    }
    return lastCount;
  };
}

interface TakenOver {
  /** Runs the app's own request listeners (those installed before attach()). */
  readonly serveRequest: (req: IncomingMessage, res: ServerResponse) => void;
  readonly serveUpgrade: (req: IncomingMessage, socket: Socket, head: Buffer) => void;
  /** Puts the balancer's listeners in place of the app's. */
  install(onRequest: RequestListener, onUpgrade: UpgradeListener): void;
  /** Puts the app's listeners back. */
  restore(): void;
}

/**
 * The app's 'request' and 'upgrade' listeners, taken off the server so that every request reaches
 * the balancer first; what it serves here goes to them, exactly as they'd have run.
 */
function takeOver(server: Server, local: LocalSessions, logger: Logger, direct?: SockjsEntry): TakenOver {
  const requestListeners = server.listeners('request') as RequestListener[];
  const upgradeListeners = server.listeners('upgrade') as UpgradeListener[];
  // The app's own listeners: an exception they throw must not become an uncaught one.
  const appThrew = (err: unknown, req: IncomingMessage): void =>
    logger.once('error', 'app.listener_threw', 'app.listener_threw', { error: err, url: req.url?.slice(0, 200) });
  let installed: [RequestListener, UpgradeListener] | null = null;
  return {
    serveRequest(req, res) {
      try {
        if (direct?.request(req, res)) return;
        for (const l of requestListeners) l.call(server, req, res);
      } catch (err) {
        appThrew(err, req);
        reply(res, 500, 'app error');
      }
    },
    serveUpgrade(req, socket, head) {
      local.websocket(socket);
      try {
        if (direct?.upgrade(req, socket, head)) return;
        for (const l of upgradeListeners) l.call(server, req, socket, head);
      } catch (err) {
        appThrew(err, req);
        rejectUpgrade(socket, 500, 'app error');
      }
    },
    install(onRequest, onUpgrade) {
      server.removeAllListeners('request');
      server.removeAllListeners('upgrade');
      server.on('request', onRequest);
      server.on('upgrade', onUpgrade);
      installed = [onRequest, onUpgrade];
    },
    restore() {
      if (installed === null) return;
      server.off('request', installed[0]);
      server.off('upgrade', installed[1]);
      for (const l of requestListeners) server.on('request', l);
      for (const l of upgradeListeners) server.on('upgrade', l);
      installed = null;
    },
  };
}

/**
 * A primary's workers drain alongside this process (each paced over its own window): the drain is
 * done when this one is and every worker has exited. Without workers, the drain itself.
 */
function withWorkers(here: Promise<DrainReport>, workers: WorkersRole, logger: Logger): Promise<DrainReport> {
  const workersDrained = workers.drain().catch((err: unknown) => logger.error('workers.drain_failed', { error: err }));
  return here.then(async (report) => {
    await workersDrained;
    return report;
  });
}

/**
 * Rolling-deploy drain: advertise `draining`, then close the sessions here gradually. The
 * websockets proxied through here when the drain began (`tunnels`) and the polling sessions it
 * forwarded (`polls`) are moved with them: their clients use this instance as their balancer and
 * would otherwise all drop at once when it exits. Tunnels opened later belong to clients already
 * moved once (this instance proxies every new session away now); they are left to the exit, so no
 * client is disconnected twice by the drain.
 */
function drainHere(o: {
  config: ClusterConfig; membership: Membership; closer: SessionCloser; windowMs: number; tunnels: readonly Tunnel[];
  polls: readonly ProxiedPoll[]; sessions: () => Iterable<Closable>;
}): Promise<DrainReport> {
  const { config, membership, closer, windowMs, polls } = o;
  const instanceId = config.instanceId;
  membership.setState('draining');
  closer.beginDrain();
  publish('drain', () => ({ instanceId, phase: 'start', windowMs, sessions: membership.liveSessions() }));
  const tunnels = new Set(o.tunnels);
  return drainSessions({
    windowMs,
    noticeMs: config.heartbeatMs + config.healthIntervalMs,
    sessions: () => [...o.sessions(), ...[...tunnels].filter((t) => t.open), ...polls.filter((p) => p.open)],
    close: (batch) => void closer.close(batch, 'drain'),
    onBatch: (b) => publish('drain', () => ({ instanceId, phase: 'batch', ...b })),
  }).then((report) => {
    publish('drain', () => ({ instanceId, phase: 'done', closed: report.closed, tookMs: report.tookMs, batches: report.batches.length }));
    return report;
  });
}
