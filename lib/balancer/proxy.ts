/**
 * Forwarding to a peer, by hand on node:http with a keep-alive agent per scheme: HTTP requests
 * (every xhr poll and send of a proxied session) with as little per-request work as possible, and
 * websocket upgrades piped, so that a failed connect can be retried on another peer before any
 * byte reached the client.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import net, { isIP } from 'node:net';
import { HOP_HEADER } from './hop';
import { hasBody } from './retry';

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
  readonly #httpAgent = new IdleAgent({ keepAlive: true, maxFreeSockets: Infinity, scheduling: 'lifo' });
  readonly #httpsAgent = new IdleHttpsAgent({ keepAlive: true, maxFreeSockets: Infinity, scheduling: 'lifo' });
  readonly #upgrades = new Set<Socket>();

  /**
   * Forwards one HTTP request and relays the peer's answer. Lean on purpose (every xhr poll and
   * send of a proxied session comes through here): the client's raw headers are passed on as one
   * array (written in one go, no per-header setHeader), a bodiless request is ended at once
   * instead of piped, and the answer's raw headers go out with one writeHead.
   * `onAnswer` runs when the peer's response headers arrive; `onFail` at most once.
   */
  web(req: IncomingMessage, res: ServerResponse, attempt: ProxyAttempt, onFail: ProxyFailure, onAnswer: () => void = () => undefined): void {
    const { target } = attempt;
    const secure = target.protocol === 'https:';
    const host = target.hostname.startsWith('[') ? target.hostname.slice(1, -1) : target.hostname;
    const options: https.RequestOptions = {
      host,
      port: target.port || (secure ? 443 : 80),
      method: req.method,
      path: req.url,
      headers: outgoingHeaders(req.rawHeaders, attempt.headers),
      agent: attempt.fresh ? false : secure ? this.#httpsAgent : this.#httpAgent,
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
      writeAnswerHead(res, answer, attempt.setCookie ?? null);
      relay(answer, res);
    });
    if (attempt.body !== null) {
      upstream.end(attempt.body.length > 0 ? attempt.body : undefined);
    } else if (hasBody(req.headers)) {
      req.on('error', fail);
      req.pipe(upstream);
    } else {
      upstream.end();
    }
  }

  upgrade(req: IncomingMessage, socket: Socket, head: Buffer, attempt: ProxyAttempt, onFail: ProxyFailure, onOpen: () => void): void {
    const { target } = attempt;
    if (target.protocol === 'http:') return this.upgradeRaw(req, socket, head, attempt, onFail, onOpen);
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
      this.tunnel(peer, socket);
      socket.write(['HTTP/1.1 101 Switching Protocols', ...headerLines(res.rawHeaders, false)].join('\r\n') + '\r\n\r\n');
      if (peerHead.length > 0) socket.write(peerHead);
      if (head.length > 0) peer.write(head);
      peer.pipe(socket).pipe(peer);
      onOpen();
    });
    upstream.end();
  }

  /**
   * An upgrade to a plain-http peer, on a raw socket: the request head written in one go, the
   * peer's answer head read up to its blank line and passed on as it came, then both sockets piped.
   * node:http's client would build a ClientRequest and parse the answer with a new parser on every
   * websocket set-up: about a sixth of what a forced-hop entry spends per set-up (perf, bench --cost).
   * Anything but a 101 (a 404 for a dead session, a 403) is relayed as it came and the client's
   * socket closed with the peer's, which ends an upgrade it didn't take.
   */
  private upgradeRaw(req: IncomingMessage, socket: Socket, head: Buffer, attempt: ProxyAttempt, onFail: ProxyFailure, onOpen: () => void): void {
    const { target } = attempt;
    const host = target.hostname.startsWith('[') ? target.hostname.slice(1, -1) : target.hostname;
    const peer = net.connect({ host, port: Number(target.port || 80), noDelay: true });
    let settled = false;
    let answer: Buffer | null = null;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      peer.destroy();
      onFail(err, false);
    };
    // Before the answer: a failed try. After a relayed refusal: a peer that leaves the connection
    // open idle is closed (with the client's), not kept forever. A switched tunnel has no limit.
    peer.setTimeout(UPGRADE_TIMEOUT_MS, () => {
      if (settled) peer.destroy();
      else fail(Object.assign(new Error('upstream upgrade timed out'), { code: 'ETIMEDOUT' }));
    });
    peer.on('error', fail);
    // The client left before the peer answered: nothing to relay nor retry, drop the peer's side.
    const gone = (): void => {
      if (settled) return;
      settled = true;
      peer.destroy();
    };
    socket.once('close', gone);
    peer.write(upgradeHead(req, attempt.headers));
    if (head.length > 0) peer.write(head);
    const onData = (chunk: Buffer): void => {
      answer = answer === null ? chunk : Buffer.concat([answer, chunk]);
      const end = answer.indexOf(HEAD_END);
      if (end === -1) {
        if (answer.length > MAX_ANSWER_HEAD) fail(Object.assign(new Error('upstream answer head too large'), { code: 'EPROTO' }));
        return;
      }
      peer.off('data', onData);
      settled = true;
      peer.off('error', fail);
      socket.off('close', gone);
      const switched = answer.toString('latin1', 0, 13) === 'HTTP/1.1 101 ';
      if (switched) this.tunnel(peer, socket);
      else closeTogether(peer, socket);
      socket.write(answer);
      answer = null;
      peer.pipe(socket).pipe(peer);
      if (switched) onOpen();
    };
    peer.on('data', onData);
  }

  /** A switched websocket's two sockets: no idle limit, no delay, kept alive, closed together, tracked for drains. */
  private tunnel(peer: Socket, socket: Socket): void {
    for (const s of [socket, peer]) {
      s.setTimeout(0);
      s.setNoDelay(true);
      s.setKeepAlive(true, 30_000);
    }
    closeTogether(peer, socket);
    this.#upgrades.add(peer);
    peer.on('close', () => this.#upgrades.delete(peer));
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
    this.#httpAgent.destroy();
    this.#httpsAgent.destroy();
  }
}

/**
 * Kept-alive connections to peers are dropped after this long idle: below the 5 s after which
 * Node (and so Meteor) closes an idle keep-alive connection, so a request is rarely written on a
 * connection the peer is closing (and one that is gets replayed: see the balancer).
 */
export const PEER_IDLE_MS = 4000;

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- TypeScript requires exactly this for a mixin base.
type AgentClass = new (...args: any[]) => http.Agent;

/**
 * An agent (http or https) whose free sockets time out after PEER_IDLE_MS (the agent then destroys
 * them); in use, the request's own timeout applies.
 */
function idleAfterUse<B extends AgentClass>(Base: B) {
  return class extends Base {
    // Node returns whether the socket is kept (its types say void).
    override keepSocketAlive(socket: Socket): void {
      const kept: unknown = super.keepSocketAlive(socket);
      if (kept === true) socket.setTimeout(PEER_IDLE_MS);
      return kept as void;
    }

    override reuseSocket(socket: Socket, req: http.ClientRequest): void {
      // A request with a timeout of its own gets it set on the socket by the agent right after this.
      if (!(req as { timeout?: number }).timeout) socket.setTimeout(0);
      super.reuseSocket(socket, req);
    }
  };
}

const IdleAgent = idleAfterUse(http.Agent);
const IdleHttpsAgent = idleAfterUse(https.Agent);

/** A tunnel's two sockets: either one's error or close closes both. */
function closeTogether(a: Socket, b: Socket): void {
  const close = (): void => {
    a.destroy();
    b.destroy();
  };
  for (const s of [a, b]) {
    s.on('error', close);
    s.on('close', close);
  }
}

/** How long a peer may take to answer an upgrade (connect included). */
const UPGRADE_TIMEOUT_MS = 10_000;
/** The blank line that ends an HTTP head. */
const HEAD_END = Buffer.from('\r\n\r\n');
/** Longest answer head read from a peer. */
const MAX_ANSWER_HEAD = 16 * 1024;

/**
 * An upgrade request's head for the peer: the client's request line and headers (as parsed, the
 * client's own hop header already removed by the balancer) with `extra` (the hop header) set.
 */
function upgradeHead(req: IncomingMessage, extra: Readonly<Record<string, string>>): string {
  let h = `${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/1.1\r\n`;
  const headers = req.headers;
  for (const name in headers) {
    if (name in extra) continue;
    const v = headers[name];
    if (v === undefined) continue;
    if (Array.isArray(v)) for (const x of v) h += `${name}: ${x}\r\n`;
    else h += `${name}: ${v}\r\n`;
  }
  for (const name in extra) h += `${name}: ${extra[name] as string}\r\n`;
  return `${h}\r\n`;
}

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
 * The request's raw header pairs for the peer, plus `extra`. Transfer-Encoding stays (the body is
 * relayed as it came); a client's own hop header never does (the balancer has already judged and
 * removed it from `req.headers`, not from the raw list).
 */
function outgoingHeaders(raw: readonly string[], extra: Readonly<Record<string, string>>): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if ((HOP_BY_HOP.has(lower) && lower !== 'transfer-encoding') || lower === HOP_HEADER) continue;
    out.push(name, raw[i + 1] as string);
  }
  for (const name in extra) out.push(name, extra[name] as string);
  return out;
}

/**
 * The peer's status and headers, written once; connection-level ones are dropped (Node frames the
 * answer for the client's own connection) and `setCookie` is added to the peer's own cookies.
 */
function writeAnswerHead(res: ServerResponse, answer: IncomingMessage, setCookie: string | null): void {
  const raw = answer.rawHeaders;
  const status = answer.statusCode ?? 502;
  if (res.getHeaderNames().length > 0) {
    // Headers set on the response before (none today): Node would merge pairs with setHeader and
    // lose repeated ones, so set them by name, repeated ones as lists.
    for (const [name, value] of Object.entries(answer.headers)) {
      if (value !== undefined && !HOP_BY_HOP.has(name)) res.setHeader(name, value);
    }
    if (setCookie !== null) res.appendHeader('set-cookie', setCookie);
    res.writeHead(status, answer.statusMessage);
    return;
  }
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    if (HOP_BY_HOP.has(name.toLowerCase())) continue;
    out.push(name, raw[i + 1] as string);
  }
  if (setCookie !== null) out.push('Set-Cookie', setCookie);
  res.writeHead(status, answer.statusMessage, out);
}

/**
 * Relays the peer's answer body as it comes (streaming transports stay unbuffered), holding each
 * chunk until the next one, the end, or the next turn of the event loop: an answer that arrives
 * whole (a poll's frame and its end) goes out with its headers in one write instead of two.
 */
function relay(answer: IncomingMessage, res: ServerResponse): void {
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
