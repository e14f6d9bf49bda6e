/**
 * Forwarding to a peer: HTTP requests (every xhr poll and send of a proxied session) through an
 * undici pool per peer with as little per-request work as possible, websocket upgrades piped by
 * hand on node:http, so that a failed connect can be retried on another peer before any byte
 * reached the client.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import { isIP } from 'node:net';
import { Pool, type Dispatcher } from 'undici';
import { HOP_HEADER } from './hop';

/** Errors that mean "nobody is listening there": the peer is down (passive health check). */
const REFUSALS = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT']);

export function isRefusal(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && REFUSALS.has(code);
}

export interface ProxyAttempt {
  readonly target: URL;
  readonly headers: Readonly<Record<string, string>>;
  /** Upstream inactivity limit; 0 for none (streaming transports). */
  readonly timeoutMs: number;
  /** Send this body instead of piping `req` (it was read first, or consumed by a failed attempt); null: pipe `req`. */
  readonly body: Buffer | null;
  /** Use a new connection rather than a kept-alive one (after a reset on a reused one). */
  readonly fresh: boolean;
  /** A Set-Cookie to add to the peer's answer, next to the ones it sets itself. */
  readonly setCookie?: string | null;
}

/** A proxied websocket, as a drain sees it. */
export interface Tunnel {
  close(): void;
  readonly open: boolean;
}

/** Called with the error and whether the client already got bytes (then it can't be retried). */
export type ProxyFailure = (err: Error, clientTouched: boolean) => void;

export class Forwarder {
  readonly #upgrades = new Set<Socket>();

  readonly #pools = new Map<string, Pool>();

  /**
   * Forwards one HTTP request and relays the peer's answer. Lean on purpose: every xhr poll and
   * send of a proxied session comes through here. Kept-alive connections are undici's, one pool
   * per peer, driven through `dispatch` with one handler object per request (no streams, no
   * per-request listeners on the peer side); the client's raw headers go on as one list, the
   * peer's come back with one writeHead. A fresh connection (after a reset) uses node:http.
   * `onAnswer` runs when the peer's response headers arrive; `onFail` at most once.
   */
  web(req: IncomingMessage, res: ServerResponse, attempt: ProxyAttempt, onFail: ProxyFailure, onAnswer: () => void = noop): void {
    if (attempt.fresh) return this.webFresh(req, res, attempt, onFail, onAnswer);
    const { target } = attempt;
    const host = hostOf(target);
    const relay = new Relay(req, res, attempt.setCookie ?? null, onFail, onAnswer);
    this.pool(target.origin).dispatch({
      path: req.url ?? '/',
      method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
      headers: outgoingHeaders(req.rawHeaders, attempt.headers),
      body: attempt.body !== null ? (attempt.body.length > 0 ? attempt.body : null) : hasBody(req) ? req : null,
      headersTimeout: attempt.timeoutMs,
      bodyTimeout: attempt.timeoutMs,
      // The peer's own name for TLS, not the client's Host header (which undici would use).
      servername: target.protocol === 'https:' && isIP(host) === 0 ? host : undefined,
    } as Dispatcher.DispatchOptions, relay);
  }

  private pool(origin: string): Pool {
    let pool = this.#pools.get(origin);
    if (pool === undefined) {
      // Members come and go; a pool left over for a departed one holds no sockets after PEER_IDLE_MS.
      if (this.#pools.size >= 256) this.closePools();
      pool = new Pool(origin, { keepAliveTimeout: PEER_IDLE_MS, keepAliveMaxTimeout: PEER_IDLE_MS, connectTimeout: 10_000 });
      this.#pools.set(origin, pool);
    }
    return pool;
  }

  private closePools(): void {
    for (const pool of this.#pools.values()) void pool.destroy().catch(noop);
    this.#pools.clear();
  }

  /** The same on a new node:http connection of its own, closed after the answer. */
  private webFresh(req: IncomingMessage, res: ServerResponse, attempt: ProxyAttempt, onFail: ProxyFailure, onAnswer: () => void): void {
    const { target } = attempt;
    const secure = target.protocol === 'https:';
    const host = hostOf(target);
    const options: https.RequestOptions = {
      host,
      port: target.port || (secure ? 443 : 80),
      method: req.method,
      path: req.url,
      headers: outgoingHeaders(req.rawHeaders, attempt.headers, true),
      agent: false,
      timeout: attempt.timeoutMs > 0 ? attempt.timeoutMs : undefined,
    };
    // With raw headers Node can't read the Host header for SNI: name the peer (never an IP: TLS forbids it).
    if (secure && isIP(host) === 0) options.servername = host;
    const upstream = (secure ? https : http).request(options);
    let failed = false;
    const fail = (err: Error): void => {
      // The client went away (its reset surfaces here too): nothing to answer, just stop.
      if (req.socket.destroyed && (err as { code?: unknown }).code === 'ECONNRESET') return void upstream.destroy();
      if (failed) return;
      failed = true;
      onFail(err, res.headersSent);
    };
    upstream.on('error', fail);
    // Set through the options, the agent arms the socket's timer once as it hands the socket over.
    if (attempt.timeoutMs > 0) upstream.on('timeout', () => upstream.destroy());
    // The client left before the answer was complete: drop the peer's side too.
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    upstream.on('response', (answer: IncomingMessage) => {
      onAnswer();
      if (res.headersSent) return void answer.resume();
      writeAnswerHead(res, answer.statusCode ?? 502, answer.statusMessage, answer.rawHeaders, attempt.setCookie ?? null);
      relayStream(answer, res);
    });
    if (attempt.body !== null) {
      upstream.end(attempt.body.length > 0 ? attempt.body : undefined);
    } else if (hasBody(req)) {
      req.on('error', fail);
      req.pipe(upstream);
    } else {
      upstream.end();
    }
  }

  upgrade(req: IncomingMessage, socket: Socket, head: Buffer, attempt: ProxyAttempt, onFail: ProxyFailure, onOpen: () => void): void {
    const { target } = attempt;
    const secure = target.protocol === 'https:';
    const options: https.RequestOptions = {
      host: target.hostname,
      port: target.port || (secure ? 443 : 80),
      method: req.method,
      path: req.url,
      headers: { ...req.headers, ...attempt.headers },
      agent: false,
      timeout: 10_000,
      servername: secure ? target.hostname : undefined,
    };
    const upstream = (secure ? https : http).request(options);
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      upstream.destroy();
      onFail(err, false);
    };
    upstream.on('timeout', () => fail(Object.assign(new Error('upstream upgrade timed out'), { code: 'ETIMEDOUT' })));
    upstream.on('error', fail);
    // The peer answered with a plain HTTP response (e.g. 404 for a dead session): relay it.
    upstream.on('response', (res) => {
      settled = true;
      const lines = [`HTTP/1.1 ${res.statusCode ?? 502} ${res.statusMessage ?? ''}`, ...headerLines(res.rawHeaders, true), 'connection: close'];
      socket.write(lines.join('\r\n') + '\r\n\r\n');
      res.pipe(socket);
      res.on('error', () => socket.destroy());
    });
    upstream.on('upgrade', (res, peer, peerHead) => {
      settled = true;
      upstream.setTimeout(0);
      for (const s of [socket, peer]) {
        s.setTimeout(0);
        s.setNoDelay(true);
        s.setKeepAlive(true, 30_000);
      }
      socket.write(['HTTP/1.1 101 Switching Protocols', ...headerLines(res.rawHeaders, false)].join('\r\n') + '\r\n\r\n');
      if (peerHead.length > 0) socket.write(peerHead);
      if (head.length > 0) peer.write(head);
      peer.pipe(socket).pipe(peer);
      const close = (): void => {
        peer.destroy();
        socket.destroy();
      };
      peer.on('error', close);
      socket.on('error', close);
      peer.on('close', close);
      socket.on('close', close);
      this.#upgrades.add(peer);
      peer.on('close', () => this.#upgrades.delete(peer));
      onOpen();
    });
    upstream.end();
  }

  /** Open proxied websockets (for stats). */
  get openUpgrades(): number {
    return this.#upgrades.size;
  }

  /** The open proxied websockets, each closable (a drain closes them, paced, with the rest). */
  tunnels(): Tunnel[] {
    return [...this.#upgrades].map((s) => ({ close: () => s.destroy(), get open() { return !s.destroyed; } }));
  }

  close(): void {
    for (const s of this.#upgrades) s.destroy();
    this.closePools();
  }
}

/**
 * Kept-alive connections to peers are dropped after this long idle (undici's keep-alive timeout,
 * also when the peer advertises a longer one): below the 5 s after which Node (and so Meteor)
 * closes an idle keep-alive connection, so a request is rarely written on a connection the peer is
 * closing (and one that is gets replayed: see the balancer).
 */
export const PEER_IDLE_MS = 4000;

/** Raw header pairs as lines; `hopByHop` drops the ones that described the upstream connection. */
function headerLines(raw: readonly string[], hopByHop: boolean): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    if (hopByHop && /^(connection|transfer-encoding|keep-alive)$/i.test(name)) continue;
    out.push(`${name}: ${raw[i + 1] as string}`);
  }
  return out;
}

/** Headers that describe one connection, not the request: never passed on (RFC 9110 7.6.1), nor a client's hop header. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'http2-settings']);

/**
 * The request's raw header pairs for the peer, plus `extra`. A client's own hop header never goes
 * on (the balancer has judged it and removed it from `req.headers`, not from the raw list), nor
 * Expect (the client already got its 100 Continue from this server). Transfer-Encoding stays only
 * for node:http (`keepTe`), which then relays the body as it came; undici frames it itself.
 */
function outgoingHeaders(raw: readonly string[], extra: Readonly<Record<string, string>>, keepTe = false): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) && !(keepTe && lower === 'transfer-encoding')) continue;
    if (lower === HOP_HEADER || lower === 'expect') continue;
    out.push(name, raw[i + 1] as string);
  }
  for (const name in extra) out.push(name, extra[name] as string);
  return out;
}

/**
 * The peer's status and headers (raw pairs), written once; connection-level ones are dropped (Node
 * frames the answer for the client's own connection) and `setCookie` is added to the peer's own.
 */
function writeAnswerHead(res: ServerResponse, status: number, message: string | undefined, raw: readonly string[], setCookie: string | null): void {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    if (HOP_BY_HOP.has(name.toLowerCase())) continue;
    out.push(name, raw[i + 1] as string);
  }
  if (setCookie !== null) out.push('Set-Cookie', setCookie);
  if (res.getHeaderNames().length > 0) {
    // Headers set on the response before (none today): writeHead would merge the pairs with
    // setHeader and lose repeated ones (Set-Cookie), so append them one by one.
    for (let i = 0; i + 1 < out.length; i += 2) res.appendHeader(out[i] as string, out[i + 1] as string);
    res.writeHead(status, message);
    return;
  }
  res.writeHead(status, message, out);
}

/**
 * One proxied request as undici's dispatcher drives it: the answer is written to the client as it
 * comes (streaming transports stay unbuffered; a poll's frame and end leave in one write, Node
 * corks the socket within a tick), with back-pressure, and an abort when the client leaves.
 */
class Relay implements Dispatcher.DispatchHandlers {
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  readonly #setCookie: string | null;
  readonly #onFail: ProxyFailure;
  readonly #onAnswer: () => void;
  #abort: ((err: Error) => void) | null = null;
  #resume: (() => void) | null = null;
  #done = false;

  constructor(req: IncomingMessage, res: ServerResponse, setCookie: string | null, onFail: ProxyFailure, onAnswer: () => void) {
    this.#req = req;
    this.#res = res;
    this.#setCookie = setCookie;
    this.#onFail = onFail;
    this.#onAnswer = onAnswer;
    res.on('close', this.clientClosed);
  }

  /** The client left before its answer was complete: stop the peer's side too. */
  readonly clientClosed = (): void => {
    if (this.#res.writableFinished || this.#done) return;
    this.#done = true;
    this.#abort?.(new Error('client closed'));
  };

  readonly drained = (): void => {
    this.#resume?.();
  };

  onConnect(abort: (err?: Error) => void): void {
    this.#abort = abort;
    if (this.#done || this.#req.socket.destroyed) {
      this.#done = true;
      abort(new Error('client closed'));
    }
  }

  onHeaders(status: number, raw: Buffer[], resume: () => void, message: string): boolean {
    if (status < 200) return true;
    this.#resume = resume;
    this.#onAnswer();
    const res = this.#res;
    if (res.headersSent || res.destroyed) return true;
    const headers = new Array<string>(raw.length);
    for (let i = 0; i < raw.length; i++) headers[i] = (raw[i] as Buffer).toString('latin1');
    writeAnswerHead(res, status, message, headers, this.#setCookie);
    return true;
  }

  onData(chunk: Buffer): boolean {
    const res = this.#res;
    if (res.destroyed) return true;
    if (res.write(chunk)) return true;
    res.once('drain', this.drained);
    return false;
  }

  onComplete(): void {
    this.#done = true;
    this.#res.end();
  }

  onError(err: Error): void {
    if (this.#done) return;
    this.#done = true;
    this.#onFail(nodeError(err), this.#res.headersSent);
  }
}

/**
 * Relays the peer's answer body as it comes (streaming transports stay unbuffered), holding each
 * chunk until the next one, the end, or the next turn of the event loop: an answer that arrives
 * whole (a poll's frame and its end) goes out with its headers in one write instead of two.
 */
function relayStream(answer: IncomingMessage, res: ServerResponse): void {
  let held: Buffer | null = null;
  let scheduled = false;
  const flush = (): void => {
    scheduled = false;
    if (held === null || res.destroyed) return;
    const chunk = held;
    held = null;
    if (!res.write(chunk)) {
      answer.pause();
      res.once('drain', () => answer.resume());
    }
  };
  answer.on('data', (chunk: Buffer) => {
    flush();
    held = chunk;
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  });
  answer.on('end', () => {
    const chunk = held;
    held = null;
    if (chunk === null) res.end();
    else res.end(chunk);
  });
  // A peer that dies mid-answer: the client must see a broken response, not a hanging one.
  answer.on('error', () => res.destroy());
  answer.on('close', () => {
    if (!answer.complete) res.destroy();
  });
}

/** undici's error codes as node:http's would be for the same event (what isRefusal and errorKind read). */
const UNDICI_CODES: Readonly<Record<string, readonly [code: string, message: string | null]>> = {
  UND_ERR_SOCKET: ['ECONNRESET', null],
  // A timed-out proxied request is given up like node:http's destroyed one: not the peer's death.
  UND_ERR_HEADERS_TIMEOUT: ['ECONNRESET', 'socket hang up'],
  UND_ERR_BODY_TIMEOUT: ['ECONNRESET', 'socket hang up'],
  UND_ERR_CONNECT_TIMEOUT: ['ETIMEDOUT', null],
  UND_ERR_CLOSED: ['ECONNABORTED', null],
  UND_ERR_DESTROYED: ['ECONNABORTED', null],
};

function nodeError(err: Error): Error {
  const code = (err as { code?: unknown }).code;
  const mapped = typeof code === 'string' ? UNDICI_CODES[code] : undefined;
  if (mapped === undefined) return err;
  return Object.assign(new Error(mapped[1] ?? err.message, { cause: err }), { code: mapped[0] });
}

function hostOf(target: URL): string {
  return target.hostname.startsWith('[') ? target.hostname.slice(1, -1) : target.hostname;
}

function noop(): void {
  // nothing
}

function hasBody(req: IncomingMessage): boolean {
  const len = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (len !== undefined && len !== '0');
}
