/**
 * `attach(httpServer, options)`: puts the cluster in front of a Node http.Server that already has
 * its DDP server (sockjs) installed. Every 'request' and 'upgrade' reaches the balancer first; what
 * it serves here goes to the listeners that were installed before, exactly as they'd have run.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { parseConfig, redactedConfig, type ClusterConfig, type ClusterOptions } from './config';
import type { MemberState } from './discovery/entry';
import { Registry, type RegistryEvents } from './discovery/registry';
import type { MembershipView } from './discovery/view';
import { LoadSampler } from './load';
import { createLogger, type Logger } from './log';
import { keysFrom } from './sign';
import { Balancer, rejectUpgrade, reply, type BalancerStats, type RequestLike } from './balancer/balancer';
import { createDashboard } from './dashboard';
import { HealthChecker, overlayHealth, type HealthStatus } from './balancer/health';
import { viewFromMembers } from './discovery/view';
import { drainSessions, type Closable, type DrainReport } from './drain';
import { LocalSessions } from './local-sessions';
import { startWorkersRole, workerConfig, type WorkersOptions, type WorkersStats } from './workers';

export interface AttachOptions extends ClusterOptions {
  /** Live DDP sessions on this instance (Meteor: `Meteor.server.sessions.size`). */
  readonly sessionCount?: () => number;
  /**
   * The live DDP sessions, for a drain to close (Meteor: `Meteor.server.sessions.values()`).
   * Without it a drain closes the websockets it served and lets polling sessions end with the process.
   */
  readonly sessions?: () => Iterable<Closable>;
  readonly logger?: Logger;
  /** Environment to read CLUSTER_* from; defaults to process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Uniform random in [0, 1) for the power-of-two-choices pick; for deterministic tests. */
  readonly random?: () => number;
  /** CLUSTER_WORKERS_COUNT (issue 14): worker ports and program; see README "Every core: workers". */
  readonly workers?: WorkersOptions;
}

export interface ClusterStats extends BalancerStats {
  readonly instanceId: string;
  /** Active health-check results per peer. */
  readonly health: Readonly<Record<string, HealthStatus>>;
  readonly discoveryRttMs: number | null;
  readonly state: MemberState;
  readonly sessions: number;
  readonly members: number;
  readonly healthyMembers: number;
  readonly discoveryOk: boolean;
  /** CLUSTER_WORKERS_COUNT: this process's role, its workers (primary) and handoff counts. */
  readonly workers: WorkersStats;
}

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
  // A worker (CLUSTER_WORKER_ID) takes the id, endpoint and weight its primary assigned.
  const config = workerConfig(parseConfig(options, options.env ?? process.env), options.env ?? process.env);
  const logger = options.logger ?? createLogger(config.logLevel, { instance: config.instanceId });
  const keys = keysFrom(config.secret, config.previousSecret);
  if (keys === null && config.discoveryUrl !== null) {
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

  const local = new LocalSessions();
  // The host's count is app code: if it throws, keep the last good figure (a bug there must not
  // stop heartbeats, where it would look like a discovery outage, nor fail the health route).
  let lastCount = 0;
  const hostCount = options.sessionCount;
  const sessionCount = hostCount === undefined ? (): number => local.count(Date.now()) : (): number => {
    try {
      const n = hostCount();
      if (Number.isFinite(n) && n >= 0) lastCount = n;
    } catch (err) {
      logger.once('error', 'cluster.session_count_threw', 'cluster.session_count_threw', { error: err, keeping: lastCount });
    }
    return lastCount;
  };
  // Sessions opened here and kept for here, counted by the balancer (created below).
  let opened = (): { opened: number; pending: number } => ({ opened: 0, pending: 0 });
  const sampler = new LoadSampler(sessionCount, config.capacity, () => opened());
  const registry = new Registry({ config, logger, load: () => sampler.sample() });

  const requestListeners = server.listeners('request') as RequestListener[];
  const upgradeListeners = server.listeners('upgrade') as UpgradeListener[];
  // The app's own listeners: an exception they throw must not become an uncaught one.
  const appThrew = (err: unknown, req: IncomingMessage): void =>
    logger.once('error', 'app.listener_threw', 'app.listener_threw', { error: err, url: req.url?.slice(0, 200) });
  const serveRequest = (req: IncomingMessage, res: ServerResponse): void => {
    try {
      for (const l of requestListeners) l.call(server, req, res);
    } catch (err) {
      appThrew(err, req);
      reply(res, 500, 'app error');
    }
  };
  const serveUpgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    local.websocket(socket);
    try {
      for (const l of upgradeListeners) l.call(server, req, socket, head);
    } catch (err) {
      appThrew(err, req);
      rejectUpgrade(socket, 500, 'app error');
    }
  };

  const checker = new HealthChecker({
    intervalMs: config.healthIntervalMs, timeoutMs: config.healthTimeoutMs, fall: config.healthFall, rise: config.healthRise,
    path: `${config.pathPrefix}${config.dashboardPath}/health`,
  });
  // The view routing uses: the registry's, with the health checks overlaid; rebuilt on change only.
  let effective = registry.view();
  const recompute = (): void => {
    const v = registry.view();
    checker.update(v);
    effective = overlayHealth(v, (id) => checker.status(id), config.staleMs, (members) => viewFromMembers(members, v));
  };
  registry.on('view', recompute);
  checker.on('change', (id, status, before) => {
    recompute();
    // Peers start up (their heartbeat vouches for them): only a change of up/down is news. A
    // failed check that doesn't reach `fall` yet is not "up".
    if ((before?.up ?? true) !== status.up) {
      logger.info(status.up ? 'health.up' : 'health.down', { member: id, reason: status.reason, state: status.state });
    }
  });
  // Fresher load figures from a round of checks: one rebuild per round, not per peer.
  let pendingRecompute = false;
  checker.on('load', () => {
    if (pendingRecompute) return;
    pendingRecompute = true;
    setImmediate(() => {
      pendingRecompute = false;
      recompute();
    });
  });

  const balancer = new Balancer({
    config, logger, keys, view: () => effective, random: options.random ?? Math.random, serveRequest, serveUpgrade,
    peerDown: (id, reason) => checker.markDown(id, reason),
    liveSessions: sessionCount,
    // Polls served here that sockjs accepted (not a 404 for an unknown session): the fallback count.
    servedPoll: (sessionId, res) => res.once('finish', () => {
      if (res.statusCode < 400) local.polled(sessionId, Date.now());
    }),
    routedNew: () => checker.refresh(),
    // Issue 14: a connection the primary handed to this worker was routed here already.
    chosenHere: (req) => workers.chosenHere(req),
  });
  opened = () => ({ opened: balancer.opened(), pending: balancer.pendingHere() });

  let handle: ClusterHandle | null = null;
  const dashboard = createDashboard({
    config, logger, view: () => effective,
    stats: () => (handle ? handle.stats() : {}) as unknown as Readonly<Record<string, unknown>>,
    on: (event, listener) => void registry.on(event, listener as never),
  });

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    try {
      let facts = balancer.classify(req);
      // Only GET info is answered by the balancer; preflights go to sockjs like any resource.
      if (facts.kind === 'info' && req.method !== 'GET') facts = { ...facts, kind: 'sockjs-other' };
      switch (facts.kind) {
        case 'malformed':
          return reply(res, facts.status, facts.reason);
        case 'health':
          return health(res, registry, sessionCount(), config.capacity, opened());
        case 'dashboard':
          return dashboard.handle(req, res, facts.sub);
        default:
          return balancer.request(req, res, facts);
      }
    } catch (err) {
      logger.error('balancer.request_failed', { error: err, url: req.url?.slice(0, 200) });
      reply(res, 500, 'internal error');
    }
  };

  const onUpgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    // An error on a client socket must never become an uncaught exception.
    socket.on('error', () => socket.destroy());
    try {
      const facts = balancer.classify(req);
      switch (facts.kind) {
        case 'malformed':
          return rejectUpgrade(socket, facts.status, facts.reason);
        case 'page':
        case 'dashboard':
        case 'health':
          return serveUpgrade(req, socket, head);
        case 'raw-websocket':
          return balancer.upgrade(req, socket, head, facts);
        case 'transport':
          if (facts.transport === 'websocket') return balancer.upgrade(req, socket, head, facts);
          return rejectUpgrade(socket, 400, 'not a websocket endpoint');
        default:
          // sockjs info, greeting, iframe: plain HTTP resources, never upgraded.
          return rejectUpgrade(socket, 400, 'not a websocket endpoint');
      }
    } catch (err) {
      logger.error('balancer.upgrade_failed', { error: err, url: req.url?.slice(0, 200) });
      rejectUpgrade(socket, 500, 'internal error');
    }
  };

  server.removeAllListeners('request');
  server.removeAllListeners('upgrade');
  server.on('request', onRequest);
  server.on('upgrade', onUpgrade);

  const serving = (): void => {
    if (registry.state === 'starting') registry.setState('serving');
  };
  if (server.listening) serving();
  else server.once('listening', serving);

  const timer = setInterval(() => {
    balancer.maintain(Date.now());
    local.prune(Date.now());
  }, MAINTAIN_EVERY_MS);
  timer.unref();

  // `ddp-cluster drain <id>`: drain like on SIGTERM, but stay up (draining) for the operator to stop.
  registry.on('drainRequested', () => {
    if (registry.state !== 'draining') void handle?.drain().catch((err: unknown) => logger.error('drain.failed', { error: err }));
  });
  // Issue 14: the primary starts its workers and hands them connections; a worker takes them.
  const workers = startWorkersRole({
    server, config, env: options.env ?? process.env, logger, options: options.workers,
    decideHead: (head, accept) => balancer.decideHead(head, accept),
    drainSelf: async () => {
      await handle?.drain();
      await handle?.close();
    },
  });

  registry.start();
  checker.start();
  logger.info('cluster.attached', { config: redactedConfig(config) });

  let closed: Promise<void> | null = null;
  let draining: Promise<DrainReport> | null = null;
  handle = {
    config,
    logger,
    view: () => effective,
    stats(): ClusterStats {
      const view = effective;
      return {
        ...balancer.stats(),
        instanceId: config.instanceId,
        state: registry.state,
        sessions: sessionCount(),
        members: view.members.length,
        healthyMembers: view.members.filter((m) => m.healthy).length,
        discoveryOk: view.discoveryOk,
        health: checker.all(),
        discoveryRttMs: registry.rttMs,
        workers: workers.stats(),
      };
    },
    ready: () => registry.ready(),
    setState: (state) => registry.setState(state),
    drain(o = {}): Promise<DrainReport> {
      // Idempotent: a CLI drain followed by SIGTERM is one paced drain, not two at twice the rate.
      if (draining) return draining;
      registry.setState('draining');
      const windowMs = o.windowMs ?? config.drainWindowMs;
      logger.info('drain.start', { windowMs, sessions: sessionCount() });
      // The websockets proxied through here when the drain began: their clients use this instance
      // as their balancer and would otherwise all drop at once when it exits. Tunnels opened
      // later belong to clients already moved once (this instance proxies every new session away
      // now); they are left to the exit, so no client is disconnected twice by the drain.
      const tunnels = new Set(balancer.tunnels());
      draining = drainSessions({
        windowMs,
        noticeMs: config.heartbeatMs + config.healthIntervalMs,
        sessions: () => [...(options.sessions ? options.sessions() : local.sockets()), ...[...tunnels].filter((t) => t.open)],
        onBatch: (b) => logger.debug('drain.batch', { ...b }),
      }).then(async (report) => {
        logger.info('drain.done', { closed: report.closed, tookMs: report.tookMs, batches: report.batches.length });
        await workersDrained;
        return report;
      });
      // The primary's workers drain alongside (each paced over its own window); done when all exited.
      const workersDrained = workers.drain().catch((err: unknown) => logger.error('workers.drain_failed', { error: err }));
      return draining;
    },
    pickDdpUrl: (req, service = null) => balancer.pickDdpUrl(req, service),
    on: (event, listener) => void registry.on(event, listener as never),
    off: (event, listener) => void registry.off(event, listener as never),
    close(): Promise<void> {
      closed ??= (async () => {
        clearInterval(timer);
        server.off('listening', serving);
        server.off('request', onRequest);
        server.off('upgrade', onUpgrade);
        for (const l of requestListeners) server.on('request', l);
        for (const l of upgradeListeners) server.on('upgrade', l);
        await workers.close();
        balancer.close();
        checker.close();
        dashboard.close();
        await registry.close();
        sampler.close();
      })();
      return closed;
    },
  };
  return handle;
}

/**
 * The health route, for peers' checks and external load balancers: 503 unless serving. It also
 * carries the live session count, the sessions ever opened here and those kept for here that have
 * not opened yet, so peers see load changes between heartbeats and through a discovery outage,
 * and can tell which sessions they routed here arrived (even those that closed again since).
 */
function health(res: ServerResponse, registry: Registry, sessions: number, capacity: number, figures: { opened: number; pending: number }): void {
  const view = registry.view();
  const ok = registry.state === 'serving' || !registry.registered;
  res.writeHead(ok ? 200 : 503, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
  res.end(JSON.stringify({
    status: registry.state, id: view.self?.id ?? null, service: view.self?.service ?? null, discoveryOk: view.discoveryOk,
    sessions, capacity, opened: figures.opened, pending: figures.pending, at: Date.now(),
  }));
}
