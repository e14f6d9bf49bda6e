/**
 * One exchange with a client, whichever way it arrived: an HTTP request (req, res) or a websocket
 * upgrade (req, socket, head). The gateway acts on it in three ways only: reply (a status and a
 * one-line message), serve here (the app's own listeners), or forward to a peer.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { applyClientView, type ClientView } from './hop';
import type { Forwarder, ProxyAttempt, ProxyFailure } from './proxy';

export type ServeRequest = (req: IncomingMessage, res: ServerResponse) => void;
export type ServeUpgrade = (req: IncomingMessage, socket: Socket, head: Buffer) => void;

interface ExchangeBase {
  readonly req: IncomingMessage;
  /** Answers with `status` and a one-line message, and closes. */
  reply(status: number, message: string): void;
  /**
   * Hands the exchange to the app's listeners; `client` (from a verified hop) is the address the
   * app should see instead of the peer's.
   */
  serveHere(client: ClientView | null): void;
  /** Forwards to a peer; `onFail` runs at most once, `onAnswer` when the peer answered (or opened the websocket). */
  forward(forwarder: Forwarder, attempt: ProxyAttempt, onFail: ProxyFailure, onAnswer: () => void): void;
  /** Runs `fn` once when the client's side closes. */
  onClose(fn: () => void): void;
}

export class WebExchange implements ExchangeBase {
  readonly kind = 'request';
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  private readonly serve: ServeRequest;

  constructor(req: IncomingMessage, res: ServerResponse, serve: ServeRequest) {
    this.req = req;
    this.res = res;
    this.serve = serve;
  }

  reply(status: number, message: string): void {
    reply(this.res, status, message);
  }

  serveHere(client: ClientView | null): void {
    if (client !== null) {
      const restore = applyClientView(this.req, client);
      this.res.once('close', restore);
    }
    this.serve(this.req, this.res);
  }

  forward(forwarder: Forwarder, attempt: ProxyAttempt, onFail: ProxyFailure, onAnswer: () => void): void {
    forwarder.web(this.req, this.res, attempt, onFail, onAnswer);
  }

  onClose(fn: () => void): void {
    this.res.once('close', fn);
  }
}

export class UpgradeExchange implements ExchangeBase {
  readonly kind = 'upgrade';
  readonly req: IncomingMessage;
  readonly socket: Socket;
  readonly head: Buffer;
  private readonly serve: ServeUpgrade;

  constructor(req: IncomingMessage, socket: Socket, head: Buffer, serve: ServeUpgrade) {
    this.req = req;
    this.socket = socket;
    this.head = head;
    this.serve = serve;
  }

  reply(status: number, message: string): void {
    rejectUpgrade(this.socket, status, message);
  }

  serveHere(client: ClientView | null): void {
    if (client !== null) applyClientView(this.req, client);
    this.serve(this.req, this.socket, this.head);
  }

  forward(forwarder: Forwarder, attempt: ProxyAttempt, onFail: ProxyFailure, onAnswer: () => void): void {
    forwarder.upgrade(this.req, this.socket, this.head, attempt, onFail, onAnswer);
  }

  onClose(fn: () => void): void {
    this.socket.once('close', fn);
  }
}

export type Exchange = WebExchange | UpgradeExchange;

export function reply(res: ServerResponse, status: number, message: string): void {
  if (res.headersSent) return void res.destroy();
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store', Connection: 'close' });
  res.end(message + '\n');
}

/**
 * Answers with a body known in full: sized (`extra` header pairs plus Content-Length) and in one
 * write. `writeHead` before `end(body)` without a length makes Node chunk the body.
 */
export function sendSized(res: ServerResponse, status: number, extra: string[], body: string): void {
  extra.push('Content-Length', String(Buffer.byteLength(body)));
  res.writeHead(status, extra);
  res.end(body);
}

const STATUS_TEXT: Readonly<Record<number, string>> = { 400: 'Bad Request', 403: 'Forbidden', 404: 'Not Found', 414: 'URI Too Long', 502: 'Bad Gateway', 503: 'Service Unavailable' };

export function rejectUpgrade(socket: Socket, status: number, message: string): void {
  if (socket.destroyed) return;
  const body = message + '\n';
  socket.end(`HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}
