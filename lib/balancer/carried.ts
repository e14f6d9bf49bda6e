/**
 * The member's side of a translated polling session (translate.ts is the entry's side): a peer
 * that terminates a client's SockJS polling opens one websocket here per session, authenticated by
 * a hop header like any proxied request, and the app gets it as one more SockJS connection — the
 * `connection` event of its own sockjs server, with a connection object that behaves like
 * sockjs's (write, close, 'data', 'close', headers, remoteAddress, protocol). Meteor's stream
 * server and DDP sessions take it as they take any SockJS client, so the member pays websocket
 * costs for the session instead of two HTTP requests per DDP call; it works with
 * DISABLE_WEBSOCKETS too, since the app's own websocket endpoint is not involved.
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { randomUUID } from 'node:crypto';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import type { ClientView } from './hop';

/** What the balancer needs of the app's sockjs server (sockjs 0.3.24 `Server`). */
export interface SockjsServerLike {
  emit(event: 'connection', conn: unknown): boolean;
  on(event: 'connection', listener: (conn: SockjsConnectionLike) => void): unknown;
  middleware(): (req: IncomingMessage, res: import('node:http').ServerResponse) => boolean;
  readonly options: Readonly<Record<string, unknown>>;
}

/** A sockjs connection as the balancer drives it (sockjs 0.3.24 `SockJSConnection`). */
export interface SockjsConnectionLike {
  write(data: string): boolean;
  close(code?: number, reason?: string): boolean;
  on(event: 'data', listener: (message: string) => void): unknown;
  on(event: 'close', listener: () => void): unknown;
  readonly _session?: { readonly session_id?: string | null } | null;
}

/** The sockjs server `s` if it has the shape the balancer drives, else null. */
export function sockjsServerOf(s: unknown): SockjsServerLike | null {
  const o = s as Partial<Record<'emit' | 'on' | 'middleware' | 'options', unknown>> | null;
  if (typeof o !== 'object' || o === null) return null;
  if (typeof o.emit !== 'function' || typeof o.on !== 'function' || typeof o.middleware !== 'function') return null;
  if (typeof o.options !== 'object' || o.options === null) return null;
  return s as SockjsServerLike;
}

/** The query parameter of the carry URL naming the client's sockjs protocol ('xhr-polling', ...). */
export const CARRY_PROTOCOL_PARAM = 't';
/** Largest DDP message carried (faye-websocket's default, which Meteor's websockets use). */
export const CARRY_MAX_PAYLOAD = 64 * 1024 * 1024;
/** Carried sessions one member holds at most; past it, new ones are refused (503) and the entry relays. */
export const MAX_CARRIED = 100_000;

/** The request headers sockjs copies onto a connection (transport.js decorateConnection). */
export const SOCKJS_HEADERS = [
  'referer', 'x-client-ip', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-port', 'x-cluster-client-ip', 'via',
  'x-real-ip', 'x-forwarded-proto', 'x-ssl', 'dnt', 'host', 'user-agent', 'accept-language',
] as const;

const PROTOCOLS = new Set(['xhr-polling', 'xhr-streaming', 'eventsource', 'htmlfile', 'jsonp-polling']);

/** A carried session as the app sees it: shaped like sockjs's SockJSConnection. */
export class CarriedConnection extends EventEmitter {
  readonly id = randomUUID();
  readonly headers: Record<string, string> = {};
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  readonly address: { address?: string; port?: number } | undefined;
  readonly url: string;
  readonly pathname: string;
  readonly protocol: string;
  readonly prefix: string;
  /** Meteor's setWebsocketTimeout reads `_session.recv` (only for websocket protocols). */
  readonly _session = { recv: null };
  #ws: WebSocket;
  #state: 1 | 2 | 3 = 1;

  constructor(ws: WebSocket, req: IncomingMessage, client: ClientView, prefix: string) {
    super();
    this.#ws = ws;
    for (const name of SOCKJS_HEADERS) {
      const v = req.headers[name];
      if (typeof v === 'string') this.headers[name] = v;
    }
    // The client as its entry saw it (signed in the hop header), not the peer that carries it.
    if (client.forwardedFor === null) delete this.headers['x-forwarded-for'];
    else this.headers['x-forwarded-for'] = client.forwardedFor;
    this.remoteAddress = client.remoteAddress ?? undefined;
    this.remotePort = undefined;
    this.address = undefined;
    this.url = req.url ?? '';
    const q = this.url.indexOf('?');
    this.pathname = q === -1 ? this.url : this.url.slice(0, q);
    const protocol = new URLSearchParams(q === -1 ? '' : this.url.slice(q + 1)).get(CARRY_PROTOCOL_PARAM) ?? '';
    this.protocol = PROTOCOLS.has(protocol) ? protocol : 'xhr-polling';
    this.prefix = prefix;
    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (this.#state === 1 && !isBinary) this.emit('data', rawText(data));
    });
    ws.on('close', () => this.closed());
    ws.on('error', () => ws.terminate());
  }

  /** sockjs readyState: 1 open, 2 closing, 3 closed. */
  get readyState(): number {
    return this.#state;
  }

  write(data: string): boolean {
    if (this.#state !== 1) return false;
    this.#ws.send(String(data));
    return true;
  }

  end(data?: string): boolean {
    if (data !== undefined) this.write(data);
    this.close();
    return true;
  }

  close(code = 1000, reason = 'Normal closure'): boolean {
    if (this.#state !== 1) return false;
    this.#state = 2;
    this.#ws.close(wsCloseCode(code), reason.slice(0, 120));
    return true;
  }

  destroy(): void {
    this.end();
    this.removeAllListeners();
  }

  override toString(): string {
    return `<CarriedConnection ${this.id}>`;
  }

  private closed(): void {
    if (this.#state === 3) return;
    this.#state = 3;
    this.emit('end');
    this.emit('close');
  }
}

/** The carried sessions this member holds, for its gateway. */
export class CarriedSessions {
  readonly #wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: CARRY_MAX_PAYLOAD, clientTracking: false });
  readonly #open = new Set<CarriedConnection>();
  readonly #app: SockjsServerLike;
  readonly #prefix: string;
  readonly #onError: (err: unknown) => void;

  constructor(app: SockjsServerLike, onError: (err: unknown) => void) {
    this.#app = app;
    this.#prefix = typeof app.options.prefix === 'string' ? app.options.prefix : '/sockjs';
    this.#onError = onError;
  }

  get size(): number {
    return this.#open.size;
  }

  /** Completes a verified carry upgrade and hands the session to the app as a sockjs connection. */
  accept(req: IncomingMessage, socket: Socket, head: Buffer, client: ClientView): boolean {
    if (this.#open.size >= MAX_CARRIED) return false;
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      // ws has set TCP_NODELAY and lifted the HTTP server's idle timeout (Meteor's 5 s) on the socket.
      ws.on('error', () => ws.terminate());
      const conn = new CarriedConnection(ws, req, client, this.#prefix);
      this.#open.add(conn);
      conn.once('close', () => this.#open.delete(conn));
      try {
        this.#app.emit('connection', conn);
      } catch (err) {
        // The app's connection handler threw: that session is unusable, the member is not.
        this.#onError(err);
        conn.close(1011, 'Internal error');
      }
    });
    return true;
  }

  close(): void {
    for (const conn of this.#open) conn.close(1001, 'Going away');
    this.#open.clear();
  }
}

/** A close code a websocket may send (RFC 6455 7.4: not 1004-1006, 1015 or unassigned ones); else 1000. */
export function wsCloseCode(code: number): number {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999) ? code : 1000;
}

/** A text frame's payload as a string (ws hands over a Buffer, or fragments as a Buffer array). */
export function rawText(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}
