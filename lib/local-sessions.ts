import type { Socket } from 'node:net';
import type { Closable } from './drain';

/** Polling sessions the fallback count remembers at most. */
export const LOCAL_POLLS_MAX = 100_000;

/**
 * Fallback session count when the host doesn't provide one: websockets served here while open,
 * plus polling sessions served here (that sockjs accepted) active within `idleMs`. The poll table
 * is bounded: past `maxPolls` the least recently polled are forgotten.
 */
export class LocalSessions {
  readonly #polls = new Map<string, number>();
  readonly #sockets = new Set<Socket>();
  readonly #maxPolls: number;
  readonly #idleMs: number;

  constructor(maxPolls = LOCAL_POLLS_MAX, idleMs = 60_000) {
    this.#maxPolls = maxPolls;
    this.#idleMs = idleMs;
  }

  websocket(socket: Socket): void {
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
  }

  /** Websockets served here and open now. */
  websockets(): number {
    return this.#sockets.size;
  }

  /** The websockets served here, closable by a drain. */
  sockets(): Closable[] {
    return [...this.#sockets].map((s) => ({ close: () => s.destroy() }));
  }

  polled(sessionId: string, now: number): void {
    // Re-inserted: the map stays in order of last poll, so pruning stops at the first live one.
    this.#polls.delete(sessionId);
    this.#polls.set(sessionId, now);
    if (this.#polls.size > this.#maxPolls) {
      const oldest = this.#polls.keys().next().value;
      if (oldest !== undefined) this.#polls.delete(oldest);
    }
  }

  count(now: number): number {
    this.prune(now);
    return this.#sockets.size + this.#polls.size;
  }

  prune(now: number): void {
    for (const [id, t] of this.#polls) {
      if (now - t <= this.#idleMs) break;
      this.#polls.delete(id);
    }
  }
}
