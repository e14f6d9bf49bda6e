/**
 * Polls served here for a peer that relays them to their client (the session lives here, the
 * client's request reached another balancer). sockjs counts a message as delivered once it is
 * written to a poll's answer. If the relaying peer dies (kill -9, a crash) between that write and
 * its own write to the client, the message is gone; and a browser retries a request that failed on
 * a reused connection, so the client keeps polling the same session with a hole in it: a method
 * result or a subscription's change that never arrives, with no reconnect to repair it.
 *
 * So when a relaying peer's connection ends while an answer on it may not have reached the peer's
 * process (a streaming answer still open, a poll answer begun but not finished, or finished less
 * than LOSS_WINDOW_MS before), the session is marked lost: every later request of it is answered
 * 404 (sockjs: no such session), its client reconnects, and Meteor's reconnect re-sends its
 * methods and re-runs its subscriptions. A peer closes a kept-alive connection it is done with
 * only after PEER_IDLE_MS idle (proxy.ts), far outside the window.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { PEER_IDLE_MS } from './proxy';
import { RecentIds } from './recent';

/** A peer's connection ending this soon after an answer finished on it may have lost the answer. */
export const LOSS_WINDOW_MS = 1000;
/** Lost sessions remembered at most (oldest forgotten first). */
const MAX_LOST = 100_000;

/** What one relaying peer's connection last carried. */
interface Carried {
  sessionId: string;
  res: ServerResponse;
  /** The connection's bytesWritten when `res` began: more at the end means its answer had begun. */
  startBytes: number;
  /** When `res` finished (Date.now()), or -1 while it is open. */
  finishedAt: number;
}

const CARRIED = Symbol('ddp-cluster.relayedPoll');
type Watched = Socket & { [CARRIED]?: Carried };

export class RelayedPolls {
  readonly #lost = new RecentIds(MAX_LOST);
  readonly #onLost: (sessionId: string) => void;

  /** `onLost` runs once per session marked lost (for stats and a log line). */
  constructor(onLost: (sessionId: string) => void = () => undefined) {
    this.#onLost = onLost;
  }

  /** A receiving request of `sessionId` served here, relayed by the peer at the other end of `req.socket`. */
  watch(sessionId: string, req: IncomingMessage, res: ServerResponse): void {
    const socket = req.socket as Watched;
    let c = socket[CARRIED];
    if (c === undefined) {
      c = { sessionId, res, startBytes: socket.bytesWritten, finishedAt: -1 };
      socket[CARRIED] = c;
      const ended = (): void => this.ended(socket);
      // Before node:http's own 'end' listener, which ends this side at once: `writableEnded` then
      // still tells whether this side had closed first.
      socket.prependOnceListener('end', ended);
      socket.prependOnceListener('error', ended);
    } else {
      c.sessionId = sessionId;
      c.res = res;
      c.startBytes = socket.bytesWritten;
      c.finishedAt = -1;
    }
    const carried = c;
    res.once('finish', () => {
      if (carried.res === res) carried.finishedAt = Date.now();
    });
  }

  /** Whether `sessionId` was marked lost here: its requests get 404. */
  lost(sessionId: string): boolean {
    return this.#lost.has(sessionId);
  }

  /** The peer ended or reset the connection: was an answer on it possibly in flight? */
  private ended(socket: Watched): void {
    const c = socket[CARRIED];
    if (c === undefined) return;
    socket[CARRIED] = undefined;
    // This side closed first (the server's keep-alive timeout): the peer only answered that.
    if (socket.writableEnded) return;
    if (!mayHaveLost(socket.bytesWritten > c.startBytes, c.finishedAt, Date.now())) return;
    if (this.#lost.has(c.sessionId)) return;
    this.#lost.add(c.sessionId);
    this.#onLost(c.sessionId);
  }
}

/**
 * Pure: whether an answer whose connection the peer ended at `now` may not have reached it. Not
 * begun (a long poll still waiting: not a byte written, its head included): sockjs still holds its
 * messages. Begun and open (a streaming answer), or finished within the window: maybe. Finished earlier: the peer read it long ago (it closes idle connections only after
 * PEER_IDLE_MS).
 */
export function mayHaveLost(begun: boolean, finishedAt: number, now: number): boolean {
  if (finishedAt < 0) return begun;
  return now - finishedAt <= LOSS_WINDOW_MS;
}

// The window must stay well inside a peer's idle close, or every idle close would lose a session.
if (LOSS_WINDOW_MS * 2 > PEER_IDLE_MS) throw new Error('LOSS_WINDOW_MS must stay well below PEER_IDLE_MS');
