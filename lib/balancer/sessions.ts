/**
 * This balancer's memory of where it sent each unpinned sockjs session, so a live session stays
 * on its member when membership changes (rendezvous would otherwise move some of them).
 * Entries expire after `ttlMs` without a request; the table is bounded (least recently used go).
 */
export class SessionTable {
  readonly #entries = new Map<string, { member: string; seen: number }>();
  readonly #ttlMs: number;
  readonly #max: number;

  constructor(ttlMs: number, max: number) {
    this.#ttlMs = ttlMs;
    this.#max = max;
  }

  get(sessionId: string, now: number): string | null {
    const e = this.#entries.get(sessionId);
    if (!e) return null;
    if (now - e.seen > this.#ttlMs) {
      this.#entries.delete(sessionId);
      return null;
    }
    return e.member;
  }

  /** Records (or refreshes) the owner; re-inserting keeps the map in least-recently-used order. */
  set(sessionId: string, member: string, now: number): void {
    this.#entries.delete(sessionId);
    this.#entries.set(sessionId, { member, seen: now });
    if (this.#entries.size > this.#max) {
      const oldest = this.#entries.keys().next().value;
      if (oldest !== undefined) this.#entries.delete(oldest);
    }
  }

  delete(sessionId: string): void {
    this.#entries.delete(sessionId);
  }

  prune(now: number): void {
    for (const [id, e] of this.#entries) {
      if (now - e.seen <= this.#ttlMs) break; // LRU order: the rest are fresher
      this.#entries.delete(id);
    }
  }

  get size(): number {
    return this.#entries.size;
  }
}
