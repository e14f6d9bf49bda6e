/**
 * Real DDP clients for tests, the demo and benchmarks. Every wait has an explicit timeout and waits
 * on an event (never a bare sleep).
 *
 *  - sockjsDdp:  stock sockjs-client 1.6.1 in Node (the transport Meteor's browser client uses).
 *  - wsDdp:      raw websocket to `<url>/websocket` with `ws` (what Node/mobile DDP clients use).
 *  - simpleDdp:  the third-party `simpleddp` package over `ws`.
 *  - raw xhr:    the SockJS xhr-polling protocol driven by hand, one HTTP request at a time, so a
 *                test can send each request of one session through a different URL.
 *
 * URLs: `url` arguments are an app (or balancer) ROOT_URL such as `http://127.0.0.1:3000` or
 * `http://127.0.0.1:3000/prefix`; the clients append `/sockjs` or `/websocket` like Meteor's
 * socket-stream-client does. The raw xhr helpers take a *sockjs base* instead (the URL up to and
 * including the sockjs prefix, e.g. `http://127.0.0.1:3000/sockjs`, or a `base_url` from /info).
 *
 * base_url: stock sockjs-client 1.6.1 already honours `base_url` from the /info response
 * (lib/main.js `_receiveInfo`: `this._transUrl = info.base_url ? info.base_url : this.url`), and
 * Meteor's bundled copy (packages/socket-stream-client/sockjs-1.6.1-min-.js) has the very same line;
 * no patch is needed. `SockjsDdpClient.info` / `.baseUrl` / `.transportUrl` show what was used.
 */
import http from 'node:http';
import WebSocket from 'ws';

export const DEFAULT_TIMEOUT_MS = 10_000;
export const DDP_CONNECT_MESSAGE = { msg: 'connect', version: '1', support: ['1', 'pre2', 'pre1'] } as const;

export interface DdpDoc {
  collection: string;
  id: string;
  fields: Record<string, unknown>;
}

/** A DDP `result.error` / `nosub.error` / `failed` / `error` turned into an Error. */
export class DdpError extends Error {
  constructor(
    message: string,
    readonly error: unknown,
    readonly reason: unknown,
    readonly details: unknown,
  ) {
    super(message);
    this.name = 'DdpError';
  }
}

export class TimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`${what} timed out after ${ms} ms`);
    this.name = 'TimeoutError';
  }
}

export interface CloseInfo {
  code: number | undefined;
  reason: string;
}

export interface DdpClient {
  /** The DDP session id from `connected`. */
  readonly sessionId: string;
  /** The URL the transport actually used (websocket URL or sockjs session URL). */
  readonly transportUrl: string | undefined;
  call(method: string, ...params: unknown[]): Promise<unknown>;
  /** Resolves with the `added` docs received between `sub` and `ready`. */
  subscribe(name: string, ...params: unknown[]): Promise<DdpDoc[]>;
  /** Resolves when the underlying connection closes (for any reason). */
  readonly closed: Promise<CloseInfo>;
  close(): Promise<void>;
}

export interface ClientOptions {
  /** Per operation (connect, each call, each subscribe, close). Default 10 s. */
  timeoutMs?: number;
}

/* ------------------------------------------------------------------------------------------ */
/* small utilities                                                                             */
/* ------------------------------------------------------------------------------------------ */

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Races `promise` against a timer; the timer never outlives the race. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(what, ms)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(err: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function ddpErrorFrom(what: string, error: unknown): DdpError {
  if (!isRecord(error)) return new DdpError(`${what}: ${String(error)}`, error, undefined, undefined);
  const message = typeof error.message === 'string' ? error.message : `${String(error.reason ?? error.error)}`;
  return new DdpError(`${what}: ${message}`, error.error, error.reason, error.details);
}

function stripTrailingSlash(url: string): string {
  return url.replace(/\/+$/, '');
}

/** `http(s)://host/prefix` → `ws(s)://host/prefix/websocket`. */
export function toWebsocketUrl(url: string): string {
  return `${stripTrailingSlash(url).replace(/^http/, 'ws')}/websocket`;
}

/** `http(s)://host/prefix` → `http(s)://host/prefix/sockjs`. */
export function toSockjsUrl(url: string): string {
  return `${stripTrailingSlash(url)}/sockjs`;
}

/* ------------------------------------------------------------------------------------------ */
/* DDP protocol state shared by the sockjs, ws and raw-xhr clients                             */
/* ------------------------------------------------------------------------------------------ */

interface PendingSub {
  docs: DdpDoc[];
  done: Deferred<DdpDoc[]>;
}

/**
 * The client half of DDP over any text-frame transport: feed it frames with `receive()`, it sends
 * through `send`. Tolerates the old `{server_id}` greeting and answers server pings.
 */
export class DdpProtocol {
  sessionId: string | undefined;
  private nextId = 1;
  private readonly connected = deferred<string>();
  private readonly calls = new Map<string, Deferred<unknown>>();
  private readonly subs = new Map<string, PendingSub>();
  /** Every parsed message, in arrival order (handy for assertions). */
  readonly received: Record<string, unknown>[] = [];

  constructor(private readonly send: (text: string) => void) {
    this.connected.promise.catch(() => {});
  }

  connect(timeoutMs: number): Promise<string> {
    this.send(JSON.stringify(DDP_CONNECT_MESSAGE));
    return withTimeout(this.connected.promise, timeoutMs, 'DDP connect');
  }

  call(method: string, params: unknown[], timeoutMs: number): Promise<unknown> {
    const id = String(this.nextId++);
    const pending = deferred<unknown>();
    this.calls.set(id, pending);
    this.send(JSON.stringify({ msg: 'method', id, method, params }));
    return withTimeout(pending.promise, timeoutMs, `method ${method}`).finally(() => this.calls.delete(id));
  }

  subscribe(name: string, params: unknown[], timeoutMs: number): Promise<DdpDoc[]> {
    const id = String(this.nextId++);
    const pending: PendingSub = { docs: [], done: deferred<DdpDoc[]>() };
    this.subs.set(id, pending);
    this.send(JSON.stringify({ msg: 'sub', id, name, params }));
    return withTimeout(pending.done.promise, timeoutMs, `subscribe ${name}`).finally(() => this.subs.delete(id));
  }

  /** Feed one DDP text message. */
  receive(text: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return;
    }
    if (!isRecord(parsed)) return;
    this.received.push(parsed);
    this.dispatch(parsed);
  }

  /** The connection is gone: fail everything still waiting. */
  fail(err: Error): void {
    this.connected.reject(err);
    for (const pending of this.calls.values()) pending.reject(err);
    for (const pending of this.subs.values()) pending.done.reject(err);
  }

  private dispatch(msg: Record<string, unknown>): void {
    switch (msg.msg) {
      case 'connected':
        this.sessionId = typeof msg.session === 'string' ? msg.session : undefined;
        return this.connected.resolve(this.sessionId ?? '');
      case 'failed':
        return this.connected.reject(new DdpError(`DDP version refused (server wants ${String(msg.version)})`, 'failed', undefined, msg));
      case 'ping':
        return this.send(JSON.stringify(msg.id === undefined ? { msg: 'pong' } : { msg: 'pong', id: msg.id }));
      case 'result':
        return this.onResult(msg);
      case 'added':
        return this.onAdded(msg);
      case 'ready':
        return this.onReady(msg);
      case 'nosub':
        return this.onNosub(msg);
      default:
        return; // updated, changed, removed, pong, error (kept in `received`), {server_id}
    }
  }

  private onResult(msg: Record<string, unknown>): void {
    const pending = typeof msg.id === 'string' ? this.calls.get(msg.id) : undefined;
    if (!pending) return;
    if (msg.error !== undefined) pending.reject(ddpErrorFrom('method failed', msg.error));
    else pending.resolve(msg.result);
  }

  private onAdded(msg: Record<string, unknown>): void {
    const fields = isRecord(msg.fields) ? msg.fields : {};
    const doc: DdpDoc = { collection: String(msg.collection), id: String(msg.id), fields };
    for (const pending of this.subs.values()) pending.docs.push(doc);
  }

  private onReady(msg: Record<string, unknown>): void {
    const ids = Array.isArray(msg.subs) ? msg.subs : [];
    for (const id of ids) {
      const pending = typeof id === 'string' ? this.subs.get(id) : undefined;
      pending?.done.resolve(pending.docs);
    }
  }

  private onNosub(msg: Record<string, unknown>): void {
    const pending = typeof msg.id === 'string' ? this.subs.get(msg.id) : undefined;
    pending?.done.reject(ddpErrorFrom('subscription stopped', msg.error ?? 'nosub'));
  }
}

/** Shared plumbing: a DdpProtocol plus close bookkeeping. */
abstract class FramedDdpClient implements DdpClient {
  protected readonly ddp: DdpProtocol;
  protected readonly timeoutMs: number;
  private readonly closedDeferred = deferred<CloseInfo>();
  readonly closed: Promise<CloseInfo> = this.closedDeferred.promise;

  constructor(opts: ClientOptions) {
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.ddp = new DdpProtocol((text) => this.sendFrame(text));
  }

  get sessionId(): string {
    return this.ddp.sessionId ?? '';
  }

  abstract get transportUrl(): string | undefined;
  protected abstract sendFrame(text: string): void;
  protected abstract closeTransport(): void;

  call(method: string, ...params: unknown[]): Promise<unknown> {
    return this.ddp.call(method, params, this.timeoutMs);
  }

  subscribe(name: string, ...params: unknown[]): Promise<DdpDoc[]> {
    return this.ddp.subscribe(name, params, this.timeoutMs);
  }

  async close(): Promise<void> {
    this.closeTransport();
    await withTimeout(this.closed, this.timeoutMs, 'close');
  }

  protected didClose(info: CloseInfo): void {
    this.ddp.fail(new Error(`connection closed (${info.code ?? '-'} ${info.reason})`));
    this.closedDeferred.resolve(info);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* sockjs-client                                                                               */
/* ------------------------------------------------------------------------------------------ */

/** What /info answers (sockjs 0.3.24), plus a balancer's optional base_url. */
export interface SockjsInfo {
  websocket?: boolean;
  origins?: string[];
  cookie_needed?: boolean;
  entropy?: number;
  base_url?: string;
  [key: string]: unknown;
}

interface SockjsClientOptions {
  transports?: string[];
  timeout?: number;
  server?: string;
  sessionId?: number | (() => string);
}

/** The parts of a sockjs-client SockJS instance used here (its @types need the DOM lib). */
interface SockjsClientInstance {
  readyState: number;
  transport: string | null | undefined;
  _transport: unknown;
  _transUrl: string | undefined;
  onopen: (() => void) | null;
  onmessage: ((e: { data: unknown }) => void) | null;
  onclose: ((e: { code?: number; reason?: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  _receiveInfo(info: unknown, rtt: unknown): void;
}

type SockjsClientCtor = new (url: string, protocols?: string[] | null, options?: SockjsClientOptions) => SockjsClientInstance;

const SockJS: SockjsClientCtor = require('sockjs-client');

/** Remembers the /info answer the client acted on (base_url included). */
class InfoCapturingSockJS extends SockJS {
  capturedInfo: SockjsInfo | undefined;

  override _receiveInfo(info: unknown, rtt: unknown): void {
    if (isRecord(info)) this.capturedInfo = { ...info };
    super._receiveInfo(info, rtt);
  }
}

export interface SockjsDdpOptions extends ClientOptions {
  /** sockjs-client transport whitelist, e.g. ['websocket'] or ['xhr-polling']. */
  transports?: string[];
  /** Fixed server_id / session_id path segments (sockjs-client picks random ones otherwise). */
  serverId?: string;
  sockjsSessionId?: string;
  /**
   * sockjs-client's transport-open timeout. Its default is max(rto * roundTrips, ...) ≈ 600 ms
   * on loopback, which a busy test machine can miss (it then silently falls back to the next
   * transport), so this defaults to 5000.
   */
  transportTimeoutMs?: number;
}

export class SockjsDdpClient extends FramedDdpClient {
  readonly sock: InfoCapturingSockJS;

  constructor(url: string, opts: SockjsDdpOptions = {}) {
    super(opts);
    const options: SockjsClientOptions = { timeout: opts.transportTimeoutMs ?? 5000 };
    if (opts.transports) options.transports = opts.transports;
    if (opts.serverId !== undefined) options.server = opts.serverId;
    const fixedSession = opts.sockjsSessionId;
    if (fixedSession !== undefined) options.sessionId = () => fixedSession;
    this.sock = new InfoCapturingSockJS(toSockjsUrl(url), null, options);
  }

  /** The /info JSON the client received (undefined until then). */
  get info(): SockjsInfo | undefined {
    return this.sock.capturedInfo;
  }

  /** The sockjs base the transport used: `base_url` from /info if present, else `<url>/sockjs`. */
  get baseUrl(): string | undefined {
    return this.sock._transUrl;
  }

  /** Transport name sockjs-client settled on: 'websocket', 'xhr-polling', ... */
  get transportName(): string | undefined {
    return this.sock.transport ?? undefined;
  }

  /**
   * `_transport.url`: `ws://…/<server>/<session>/websocket` or `http://…/<server>/<session>`.
   * Remembered at open, because sockjs-client drops `_transport` when the socket closes.
   */
  get transportUrl(): string | undefined {
    return liveTransportUrl(this.sock) ?? this.openedTransportUrl;
  }

  private openedTransportUrl: string | undefined;

  async open(): Promise<this> {
    const opened = new Promise<void>((resolve, reject) => {
      this.sock.onopen = () => resolve();
      this.sock.onclose = (e) => {
        this.didClose({ code: e.code, reason: e.reason ?? '' });
        reject(new Error(`sockjs closed before open (${e.code ?? '-'} ${e.reason ?? ''})`));
      };
    });
    opened.catch(() => {});
    this.sock.onmessage = (e) => {
      if (typeof e.data === 'string') this.ddp.receive(e.data);
    };
    await withTimeout(opened, this.timeoutMs, 'sockjs open');
    this.openedTransportUrl = liveTransportUrl(this.sock);
    this.sock.onclose = (e) => this.didClose({ code: e.code, reason: e.reason ?? '' });
    await this.ddp.connect(this.timeoutMs);
    return this;
  }

  protected sendFrame(text: string): void {
    if (this.sock.readyState === 1) this.sock.send(text);
  }

  protected closeTransport(): void {
    if (this.sock.readyState === 0 || this.sock.readyState === 1) this.sock.close();
  }
}

function liveTransportUrl(sock: SockjsClientInstance): string | undefined {
  const transport = sock._transport;
  return isRecord(transport) && typeof transport.url === 'string' ? transport.url : undefined;
}

/** Connects with sockjs-client (to `<url>/sockjs`) and completes the DDP handshake. */
export function sockjsDdp(url: string, opts: SockjsDdpOptions = {}): Promise<SockjsDdpClient> {
  const client = new SockjsDdpClient(url, opts);
  return client.open().catch(async (err: unknown) => {
    await client.close().catch(() => {});
    throw err;
  });
}

/* ------------------------------------------------------------------------------------------ */
/* raw websocket (ws)                                                                          */
/* ------------------------------------------------------------------------------------------ */

export interface WsDdpOptions extends ClientOptions {
  /** Extra request headers for the upgrade, e.g. { 'x-forwarded-for': '203.0.113.7' }. */
  headers?: Record<string, string>;
  /** Loopback source address (127.0.0.2 ...), so a server can tell this client from a proxy. */
  localAddress?: string;
}

export class WsDdpClient extends FramedDdpClient {
  readonly ws: WebSocket;
  readonly transportUrl: string;

  constructor(url: string, opts: WsDdpOptions = {}) {
    super(opts);
    this.transportUrl = toWebsocketUrl(url);
    this.ws = new WebSocket(this.transportUrl, { headers: opts.headers ?? {}, localAddress: opts.localAddress });
    this.ws.on('message', (data: WebSocket.RawData) => this.ddp.receive(data.toString()));
    this.ws.on('close', (code: number, reason: Buffer) => this.didClose({ code, reason: reason.toString() }));
    this.ws.on('error', () => {}); // 'close' follows and fails whatever is pending
  }

  async open(): Promise<this> {
    const opened = new Promise<void>((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('unexpected-response', (_req, res) => reject(new Error(`websocket upgrade refused: HTTP ${res.statusCode}`)));
      void this.closed.then((info) => reject(new Error(`websocket closed before open (${info.code ?? '-'})`)));
    });
    await withTimeout(opened, this.timeoutMs, 'websocket open');
    await this.ddp.connect(this.timeoutMs);
    return this;
  }

  protected sendFrame(text: string): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
  }

  protected closeTransport(): void {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    if (this.ws.readyState === WebSocket.CONNECTING) this.ws.terminate();
    else this.ws.close();
  }
}

/** Raw websocket DDP client on `<url>/websocket`. */
export function wsDdp(url: string, opts: WsDdpOptions = {}): Promise<WsDdpClient> {
  const client = new WsDdpClient(url, opts);
  return client.open().catch(async (err: unknown) => {
    await client.close().catch(() => {});
    throw err;
  });
}

/* ------------------------------------------------------------------------------------------ */
/* simpleddp                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/** The parts of simpleddp 2.2.4 used here (it ships no types). */
interface SimpleDdpListener {
  stop(): void;
}
interface SimpleDdpSubscription {
  ready(): Promise<void>;
  stop(): Promise<void>;
}
interface SimpleDdpInstance {
  connected: boolean;
  ddpConnection: { sessionId: string | null; socket: { rawSocket: unknown } };
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  call(method: string, ...params: unknown[]): Promise<unknown>;
  subscribe(name: string, ...params: unknown[]): SimpleDdpSubscription;
  on(event: string, cb: (msg: unknown) => void): SimpleDdpListener;
}
type SimpleDdpCtor = new (opts: Record<string, unknown>) => SimpleDdpInstance;

function loadSimpleDdp(): SimpleDdpCtor {
  const mod: unknown = require('simpleddp');
  const ctor: unknown = isRecord(mod) || typeof mod === 'function' ? Reflect.get(mod, 'default') ?? mod : mod;
  if (typeof ctor !== 'function') throw new Error('simpleddp: unexpected module shape');
  return ctor as SimpleDdpCtor;
}

export class SimpleDdpClient implements DdpClient {
  readonly ddp: SimpleDdpInstance;
  readonly transportUrl: string;
  private readonly timeoutMs: number;
  private readonly closedDeferred = deferred<CloseInfo>();
  readonly closed: Promise<CloseInfo> = this.closedDeferred.promise;

  constructor(url: string, opts: ClientOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.transportUrl = toWebsocketUrl(url);
    const SimpleDDP = loadSimpleDdp();
    this.ddp = new SimpleDDP({
      endpoint: this.transportUrl,
      SocketConstructor: WebSocket,
      autoConnect: false,
      autoReconnect: false,
      maxTimeout: this.timeoutMs,
    });
    this.ddp.on('disconnected', () => this.closedDeferred.resolve({ code: undefined, reason: 'disconnected' }));
  }

  get sessionId(): string {
    return this.ddp.ddpConnection.sessionId ?? '';
  }

  async open(): Promise<this> {
    await withTimeout(this.ddp.connect(), this.timeoutMs, 'simpleddp connect');
    return this;
  }

  call(method: string, ...params: unknown[]): Promise<unknown> {
    return withTimeout(this.ddp.call(method, ...params), this.timeoutMs, `method ${method}`).catch((err: unknown) => {
      throw err instanceof Error ? err : ddpErrorFrom('method failed', err);
    });
  }

  async subscribe(name: string, ...params: unknown[]): Promise<DdpDoc[]> {
    const docs: DdpDoc[] = [];
    const listener = this.ddp.on('added', (msg) => {
      if (!isRecord(msg)) return;
      const fields = isRecord(msg.fields) ? msg.fields : {};
      docs.push({ collection: String(msg.collection), id: String(msg.id), fields });
    });
    try {
      await withTimeout(this.ddp.subscribe(name, ...params).ready(), this.timeoutMs, `subscribe ${name}`);
      return docs;
    } finally {
      listener.stop();
    }
  }

  async close(): Promise<void> {
    if (!this.ddp.connected) return this.closedDeferred.resolve({ code: undefined, reason: 'not connected' });
    await withTimeout(this.ddp.disconnect(), this.timeoutMs, 'simpleddp disconnect');
  }
}

/** simpleddp over `ws` on `<url>/websocket`. */
export function simpleDdp(url: string, opts: ClientOptions = {}): Promise<SimpleDdpClient> {
  const client = new SimpleDdpClient(url, opts);
  return client.open().catch(async (err: unknown) => {
    await client.close().catch(() => {});
    throw err;
  });
}

/* ------------------------------------------------------------------------------------------ */
/* raw SockJS xhr-polling                                                                      */
/* ------------------------------------------------------------------------------------------ */

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface RawHttpOptions {
  timeoutMs?: number;
  headers?: Record<string, string>;
  /** Loopback source address (127.0.0.2 ...), so a server can tell this client from a proxy. */
  localAddress?: string;
}

/**
 * One HTTP request on a fresh connection (no keep-alive agent), so that consecutive requests are
 * independent and may go to different hosts.
 */
export function httpRequest(method: string, url: string, body?: string, opts: RawHttpOptions = {}): Promise<HttpResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (body !== undefined) {
      headers['content-type'] ??= 'text/plain;charset=UTF-8';
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    const req = http.request(url, { method, headers, agent: false, localAddress: opts.localAddress }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new TimeoutError(`${method} ${url}`, timeoutMs)));
    req.on('error', reject);
    req.end(body);
  });
}

/** GET `<sockjsBase>/info` and parse it. */
export async function getSockjsInfo(sockjsBase: string, opts: RawHttpOptions = {}): Promise<SockjsInfo> {
  const res = await httpRequest('GET', `${stripTrailingSlash(sockjsBase)}/info`, undefined, opts);
  if (res.status !== 200) throw new Error(`/info answered HTTP ${res.status}`);
  const parsed: unknown = JSON.parse(res.body);
  if (!isRecord(parsed)) throw new Error(`/info is not an object: ${res.body}`);
  return parsed as SockjsInfo;
}

/** A parsed SockJS frame: open, heartbeat, array of messages, or close. */
export type SockjsFrame =
  | { type: 'o' }
  | { type: 'h' }
  | { type: 'a'; messages: string[] }
  | { type: 'c'; code: number; reason: string };

export function parseSockjsFrame(body: string): SockjsFrame {
  const text = body.replace(/\n$/, '');
  const type = text.charAt(0);
  if (type === 'o' || type === 'h') return { type };
  const payload: unknown = text.length > 1 ? JSON.parse(text.slice(1)) : undefined;
  if (type === 'a' && Array.isArray(payload)) return { type, messages: payload.map(String) };
  if (type === 'c' && Array.isArray(payload)) return { type, code: Number(payload[0]), reason: String(payload[1]) };
  throw new Error(`not a sockjs frame: ${JSON.stringify(body)}`);
}

/** `<sockjsBase>/<serverId>/<sessionId>`. */
export function sockjsSessionUrl(sockjsBase: string, serverId: string, sessionId: string): string {
  return `${stripTrailingSlash(sockjsBase)}/${serverId}/${sessionId}`;
}

/** POST `<sessionUrl>/xhr`: opens the session (→ 'o') or long-polls it (→ 'a[...]', 'h', 'c[...]'). */
export async function xhrPoll(sessionUrl: string, opts: RawHttpOptions = {}): Promise<SockjsFrame> {
  const res = await httpRequest('POST', `${sessionUrl}/xhr`, undefined, opts);
  if (res.status !== 200) throw new Error(`xhr poll answered HTTP ${res.status}`);
  return parseSockjsFrame(res.body);
}

/** The first `/xhr` of a session; throws unless the server answers 'o'. */
export async function xhrOpen(sessionUrl: string, opts: RawHttpOptions = {}): Promise<void> {
  const frame = await xhrPoll(sessionUrl, opts);
  if (frame.type !== 'o') throw new Error(`expected open frame, got ${JSON.stringify(frame)}`);
}

/** POST `<sessionUrl>/xhr_send` with a JSON array of strings; resolves with the HTTP status (204 ok, 404 unknown session). */
export async function xhrSend(sessionUrl: string, messages: string[], opts: RawHttpOptions = {}): Promise<number> {
  const res = await httpRequest('POST', `${sessionUrl}/xhr_send`, JSON.stringify(messages), opts);
  return res.status;
}

/** Random path segments shaped like sockjs-client's: 3-digit server id, 8-char session id. */
export function randomSockjsIds(): { serverId: string; sessionId: string } {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz012345';
  let sessionId = '';
  for (let i = 0; i < 8; i++) sessionId += alphabet[Math.floor(Math.random() * alphabet.length)];
  return { serverId: String(Math.floor(Math.random() * 1000)), sessionId };
}

export interface RawSockjsPoll {
  readonly serverId: string;
  readonly sessionId: string;
  /** `<base>/<serverId>/<sessionId>`; base defaults to the one given to rawSockjsPoll. */
  sessionUrl(base?: string): string;
  xhrOpen(base?: string, opts?: RawHttpOptions): Promise<void>;
  xhrSend(messages: string[], base?: string, opts?: RawHttpOptions): Promise<number>;
  xhrPoll(base?: string, opts?: RawHttpOptions): Promise<SockjsFrame>;
}

/**
 * A hand-driven SockJS xhr-polling session with fixed ids; every request may name its own sockjs
 * base (e.g. a different balancer), the path segments stay the same.
 */
export function rawSockjsPoll(sockjsBase: string, serverId?: string, sessionId?: string): RawSockjsPoll {
  const ids = randomSockjsIds();
  const server = serverId ?? ids.serverId;
  const session = sessionId ?? ids.sessionId;
  const sessionUrl = (base = sockjsBase) => sockjsSessionUrl(base, server, session);
  return {
    serverId: server,
    sessionId: session,
    sessionUrl,
    xhrOpen: (base, opts) => xhrOpen(sessionUrl(base), opts),
    xhrSend: (messages, base, opts) => xhrSend(sessionUrl(base), messages, opts),
    xhrPoll: (base, opts) => xhrPoll(sessionUrl(base), opts),
  };
}

export type RawXhrStep = 'open' | 'send' | 'poll';

/** Picks the sockjs base for each HTTP request of a raw xhr DDP session (n counts from 0). */
export type BasePicker = (step: RawXhrStep, n: number) => string;

export interface RawXhrDdpOptions extends RawHttpOptions {
  serverId?: string;
  sessionId?: string;
}

/**
 * DDP over hand-driven xhr-polling. Each HTTP request (open, every xhr_send, every poll) asks
 * `pickBase` where to go. `requests` records where each one went.
 */
export class RawXhrDdpSession {
  readonly poll: RawSockjsPoll;
  readonly requests: Array<{ step: RawXhrStep; base: string }> = [];
  sessionId = '';
  private readonly inbox: Record<string, unknown>[] = [];
  private closedFrame: SockjsFrame | undefined;
  private n = 0;

  constructor(
    private readonly pickBase: BasePicker,
    private readonly opts: RawXhrDdpOptions = {},
  ) {
    this.poll = rawSockjsPoll('', opts.serverId, opts.sessionId);
  }

  private base(step: RawXhrStep): string {
    const base = this.pickBase(step, this.n++);
    this.requests.push({ step, base });
    return base;
  }

  private async send(msg: Record<string, unknown>): Promise<void> {
    const status = await this.poll.xhrSend([JSON.stringify(msg)], this.base('send'), this.opts);
    if (status !== 204) throw new Error(`xhr_send answered HTTP ${status}`);
  }

  /** Polls until a message satisfies `match`; earlier non-matching messages stay in the inbox. */
  private async waitFor(match: (msg: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    for (;;) {
      const index = this.inbox.findIndex(match);
      if (index >= 0) return this.inbox.splice(index, 1)[0] ?? {};
      if (this.closedFrame) throw new Error(`sockjs session closed: ${JSON.stringify(this.closedFrame)}`);
      const frame = await this.poll.xhrPoll(this.base('poll'), this.opts);
      if (frame.type === 'a') this.inbox.push(...frame.messages.map(parseDdp));
      if (frame.type === 'c') this.closedFrame = frame;
    }
  }

  /** Opens the sockjs session and does the DDP handshake; resolves with the DDP session id. */
  async connect(): Promise<string> {
    await this.poll.xhrOpen(this.base('open'), this.opts);
    await this.send({ ...DDP_CONNECT_MESSAGE });
    const reply = await this.waitFor((m) => m.msg === 'connected' || m.msg === 'failed');
    if (reply.msg !== 'connected' || typeof reply.session !== 'string') throw new Error(`DDP connect failed: ${JSON.stringify(reply)}`);
    this.sessionId = reply.session;
    return this.sessionId;
  }

  async call(method: string, ...params: unknown[]): Promise<unknown> {
    const id = `raw${this.n}`;
    await this.send({ msg: 'method', id, method, params });
    const reply = await this.waitFor((m) => m.msg === 'result' && m.id === id);
    if (reply.error !== undefined) throw ddpErrorFrom('method failed', reply.error);
    return reply.result;
  }
}

function parseDdp(text: string): Record<string, unknown> {
  try {
    const parsed: unknown = JSON.parse(text);
    return isRecord(parsed) ? parsed : {};
  } catch {
    return {};
  }
}

/** Convenience: a raw xhr DDP session already connected. */
export async function rawXhrDdp(pickBase: BasePicker, opts: RawXhrDdpOptions = {}): Promise<RawXhrDdpSession> {
  const session = new RawXhrDdpSession(pickBase, opts);
  await session.connect();
  return session;
}
