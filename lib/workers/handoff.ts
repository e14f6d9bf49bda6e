/**
 * Connection handoff (issue 14). The primary takes over its server's 'connection' event, reads the
 * first request head off each new connection (bounded in size and time), and asks the balancer
 * where that request goes. When it goes to one of this machine's workers, the socket itself is
 * passed to that worker over IPC with the bytes already read: after the first request no byte of
 * the connection passes through the primary. Anything else (the primary's own sessions, pages,
 * health, remote members, heads that don't parse) is put back and served here as before.
 * Correctness never depends on the handoff: a kept-alive connection that later carries another
 * session's request is routed by whichever process holds it, through the usual hop.
 */
import type { ChildProcess } from 'node:child_process';
import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import type { HandoffStats } from '../outcomes';
import { MSG_CONNECTION } from './primary';

export type { HandoffStats } from '../outcomes';

/** The request line and the headers routing reads, from a head read off the wire. */
export interface Head {
  readonly method: string;
  readonly url: string;
  /** Lower-case names; repeated headers joined with ', '. */
  readonly headers: Record<string, string>;
}

/** At most this much is read before deciding; a longer head is served here (the server answers 431). */
export const MAX_HEAD_BYTES = 16 * 1024;
/** A head that takes longer than this to arrive is served here (the server's headersTimeout applies). */
export const HEAD_TIMEOUT_MS = 2000;

const END = Buffer.from('\r\n\r\n');

/** Parses a request head (up to the blank line); null when it is not a well-formed HTTP/1 head. */
export function parseHead(buf: Buffer): Head | null {
  const end = buf.indexOf(END);
  if (end === -1) return null;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^([A-Z]{1,16}) (\S{1,8192}) HTTP\/1\.[01]$/.exec(lines[0] ?? '');
  if (!m) return null;
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return null;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  return { method: m[1] as string, url: m[2] as string, headers };
}


export interface HandoffOptions {
  /** The worker process a request with this head should go to, or null to serve it here. */
  readonly decide: (head: Head) => ChildProcess | null;
  /** Whether any worker is up: when none is, connections go straight to the server. */
  readonly anyUp: () => boolean;
  readonly maxHeadBytes?: number;
  readonly headTimeoutMs?: number;
}

type ConnectionListener = (socket: Socket) => void;

/**
 * Installs the handoff on the primary's server; returns a function that puts the server's own
 * 'connection' listeners back. Only plain HTTP servers: a TLS session can't change process.
 */
export function installHandoff(server: Server, o: HandoffOptions): { stats: () => HandoffStats; remove: () => void } {
  const stats: HandoffStats = { handedOff: 0, kept: 0, unparsed: 0, sendFailed: 0 };
  const own = server.listeners('connection') as ConnectionListener[];
  const maxBytes = o.maxHeadBytes ?? MAX_HEAD_BYTES;
  const timeoutMs = o.headTimeoutMs ?? HEAD_TIMEOUT_MS;

  /** Gives the connection to this process's server, with the bytes already read in front. */
  const keep = (socket: Socket, buf: Buffer): void => {
    stats.kept++;
    for (const l of own) l.call(server, socket);
    if (buf.length > 0) socket.emit('data', buf);
    socket.resume();
  };

  const onConnection = (socket: Socket): void => {
    // No worker to hand to (starting, all restarting): the server takes the connection untouched.
    if (!o.anyUp()) {
      stats.kept++;
      for (const l of own) l.call(server, socket);
      return;
    }
    let buf: Buffer = Buffer.alloc(0);
    let done = false;
    const finish = (): void => {
      done = true;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('end', onEnd);
      socket.pause();
    };
    const onError = (): void => {
      if (!done) finish();
      socket.destroy();
    };
    const onEnd = (): void => {
      if (done) return;
      finish();
      stats.unparsed++;
      keep(socket, buf);
    };
    const onData = (chunk: Buffer): void => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const end = buf.indexOf(END);
      if (end === -1 || end > maxBytes) {
        if (end === -1 && buf.length <= maxBytes) return;
        // Too long to route: here, where the server answers it (431 past its maxHeaderSize).
        finish();
        stats.unparsed++;
        return keep(socket, buf);
      }
      finish();
      const head = parseHead(buf);
      if (head === null) {
        stats.unparsed++;
        return keep(socket, buf);
      }
      let target: ChildProcess | null = null;
      try {
        target = o.decide(head);
      } catch {
        target = null;
      }
      if (target === null || !target.connected) return keep(socket, buf);
      send(socket, buf, target);
    };
    const send = (socket: Socket, bytes: Buffer, target: ChildProcess): void => {
      // Stop reading: whatever the client sends next stays in the kernel for the worker.
      (socket as unknown as { _handle?: { readStop?: () => number } | null })._handle?.readStop?.();
      // Anything the stream buffered after the head goes along with it.
      let extra: Buffer | null;
      while ((extra = socket.read() as Buffer | null) !== null) bytes = Buffer.concat([bytes, extra]);
      try {
        target.send({ type: MSG_CONNECTION, head: bytes.toString('base64') }, socket, { keepOpen: false }, (err) => {
          if (err) {
            stats.sendFailed++;
            socket.destroy();
          }
        });
        stats.handedOff++;
      } catch {
        stats.sendFailed++;
        keep(socket, bytes);
      }
    };
    const timer = setTimeout(() => {
      if (done) return;
      finish();
      stats.unparsed++;
      keep(socket, buf);
    }, timeoutMs);
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('end', onEnd);
  };

  server.removeAllListeners('connection');
  server.on('connection', onConnection);
  return {
    stats: () => ({ ...stats }),
    remove(): void {
      server.off('connection', onConnection);
      for (const l of own) server.on('connection', l);
    },
  };
}

/**
 * What net.Server does to a socket it accepts itself (Node's onconnection), done to one that
 * arrived over IPC: without it a handed-over connection keeps Nagle's algorithm on (http.Server
 * defaults to noDelay), and small responses wait for the client's delayed ACK.
 */
function acceptedLike(server: Server, s: Socket): void {
  const o = server as unknown as { noDelay?: boolean; keepAlive?: boolean; keepAliveInitialDelay?: number };
  if (o.noDelay !== false) s.setNoDelay(true);
  if (o.keepAlive === true) s.setKeepAlive(true, o.keepAliveInitialDelay ?? 0);
}

interface ConnectionMessage {
  readonly type: typeof MSG_CONNECTION;
  readonly head: string;
}

function isConnection(m: unknown): m is ConnectionMessage {
  return typeof m === 'object' && m !== null && (m as { type?: unknown }).type === MSG_CONNECTION
    && typeof (m as { head?: unknown }).head === 'string';
}

/**
 * In a worker: connections the primary hands over join this server as if accepted here, with the
 * bytes the primary already read replayed first. Returns a function that stops accepting them.
 * `chosen` holds each handed-over socket until its first request is routed: the primary already
 * chose this worker for it (GatewayDeps `chosenHere`); later requests on the connection route as usual.
 */
export function acceptHandoffs(server: Server, chosen: WeakSet<Socket>, onAccepted?: () => void): () => void {
  const onMessage = (m: unknown, socket?: unknown): void => {
    if (!isConnection(m) || socket === undefined || socket === null) return;
    const s = socket as Socket;
    chosen.add(s);
    acceptedLike(server, s);
    server.emit('connection', s);
    s.emit('data', Buffer.from(m.head, 'base64'));
    s.resume();
    onAccepted?.();
  };
  process.on('message', onMessage);
  return () => void process.off('message', onMessage);
}
