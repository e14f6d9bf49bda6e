/**
 * The one place this instance closes its sessions on purpose: drain (SIGTERM, CLI) and
 * rebalancing both close through it. It spreads a batch over a span (so a batch is not a burst),
 * never closes a session twice, stops rebalancing closes the moment a drain begins (the drain's
 * pace then governs alone), and counts what each closed, for the dashboard and metrics.
 */
import type { Closable } from './drain';

export type CloseReason = 'drain' | 'rebalance';

export interface CloserEvent {
  readonly at: number;
  readonly reason: CloseReason;
  readonly closed: number;
}

/** Close events remembered for the dashboard (one per batch). */
const EVENTS_MAX = 200;

export class SessionCloser {
  readonly #closing = new WeakSet<object>();
  readonly #counts: Record<CloseReason, number> = { drain: 0, rebalance: 0 };
  readonly #events: CloserEvent[] = [];
  readonly #timers = new Set<NodeJS.Timeout>();
  readonly #random: () => number;
  #draining = false;

  constructor(random: () => number = Math.random) {
    this.#random = random;
  }

  /** A drain has begun: rebalancing closes stop (queued ones are dropped). */
  beginDrain(): void {
    this.#draining = true;
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** Sessions closed so far, by reason. */
  counts(): Readonly<Record<CloseReason, number>> {
    return { ...this.#counts };
  }

  events(): readonly CloserEvent[] {
    return [...this.#events];
  }

  /** Whether `s` was already handed to close (by either reason). */
  closing(s: object): boolean {
    return this.#closing.has(s);
  }

  /**
   * Closes `sessions` spread evenly (±30 % jitter) over `spanMs` (0: at once). Returns how many
   * were taken (not already closing; none for rebalancing during a drain).
   */
  close(sessions: readonly Closable[], reason: CloseReason, spanMs = 0): number {
    if (reason === 'rebalance' && this.#draining) return 0;
    const fresh = sessions.filter((s) => !this.#closing.has(s));
    if (fresh.length === 0) return 0;
    for (const s of fresh) this.#closing.add(s);
    this.#events.push({ at: Date.now(), reason, closed: fresh.length });
    if (this.#events.length > EVENTS_MAX) this.#events.shift();
    const step = spanMs / fresh.length;
    fresh.forEach((s, i) => {
      const at = i === 0 || step <= 0 ? 0 : step * (i + (this.#random() - 0.5) * 0.6);
      if (at <= 0) return this.closeNow(s, reason);
      const t = setTimeout(() => {
        this.#timers.delete(t);
        this.closeNow(s, reason);
      }, at);
      t.unref();
      this.#timers.add(t);
    });
    return fresh.length;
  }

  /** Cancels spread closes not done yet (the instance is closing anyway). */
  stop(): void {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
  }

  private closeNow(s: Closable, reason: CloseReason): void {
    if (reason === 'rebalance' && this.#draining) return;
    this.#counts[reason]++;
    try {
      s.close();
    } catch {
      // A session that fails to close is gone or going; it must not stop the others.
    }
  }
}
