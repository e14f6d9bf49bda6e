/**
 * Test fixture: a real Node `http.Server` wired the way a Meteor 3 app wires `WebApp.httpServer`
 * (packages/webapp/webapp_server.js) and ddp-server's StreamServer
 * (packages/ddp-server/stream_server.js), with a small but protocol-correct DDP responder standing in
 * for packages/ddp-server/livedata_server.js. No mocks: real sockjs 0.3.24, real sockets.
 *
 * Listener layout after `createDdpApp()` (same as a Meteor 3 app once ddp-server has loaded):
 *   'request': [ meteorRewrite → [ sockjsOvershadow → [ app fallback ], timeoutAdjustment ] ]
 *   'upgrade': [ meteorRewrite → [ sockjsOvershadow → [] ] ]
 * So a balancer that overshadows `app.server` sees exactly one 'request' and one 'upgrade' listener.
 */
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import { randomInt } from 'node:crypto';
import type * as SockjsModule from 'sockjs';

/** webapp_server.js: SHORT_SOCKET_TIMEOUT / LONG_SOCKET_TIMEOUT. */
export const SHORT_SOCKET_TIMEOUT = 5 * 1000;
export const LONG_SOCKET_TIMEOUT = 120 * 1000;
/** ddp-common: DDPCommon.SUPPORTED_DDP_VERSIONS. */
export const SUPPORTED_DDP_VERSIONS: readonly string[] = ['1', 'pre2', 'pre1'];
/**
 * Meteor does not pass `sockjs_url` (stream_server.js), so sockjs 0.3.24 uses its default; it only
 * matters for the iframe transports' HTML page. Spelled out here so the value is visible.
 */
export const SOCKJS_DEFAULT_URL = 'https://cdn.jsdelivr.net/npm/sockjs-client@1/dist/sockjs.min.js';

export interface DdpAppOptions {
  /** Name returned by `whoami` and the HTTP fallback. Default: `app-<random>`. */
  instanceId?: string;
  /** ROOT_URL_PATH_PREFIX, e.g. '/myapp' (leading slash added, trailing slash removed). */
  rootUrlPathPrefix?: string;
  /** DISABLE_WEBSOCKETS. */
  disableWebsockets?: boolean;
  /** DISABLE_SOCKJS_CORS. */
  disableCors?: boolean;
  /** USE_JSESSIONID. */
  useJsessionid?: boolean;
  /** HTTP_FORWARDED_COUNT. Default: read from process.env at each DDP connect, like Meteor. */
  httpForwardedCount?: number;
  /** sockjs heartbeat_delay (Meteor: 45000). */
  heartbeatDelay?: number;
  /** sockjs disconnect_delay (Meteor: 60000). */
  disconnectDelay?: number;
  /**
   * Send the pre-0.7 welcome frame `{"server_id":"0"}` on every new socket. Meteor 1.x/2.x did;
   * Meteor 3's stream_server.js no longer does, so the default is false.
   */
  sendServerIdWelcome?: boolean;
  /** httpServer.setTimeout (webapp: SHORT_SOCKET_TIMEOUT). */
  shortSocketTimeout?: number;
  /** Per-request timeout while a request is outstanding (webapp: LONG_SOCKET_TIMEOUT). */
  longSocketTimeout?: number;
}

/** Meteor's connection handle (`Meteor.onConnection` argument), minus what tests do not need. */
export interface DdpConnectionHandle {
  readonly id: string;
  readonly clientAddress: string | null | undefined;
  readonly httpHeaders: Readonly<Record<string, string>>;
  close(): void;
  onClose(cb: () => void): void;
}

export interface WhoamiResult {
  instanceId: string;
  clientAddress: string | null;
  sessionId: string;
  /** sockjs protocol of the socket: 'websocket', 'websocket-raw', 'xhr-polling', ... */
  transport: string;
  httpHeaders: Record<string, string>;
}

export interface DdpApp {
  readonly server: http.Server;
  /** What Meteor calls `Meteor.server.stream_server`: its `server` is the sockjs server. */
  readonly streamServer: { readonly server: unknown };
  /** What Meteor calls `WebApp._timeoutAdjustmentRequestCallback`. */
  readonly timeoutAdjustment: (req: http.IncomingMessage, res: http.ServerResponse) => void;
  readonly instanceId: string;
  /** Normalised ROOT_URL_PATH_PREFIX ('' or '/prefix'). */
  readonly rootUrlPathPrefix: string;
  /** The sockjs prefix: rootUrlPathPrefix + '/sockjs'. */
  readonly sockjsPrefix: string;
  /** Port after listen(); throws before. */
  readonly port: number;
  /** `http://host:port` + rootUrlPathPrefix (the app's ROOT_URL); throws before listen(). */
  readonly url: string;
  /** `http://host:port`; throws before listen(). */
  readonly origin: string;
  /** Meteor.server.sessions: DDP session id → connection handle. */
  readonly sessions: ReadonlyMap<string, DdpConnectionHandle>;
  listen(port?: number, host?: string): Promise<number>;
  close(): Promise<void>;
  sessionCount(): number;
  /** Meteor.onConnection. */
  onConnection(cb: (handle: DdpConnectionHandle) => void): { stop(): void };
}

export function createDdpApp(opts: DdpAppOptions = {}): DdpApp {
  return new MeteorLikeApp(opts);
}

/* ------------------------------------------------------------------------------------------ */
/* client address (livedata_server.js Session.prototype._clientAddress)                        */
/* ------------------------------------------------------------------------------------------ */

/** `parseInt(process.env.HTTP_FORWARDED_COUNT) || 0`, as livedata_server.js reads it. */
export function httpForwardedCountFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  return parseInt(env.HTTP_FORWARDED_COUNT ?? '', 10) || 0;
}

/**
 * Meteor's `_clientAddress`: count 0 → the socket's remoteAddress; otherwise the entry `count`
 * from the END of x-forwarded-for; null when the header is missing or too short (or count < 0).
 */
export function meteorClientAddress(
  remoteAddress: string | undefined,
  headers: Readonly<Record<string, unknown>>,
  httpForwardedCount: number,
): string | null | undefined {
  if (httpForwardedCount === 0) return remoteAddress;
  const header = headers['x-forwarded-for'];
  if (typeof header !== 'string') return null;
  const forwardedFor = header.trim().split(/\s*,\s*/);
  if (httpForwardedCount < 0 || httpForwardedCount > forwardedFor.length) return null;
  return forwardedFor[forwardedFor.length - httpForwardedCount] ?? null;
}

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                     */
/* ------------------------------------------------------------------------------------------ */

const UNMISTAKABLE_CHARS = '23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz';

/** Shaped like Meteor's Random.id(): 17 unmistakable characters. */
export function meteorRandomId(length = 17): string {
  let id = '';
  for (let i = 0; i < length; i++) id += UNMISTAKABLE_CHARS[randomInt(UNMISTAKABLE_CHARS.length)];
  return id;
}

function normalizePathPrefix(prefix: string | undefined): string {
  if (!prefix) return '';
  const trimmed = prefix.replace(/\/+$/, '');
  if (trimmed === '') return '';
  return trimmed.startsWith('/') ? trimmed : `/${trimmed}`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

/**
 * sockjs 0.3.24 keeps its session table (`MAP` in lib/transport.js) in module scope, keyed by the
 * session id only (the server_id path segment is ignored). Several apps in one test process would
 * therefore share sessions: an xhr request for app A's session sent to app B would be served by A.
 * Separate Meteor processes never share it, so each fixture loads its own copy of the module.
 */
function loadIsolatedSockjs(): typeof SockjsModule {
  const pkgDir = path.dirname(require.resolve('sockjs/package.json'));
  const ownFiles = (file: string) =>
    file.startsWith(pkgDir + path.sep) && !file.slice(pkgDir.length).includes(`${path.sep}node_modules${path.sep}`);
  for (const file of Object.keys(require.cache)) {
    if (ownFiles(file)) delete require.cache[file];
  }
  const mod: typeof SockjsModule = require('sockjs');
  for (const file of Object.keys(require.cache)) {
    if (ownFiles(file)) delete require.cache[file];
  }
  return mod;
}

type SockjsServerOptions = SockjsModule.ServerOptions & { disable_cors: boolean };

type RequestListener = (req: http.IncomingMessage, ...rest: unknown[]) => void;

/** The parts of sockjs's internal Session that close() needs to end xhr sessions without waiting. */
interface SockjsSessionInternals {
  readyState: number;
  recv: unknown;
  to_tref: NodeJS.Timeout | null;
  didTimeout(): void;
}

function sessionInternals(conn: SockjsModule.Connection): SockjsSessionInternals | undefined {
  const session: unknown = Reflect.get(conn, '_session');
  if (!isRecord(session) || typeof session.didTimeout !== 'function') return undefined;
  return session as unknown as SockjsSessionInternals;
}

/* ------------------------------------------------------------------------------------------ */
/* the app                                                                                     */
/* ------------------------------------------------------------------------------------------ */

class MeteorLikeApp implements DdpApp {
  readonly server: http.Server;
  readonly streamServer: { readonly server: unknown };
  readonly instanceId: string;
  readonly rootUrlPathPrefix: string;
  readonly sockjsPrefix: string;
  readonly sessions = new Map<string, DdpConnectionHandle>();

  private readonly opts: DdpAppOptions;
  private readonly sockets = new Set<net.Socket>();
  private readonly sockjsConnections = new Set<SockjsModule.Connection>();
  private readonly connectionHooks = new Set<(handle: DdpConnectionHandle) => void>();
  private address: { host: string; port: number } | undefined;
  private closing: Promise<void> | undefined;

  constructor(opts: DdpAppOptions) {
    this.opts = opts;
    this.instanceId = opts.instanceId ?? `app-${meteorRandomId(6)}`;
    this.rootUrlPathPrefix = normalizePathPrefix(opts.rootUrlPathPrefix);
    this.sockjsPrefix = `${this.rootUrlPathPrefix}/sockjs`;
    this.server = http.createServer();
    this.server.on('connection', (socket: net.Socket) => this.trackSocket(socket));
    this.installWebApp();
    this.streamServer = { server: this.installStreamServer() };
  }

  get port(): number {
    return this.requireAddress().port;
  }

  get origin(): string {
    const { host, port } = this.requireAddress();
    return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  }

  get url(): string {
    return this.origin + this.rootUrlPathPrefix;
  }

  sessionCount(): number {
    return this.sessions.size;
  }

  onConnection(cb: (handle: DdpConnectionHandle) => void): { stop(): void } {
    this.connectionHooks.add(cb);
    return { stop: () => void this.connectionHooks.delete(cb) };
  }

  listen(port = 0, host = '127.0.0.1'): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        const addr = this.server.address();
        if (addr === null || typeof addr === 'string') return reject(new Error('unexpected address'));
        this.address = { host, port: addr.port };
        resolve(addr.port);
      });
    });
  }

  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  /* -------------------------------- webapp -------------------------------- */

  /** webapp_server.js: createServer(app), setTimeout(SHORT), then the timeout adjustment listener. */
  private installWebApp(): void {
    this.server.setTimeout(this.opts.shortSocketTimeout ?? SHORT_SOCKET_TIMEOUT);
    this.server.on('request', this.appHandler);
    this.server.on('request', this.timeoutAdjustment);
  }

  /** Stands in for Meteor's Express app (boilerplate pages, assets). */
  private readonly appHandler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const body = `app ${this.instanceId} ${req.url ?? ''}`;
    // A page that sets the app's own cookie (as login pages do), for the balancer's cookie tests.
    if (req.url?.includes('set-app-cookie')) res.setHeader('set-cookie', [`app-session=${this.instanceId}; Path=/; HttpOnly`]);
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };

  /** WebApp._timeoutAdjustmentRequestCallback. */
  readonly timeoutAdjustment = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    req.setTimeout(this.opts.longSocketTimeout ?? LONG_SOCKET_TIMEOUT);
    const finishListeners = res.listeners('finish') as Array<(...args: unknown[]) => void>;
    res.removeAllListeners('finish');
    res.on('finish', () => res.setTimeout(this.opts.shortSocketTimeout ?? SHORT_SOCKET_TIMEOUT));
    for (const listener of finishListeners) res.on('finish', listener);
  };

  /* ----------------------------- stream server ----------------------------- */

  /** stream_server.js StreamServer constructor. */
  /** Returns the sockjs server (what Meteor keeps as `stream_server.server`). */
  private installStreamServer(): unknown {
    const sockjs = loadIsolatedSockjs();
    const serverOptions: SockjsServerOptions = {
      prefix: this.sockjsPrefix,
      log: () => {},
      heartbeat_delay: this.opts.heartbeatDelay ?? 45000,
      disconnect_delay: this.opts.disconnectDelay ?? 60 * 1000,
      disable_cors: !!this.opts.disableCors,
      jsessionid: !!this.opts.useJsessionid,
      sockjs_url: SOCKJS_DEFAULT_URL,
    };
    // Meteor sets `websocket = false` only with DISABLE_WEBSOCKETS; otherwise it passes
    // faye_server_options with the permessage-deflate extension (not installed here, so the raw
    // websocket never negotiates compression; DDP semantics are unaffected).
    if (this.opts.disableWebsockets) serverOptions.websocket = false;
    const sockjsServer = sockjs.createServer(serverOptions);

    this.server.removeListener('request', this.timeoutAdjustment);
    sockjsServer.installHandlers(this.server);
    this.server.addListener('request', this.timeoutAdjustment);

    this.redirectWebsocketEndpoint();
    sockjsServer.on('connection', (conn: SockjsModule.Connection | null) => {
      if (conn) this.onSockjsConnection(conn);
    });
    return sockjsServer;
  }

  /**
   * Copy of StreamServer.prototype._redirectWebsocketEndpoint (meteor/meteor
   * packages/ddp-server/stream_server.js): remove every 'request'/'upgrade' listener, install one
   * that rewrites `<prefix>/websocket[/]` to `<prefix>/sockjs/websocket` (query kept) and calls them.
   */
  private redirectWebsocketEndpoint(): void {
    const httpServer = this.server;
    for (const event of ['request', 'upgrade'] as const) {
      const oldListeners = httpServer.listeners(event).slice(0) as RequestListener[];
      httpServer.removeAllListeners(event);
      const newListener = (request: http.IncomingMessage, ...rest: unknown[]): void => {
        const parsedUrl = new URL(request.url ?? '/', 'http://dummy');
        if (
          parsedUrl.pathname === `${this.rootUrlPathPrefix}/websocket` ||
          parsedUrl.pathname === `${this.rootUrlPathPrefix}/websocket/`
        ) {
          parsedUrl.pathname = `${this.sockjsPrefix}/websocket`;
          request.url = parsedUrl.pathname + parsedUrl.search;
        }
        for (const oldListener of oldListeners) oldListener.call(httpServer, request, ...rest);
      };
      httpServer.addListener(event, newListener);
    }
  }

  private onSockjsConnection(conn: SockjsModule.Connection): void {
    this.sockjsConnections.add(conn);
    conn.on('close', () => this.sockjsConnections.delete(conn));
    if (this.opts.sendServerIdWelcome) conn.write(JSON.stringify({ server_id: '0' }));
    new ServerSession(this.sessionHost, conn);
  }

  /** What a ServerSession may touch on its app (keeps the app's fields private). */
  private readonly sessionHost: SessionHost = {
    instanceId: () => this.instanceId,
    forwardedCount: () => this.opts.httpForwardedCount ?? httpForwardedCountFromEnv(),
    register: (handle) => {
      this.sessions.set(handle.id, handle);
      for (const hook of [...this.connectionHooks]) runHook(hook, handle);
    },
    unregister: (id) => void this.sessions.delete(id),
  };

  /* -------------------------------- shutdown -------------------------------- */

  private trackSocket(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }

  private async shutdown(): Promise<void> {
    const stopped = this.address ? new Promise<void>((resolve) => this.server.close(() => resolve())) : undefined;
    for (const handle of [...this.sessions.values()]) handle.close();
    for (const socket of this.sockets) socket.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => setImmediate(resolve));
    for (const conn of [...this.sockjsConnections]) expireSockjsSession(conn);
    await stopped;
  }

  private requireAddress(): { host: string; port: number } {
    if (!this.address) throw new Error(`${this.instanceId}: listen() first`);
    return this.address;
  }
}

function runHook(hook: (handle: DdpConnectionHandle) => void, handle: DdpConnectionHandle): void {
  try {
    hook(handle);
  } catch (err) {
    console.error('Exception in onConnection callback:', err);
  }
}

/**
 * After the sockets are gone an xhr session would linger for disconnect_delay (sockjs keeps it for
 * a reconnecting poll); end it now so close() leaves no timers and every session emits 'close'.
 */
function expireSockjsSession(conn: SockjsModule.Connection): void {
  const session = sessionInternals(conn);
  if (!session || session.recv || session.readyState === 3) return;
  if (session.to_tref) clearTimeout(session.to_tref);
  session.to_tref = null;
  try {
    session.didTimeout();
  } catch {
    // already closed
  }
}

/* ------------------------------------------------------------------------------------------ */
/* DDP responder (livedata_server.js Server/Session, reduced to the test publications/methods) */
/* ------------------------------------------------------------------------------------------ */

interface SessionHost {
  instanceId(): string;
  forwardedCount(): number;
  register(handle: DdpConnectionHandle): void;
  unregister(id: string): void;
}

type DdpMessage = Record<string, unknown> & { msg: string };

const ITEMS_COLLECTION = 'items';
const ITEMS_COUNT = 3;

class MethodError {
  constructor(
    readonly error: number | string,
    readonly reason: string,
  ) {}

  /** EJSON form of a Meteor.Error as it appears in a DDP `result`/`nosub`. */
  toJSON(): Record<string, unknown> {
    return {
      isClientSafe: true,
      error: this.error,
      reason: this.reason,
      message: `${this.reason} [${this.error}]`,
      errorType: 'Meteor.Error',
    };
  }
}

class ServerSession {
  private readonly host: SessionHost;
  private readonly conn: SockjsModule.Connection;
  private handle: DdpConnectionHandle | undefined;
  private closed = false;
  private queue: Promise<void> = Promise.resolve();
  private readonly closeCallbacks: Array<() => void> = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Merge box for the one collection we publish: doc id → ids of the subs that publish it. */
  private readonly docOwners = new Map<string, Set<string>>();
  private readonly subs = new Map<string, string[]>();

  constructor(host: SessionHost, conn: SockjsModule.Connection) {
    this.host = host;
    this.conn = conn;
    conn.on('data', (raw: string) => this.onData(raw));
    conn.on('close', () => this.close());
  }

  private send(msg: Record<string, unknown>): void {
    if (!this.closed) this.conn.write(JSON.stringify(msg));
  }

  private sendError(reason: string, offendingMessage?: unknown): void {
    const msg: Record<string, unknown> = { msg: 'error', reason };
    if (offendingMessage !== undefined) msg.offendingMessage = offendingMessage;
    this.send(msg);
  }

  private onData(raw: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      return this.sendError('Parse error');
    }
    if (!isRecord(parsed) || typeof parsed.msg !== 'string') return this.sendError('Bad request', parsed);
    const msg = parsed as DdpMessage;
    if (msg.msg === 'connect') return this.onConnect(msg);
    if (!this.handle) return this.sendError('Must connect first', msg);
    this.processMessage(msg);
  }

  /** Server._handleConnect. */
  private onConnect(msg: DdpMessage): void {
    if (this.handle) return this.sendError('Already connected', msg);
    const { version, support } = msg;
    if (typeof version !== 'string' || !isStringArray(support) || !support.includes(version)) {
      return this.failConnect(SUPPORTED_DDP_VERSIONS[0] ?? '1');
    }
    const best = support.find((v) => SUPPORTED_DDP_VERSIONS.includes(v)) ?? SUPPORTED_DDP_VERSIONS[0] ?? '1';
    if (version !== best) return this.failConnect(best);
    this.handle = this.createHandle();
    this.send({ msg: 'connected', session: this.handle.id });
    this.host.register(this.handle);
  }

  private failConnect(version: string): void {
    this.send({ msg: 'failed', version });
    this.conn.close();
  }

  private createHandle(): DdpConnectionHandle {
    const headers: Record<string, string> = { ...this.conn.headers };
    return {
      id: meteorRandomId(),
      clientAddress: meteorClientAddress(this.conn.remoteAddress, headers, this.host.forwardedCount()),
      httpHeaders: headers,
      close: () => this.close(),
      onClose: (cb) => {
        if (this.closed) setImmediate(cb);
        else this.closeCallbacks.push(cb);
      },
    };
  }

  /** Session.processMessage: ping/pong at once, everything else one at a time in order. */
  private processMessage(msg: DdpMessage): void {
    if (msg.msg === 'ping') {
      const pong: Record<string, unknown> = { msg: 'pong' };
      if (msg.id !== undefined) pong.id = msg.id;
      return this.send(pong);
    }
    if (msg.msg === 'pong') return;
    this.queue = this.queue.then(() => this.handleQueued(msg)).catch((err: unknown) => {
      console.error('Internal exception while processing message', msg, err);
    });
  }

  private async handleQueued(msg: DdpMessage): Promise<void> {
    if (this.closed) return;
    switch (msg.msg) {
      case 'method':
        return this.onMethod(msg);
      case 'sub':
        return this.onSub(msg);
      case 'unsub':
        return this.onUnsub(msg);
      default:
        return this.sendError('Bad request', msg);
    }
  }

  private async onMethod(msg: DdpMessage): Promise<void> {
    const { id, method, params = [] } = msg;
    if (typeof id !== 'string' || typeof method !== 'string' || !Array.isArray(params)) {
      return this.sendError('Malformed method invocation', msg);
    }
    const handler = this.methods[method];
    if (!handler) {
      this.send({ msg: 'result', id, error: new MethodError(404, `Method '${method}' not found`).toJSON() });
      return this.send({ msg: 'updated', methods: [id] });
    }
    const payload: Record<string, unknown> = { msg: 'result', id };
    try {
      const result = await handler(params);
      if (result !== undefined) payload.result = result;
    } catch (err) {
      payload.error = (err instanceof MethodError ? err : new MethodError(500, 'Internal server error')).toJSON();
    }
    // Meteor 3 arms the write fence (→ 'updated') before it sends the result.
    this.send({ msg: 'updated', methods: [id] });
    this.send(payload);
  }

  private readonly methods: Record<string, (params: unknown[]) => unknown> = {
    whoami: (): WhoamiResult => ({
      instanceId: this.host.instanceId(),
      clientAddress: this.handle?.clientAddress ?? null,
      sessionId: this.handle?.id ?? '',
      transport: this.conn.protocol,
      httpHeaders: { ...(this.handle?.httpHeaders ?? {}) },
    }),
    echo: (params) => params[0],
    slow: (params) => {
      const ms = typeof params[0] === 'number' ? params[0] : 0;
      return this.sleep(ms).then(() => ms);
    },
  };

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        resolve();
      }, ms);
      this.timers.add(timer);
    });
  }

  private onSub(msg: DdpMessage): void {
    const { id, name, params } = msg;
    if (typeof id !== 'string' || typeof name !== 'string' || (params !== undefined && !Array.isArray(params))) {
      return this.sendError('Malformed subscription', msg);
    }
    if (name !== ITEMS_COLLECTION) {
      const error = new MethodError(404, `Subscription '${name}' not found`).toJSON();
      return this.send({ msg: 'nosub', id, error });
    }
    if (this.subs.has(id)) return;
    const docIds = Array.from({ length: ITEMS_COUNT }, (_, n) => `item${n}`);
    this.subs.set(id, docIds);
    docIds.forEach((docId, n) => this.addDoc(id, docId, { n, instanceId: this.host.instanceId() }));
    this.send({ msg: 'ready', subs: [id] });
  }

  private onUnsub(msg: DdpMessage): void {
    const { id } = msg;
    if (typeof id !== 'string') return;
    const docIds = this.subs.get(id);
    if (docIds) {
      for (const docId of docIds) this.removeDoc(id, docId);
      this.subs.delete(id);
    }
    this.send({ msg: 'nosub', id });
  }

  private addDoc(subId: string, docId: string, fields: Record<string, unknown>): void {
    const owners = this.docOwners.get(docId) ?? new Set<string>();
    const isNew = owners.size === 0;
    owners.add(subId);
    this.docOwners.set(docId, owners);
    if (isNew) this.send({ msg: 'added', collection: ITEMS_COLLECTION, id: docId, fields });
  }

  private removeDoc(subId: string, docId: string): void {
    const owners = this.docOwners.get(docId);
    if (!owners?.delete(subId) || owners.size > 0) return;
    this.docOwners.delete(docId);
    this.send({ msg: 'removed', collection: ITEMS_COLLECTION, id: docId });
  }

  /** Session.close: unregister at once, close the socket, run onClose callbacks deferred. */
  private close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.conn.close();
    if (!this.handle) return;
    this.host.unregister(this.handle.id);
    const callbacks = this.closeCallbacks.splice(0);
    setImmediate(() => callbacks.forEach((cb) => cb()));
  }
}
