/**
 * Translate instead of relay: the entry's side of a polling session it carries to a peer member
 * (carried.ts is the member's side). The entry terminates the client's SockJS polling itself, with
 * a second sockjs server built like the app's own (same sockjs module, same options), and carries
 * the session's DDP messages to the member over one websocket, opened before the session's first
 * poll is answered. Relaying costs two proxied HTTP requests per DDP call, each parsed, signed,
 * verified and parsed again by the member; carried, a call costs the member one websocket frame
 * each way.
 *
 * The session's sockjs state lives here, so its path names this balancer (`via`, info.ts): other
 * balancers send its requests here. When the member's side closes, the client's session is closed
 * (a close frame: it reconnects); when the client's session ends, the websocket is closed.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { WebSocket, type RawData } from 'ws';
import { CARRY_MAX_PAYLOAD, rawText, wsCloseCode, type SockjsConnectionLike, type SockjsServerLike } from './carried';
import type { Tunnel } from './proxy';

/** Sessions carried at most; past it a polling session is relayed as before. */
export const MAX_TRANSLATED = 100_000;
/** An opened websocket whose session sockjs never announced (e.g. the id belonged to another session) is closed after this. */
const BIND_TIMEOUT_MS = 30_000;
const HANDSHAKE_TIMEOUT_MS = 10_000;

interface Binding {
  readonly sessionId: string;
  readonly ws: WebSocket;
  /** The client's sockjs connection, once sockjs announced it. */
  conn: SockjsConnectionLike | null;
  /** The member's messages that arrived before the connection was announced. */
  readonly early: string[];
  /** The websocket is open: requests go to sockjs. */
  ready: boolean;
  /** Requests of the session that arrived while the websocket was opening. */
  readonly waiting: Array<readonly [IncomingMessage, ServerResponse]>;
  /** The member's side closed before sockjs announced the connection. */
  closedCode: number | null;
  timer: NodeJS.Timeout | null;
}

/** Where and how to open the websocket to the member. */
export interface CarryTarget {
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
}

export class Translator {
  readonly #server: SockjsServerLike;
  readonly #handler: (req: IncomingMessage, res: ServerResponse) => boolean;
  readonly #bindings = new Map<string, Binding>();

  /** `app`: the app's sockjs server; this one is built by the same constructor with the same options. */
  constructor(app: SockjsServerLike) {
    const Server = (Object.getPrototypeOf(app) as { constructor: new (options: unknown) => SockjsServerLike }).constructor;
    this.#server = new Server({ ...app.options });
    this.#handler = this.#server.middleware();
    this.#server.on('connection', (conn) => this.bind(conn));
  }

  /** Builds a translator for the app's sockjs server, or null if it can't be (not a sockjs 0.3 server). */
  static for(app: SockjsServerLike): Translator | null {
    try {
      return new Translator(app);
    } catch {
      return null;
    }
  }

  get size(): number {
    return this.#bindings.size;
  }

  /** This balancer carries `sessionId` (or is opening it). */
  has(sessionId: string): boolean {
    return this.#bindings.has(sessionId);
  }

  /** Room for one more carried session. */
  get full(): boolean {
    return this.#bindings.size >= MAX_TRANSLATED;
  }

  /** A request of a session carried here: to sockjs (or queued while its websocket opens). */
  serve(sessionId: string, req: IncomingMessage, res: ServerResponse): void {
    const b = this.#bindings.get(sessionId);
    if (b !== undefined && !b.ready) return void b.waiting.push([req, res]);
    this.toSockjs(req, res);
  }

  /**
   * Opens the websocket for a new carried session, then lets sockjs answer its first request.
   * `onFail` if the websocket can't be opened (nothing reached the client: the caller may try
   * another member), with `answered` when the member answered the upgrade with plain HTTP (a
   * member that takes no carried sessions, e.g. an older version: relay to it instead); `onOpen`
   * once it is open.
   */
  open(sessionId: string, req: IncomingMessage, res: ServerResponse, target: CarryTarget, onFail: (err: Error, answered: boolean) => void, onOpen: () => void): void {
    const ws = new WebSocket(target.url, {
      headers: target.headers, perMessageDeflate: false, handshakeTimeout: HANDSHAKE_TIMEOUT_MS, maxPayload: CARRY_MAX_PAYLOAD,
    });
    const b: Binding = { sessionId, ws, conn: null, early: [], ready: false, waiting: [[req, res]], closedCode: null, timer: null };
    this.#bindings.set(sessionId, b);
    // The client left while the websocket opened: don't keep a session nobody polls.
    const abandon = (): void => {
      if (!b.ready && b.waiting.every(([, r]) => r.destroyed)) this.drop(b, 1000);
    };
    res.once('close', abandon);
    ws.on('open', () => {
      res.off('close', abandon);
      b.ready = true;
      onOpen();
      b.timer = setTimeout(() => {
        if (b.conn === null) this.drop(b, 1000);
      }, BIND_TIMEOUT_MS);
      b.timer.unref();
      for (const [rq, rs] of b.waiting.splice(0)) if (!rs.destroyed) this.toSockjs(rq, rs);
    });
    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (isBinary) return;
      const text = rawText(data);
      if (b.conn !== null) b.conn.write(text);
      else b.early.push(text);
    });
    const failed = (err: Error, answered: boolean): void => {
      res.off('close', abandon);
      if (this.#bindings.get(sessionId) === b) this.#bindings.delete(sessionId);
      const [first, ...rest] = b.waiting.splice(0);
      for (const [, rs] of rest) rs.destroy();
      if (first !== undefined && !first[1].destroyed) onFail(err, answered);
    };
    ws.on('unexpected-response', (upgradeReq: { destroy(): void }, answer: IncomingMessage) => {
      answer.resume();
      upgradeReq.destroy();
      failed(new Error(`carry upgrade answered HTTP ${answer.statusCode ?? 0}`), true);
    });
    ws.on('error', (err: Error) => {
      if (b.ready) return void ws.terminate();
      failed(err, false);
    });
    ws.on('close', (code: number) => {
      if (!b.ready) return;
      if (b.conn !== null) b.conn.close(closeCodeFor(code), 'Member closed the session');
      else b.closedCode = code;
    });
  }

  /** The carried sessions, each closable once, for a drain (clients reconnect through a live entry). */
  tunnels(): Tunnel[] {
    return [...this.#bindings.values()].map((b) => ({
      get open(): boolean {
        return b.ws.readyState === WebSocket.OPEN;
      },
      close: () => this.drop(b, 1001),
    }));
  }

  close(): void {
    for (const b of [...this.#bindings.values()]) this.drop(b, 1001);
  }

  private toSockjs(req: IncomingMessage, res: ServerResponse): void {
    if (!this.#handler(req, res)) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not a sockjs request');
    }
  }

  /** sockjs announced a session opened by this server: wire it to its websocket. */
  private bind(conn: SockjsConnectionLike): void {
    const id = conn._session?.session_id ?? null;
    const b = id === null ? undefined : this.#bindings.get(id);
    if (b === undefined || b.conn !== null) return void conn.close(1011, 'No carried session');
    b.conn = conn;
    if (b.timer !== null) clearTimeout(b.timer);
    for (const text of b.early.splice(0)) conn.write(text);
    conn.on('data', (message: string) => {
      if (b.ws.readyState === WebSocket.OPEN) b.ws.send(message);
    });
    conn.on('close', () => {
      if (this.#bindings.get(b.sessionId) === b) this.#bindings.delete(b.sessionId);
      if (b.ws.readyState === WebSocket.OPEN || b.ws.readyState === WebSocket.CONNECTING) b.ws.close(1000);
    });
    if (b.closedCode !== null) conn.close(closeCodeFor(b.closedCode), 'Member closed the session');
  }

  /** Ends a carried session from this side: the client gets a close frame, the member a close. */
  private drop(b: Binding, code: number): void {
    if (b.timer !== null) clearTimeout(b.timer);
    if (b.conn !== null) b.conn.close(code === 1001 ? 3000 : 1000, code === 1001 ? 'Go away!' : 'Normal closure');
    else if (this.#bindings.get(b.sessionId) === b) this.#bindings.delete(b.sessionId);
    if (b.ws.readyState === WebSocket.OPEN) b.ws.close(wsCloseCode(code));
    else if (b.ws.readyState === WebSocket.CONNECTING) b.ws.terminate();
  }
}

/** The close code the client gets when the member's side closed: the member's own, or 1000. */
function closeCodeFor(wsCode: number): number {
  return wsCode === 1000 || (wsCode >= 3000 && wsCode <= 4999) ? wsCode : 1000;
}
