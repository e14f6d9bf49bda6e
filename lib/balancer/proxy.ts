/**
 * Forwarding to a peer. HTTP goes through http-proxy-3 with a keep-alive agent per scheme;
 * websocket upgrades are piped by hand because http-proxy-3 destroys the client socket when the
 * upstream connect fails, and we must be able to retry another peer before any byte reached
 * the client.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { createProxyServer } from 'http-proxy-3';

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
  readonly #proxy = createProxyServer({ xfwd: false, ws: false, prependPath: false });
  readonly #httpAgent = new IdleAgent({ keepAlive: true, maxFreeSockets: 256, scheduling: 'lifo' });
  readonly #httpsAgent = new IdleHttpsAgent({ keepAlive: true, maxFreeSockets: 256, scheduling: 'lifo' });
  readonly #upgrades = new Set<Socket>();
  readonly #answered = new WeakMap<IncomingMessage, () => void>();
  readonly #cookies = new WeakMap<IncomingMessage, string>();

  constructor() {
    // A proxy error without a callback would be emitted here; never let it become an uncaught 'error'.
    this.#proxy.on('error', () => undefined);
    this.#proxy.on('proxyRes', (proxyRes: IncomingMessage, req: IncomingMessage) => {
      // Emitted before http-proxy-3 copies the peer's headers onto the response (setHeader, which
      // would replace a cookie set earlier): add ours to the peer's own.
      const cookie = this.#cookies.get(req);
      if (cookie !== undefined) {
        this.#cookies.delete(req);
        proxyRes.headers['set-cookie'] = [...(proxyRes.headers['set-cookie'] ?? []), cookie];
      }
      const cb = this.#answered.get(req);
      this.#answered.delete(req);
      cb?.();
    });
  }

  /** `onAnswer` runs when the peer's response headers arrive. */
  web(req: IncomingMessage, res: ServerResponse, attempt: ProxyAttempt, onFail: ProxyFailure, onAnswer: () => void = () => undefined): void {
    this.#answered.set(req, onAnswer);
    if (attempt.setCookie) this.#cookies.set(req, attempt.setCookie);
    const secure = attempt.target.protocol === 'https:';
    this.#proxy.web(req, res, {
      target: attempt.target.origin,
      agent: attempt.fresh ? false : secure ? this.#httpsAgent : this.#httpAgent,
      headers: attempt.headers,
      proxyTimeout: attempt.timeoutMs || undefined,
      buffer: attempt.body === null ? undefined : Readable.from(attempt.body.length > 0 ? [attempt.body] : []),
      secure: true,
    }, (err: Error) => onFail(err, res.headersSent));
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
    this.#httpAgent.destroy();
    this.#httpsAgent.destroy();
    this.#proxy.close();
  }
}

/**
 * Kept-alive connections to peers are dropped after this long idle: below the 5 s after which
 * Node (and so Meteor) closes an idle keep-alive connection, so a request is rarely written on a
 * connection the peer is closing (and one that is gets replayed: see the balancer).
 */
export const PEER_IDLE_MS = 4000;

/** An agent whose free sockets time out after PEER_IDLE_MS (the agent then destroys them); in use, the request's own timeout applies. */
class IdleAgent extends http.Agent {
  // Node returns whether the socket is kept (its types say void).
  override keepSocketAlive(socket: Socket): void {
    const kept: unknown = super.keepSocketAlive(socket);
    if (kept === true) socket.setTimeout(PEER_IDLE_MS);
    return kept as void;
  }

  override reuseSocket(socket: Socket, req: http.ClientRequest): void {
    socket.setTimeout(0);
    super.reuseSocket(socket, req);
  }
}

class IdleHttpsAgent extends https.Agent {
  // Node returns whether the socket is kept (its types say void).
  override keepSocketAlive(socket: Socket): void {
    const kept: unknown = super.keepSocketAlive(socket);
    if (kept === true) socket.setTimeout(PEER_IDLE_MS);
    return kept as void;
  }

  override reuseSocket(socket: Socket, req: http.ClientRequest): void {
    socket.setTimeout(0);
    super.reuseSocket(socket, req);
  }
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
