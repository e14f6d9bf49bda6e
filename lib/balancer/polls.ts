/**
 * Polling sessions (xhr, jsonp, streaming fallbacks) this balancer forwards to peers: their clients
 * use this instance as their entry. A drain moves them before the instance exits, like the
 * websockets it tunnels: `close()` ends the session's poll in flight (its client sees the
 * transport fail and reconnects, through an entry that is up) and answers its later requests with
 * 404 (sockjs: no such session), so the client can't keep the session through here.
 */
import type { ServerResponse } from 'node:http';
import { RecentIds } from './recent';

/** Sessions remembered at most (least recently polled go first). */
const MAX_SESSIONS = 100_000;

interface Poll {
  /** Receiving requests of the session in flight now (usually one). */
  readonly inFlight: Set<ServerResponse>;
  seen: number;
}

export interface ProxiedPoll {
  readonly sessionId: string;
  /** Still polling through here and not moved yet. */
  readonly open: boolean;
  close(): void;
}

export class ProxiedPolls {
  readonly #polls = new Map<string, Poll>();
  readonly #moved = new RecentIds(MAX_SESSIONS);
  readonly #idleMs: number;

  constructor(idleMs = 60_000) {
    this.#idleMs = idleMs;
  }

  /** A receiving request of `sessionId` is being forwarded to a peer; `res` answers its client. */
  track(sessionId: string, res: ServerResponse, now: number): void {
    let p = this.#polls.get(sessionId);
    if (p) this.#polls.delete(sessionId);
    else p = { inFlight: new Set(), seen: now };
    p.seen = now;
    this.#polls.set(sessionId, p);
    p.inFlight.add(res);
    res.once('close', () => p.inFlight.delete(res));
    if (this.#polls.size > MAX_SESSIONS) {
      const oldest = this.#polls.keys().next().value;
      if (oldest !== undefined) this.#polls.delete(oldest);
    }
  }

  /** Moved away by a drain: its requests are refused. */
  moved(sessionId: string): boolean {
    return this.#moved.has(sessionId);
  }

  /** The sessions polling through here within the idle horizon, each closable once. */
  sessions(now: number): ProxiedPoll[] {
    this.prune(now);
    const isOpen = (id: string): boolean => this.#polls.has(id) && !this.#moved.has(id);
    return [...this.#polls.keys()].map((sessionId) => ({
      sessionId,
      get open(): boolean {
        return isOpen(sessionId);
      },
      close: () => this.move(sessionId),
    }));
  }

  private move(sessionId: string): void {
    this.#moved.add(sessionId);
    const p = this.#polls.get(sessionId);
    this.#polls.delete(sessionId);
    for (const res of p?.inFlight ?? []) res.destroy();
  }

  prune(now: number): void {
    for (const [id, p] of this.#polls) {
      if (p.inFlight.size > 0) continue;
      if (now - p.seen <= this.#idleMs) break; // in order of last poll: the rest are fresher
      this.#polls.delete(id);
    }
  }
}
