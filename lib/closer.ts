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
  /** Closes scheduled and not done yet, with their reason. */
  readonly #scheduled = new Map<Closable, { timer: NodeJS.Timeout; reason: CloseReason }>();
  /** Paced closes (pace()), in order: each at its due time, and never within its interval of the last one. */
  readonly #paced: { session: Closable; reason: CloseReason; due: number; intervalMs: number }[] = [];
  #pacer: NodeJS.Timeout | null = null;
  #lastPacedAt = -Infinity;
  readonly #random: () => number;
  #draining = false;

  constructor(random: () => number = Math.random) {
    this.#random = random;
  }

  /** A drain has begun: rebalancing closes stop; the sessions they had queued are the drain's to close. */
  beginDrain(): void {
    this.#draining = true;
    for (const [s, { timer, reason }] of this.#scheduled) {
      if (reason !== 'rebalance') continue;
      clearTimeout(timer);
      this.#scheduled.delete(s);
      this.#closing.delete(s);
    }
    for (const p of this.#paced.filter((q) => q.reason === 'rebalance')) this.#closing.delete(p.session);
    this.#paced.splice(0, this.#paced.length, ...this.#paced.filter((q) => q.reason !== 'rebalance'));
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
    const fresh = this.take(sessions, reason);
    const step = spanMs / fresh.length;
    fresh.forEach((s, i) => {
      const at = i === 0 || step <= 0 ? 0 : step * (i + (this.#random() - 0.5) * 0.6);
      if (at <= 0) return this.closeNow(s, reason);
      this.schedule(s, reason, at);
    });
    return fresh.length;
  }

  /**
   * Closes `sessions` one every `intervalMs`, the first at `startAt` (ms, Date.now() clock), after
   * those paced before: two paced closes are never less than `intervalMs` apart, even when a busy
   * event loop fires a timer late (the rest are delayed, not bunched). Returns how many were taken.
   */
  pace(sessions: readonly Closable[], reason: CloseReason, intervalMs: number, startAt: number): number {
    const fresh = this.take(sessions, reason);
    fresh.forEach((session, i) => this.#paced.push({ session, reason, due: startAt + i * intervalMs, intervalMs }));
    this.drive();
    return fresh.length;
  }

  /** The sessions not closing yet (none for rebalancing during a drain), marked closing; one event for them. */
  private take(sessions: readonly Closable[], reason: CloseReason): Closable[] {
    if (reason === 'rebalance' && this.#draining) return [];
    const fresh = sessions.filter((s) => !this.#closing.has(s));
    if (fresh.length === 0) return [];
    for (const s of fresh) this.#closing.add(s);
    this.#events.push({ at: Date.now(), reason, closed: fresh.length });
    if (this.#events.length > EVENTS_MAX) this.#events.shift();
    return fresh;
  }

  /** Cancels spread closes not done yet (the instance is closing anyway). */
  stop(): void {
    for (const { timer } of this.#scheduled.values()) clearTimeout(timer);
    this.#scheduled.clear();
    if (this.#pacer !== null) clearTimeout(this.#pacer);
    this.#pacer = null;
    this.#paced.length = 0;
  }

  /** Closes the paced queue's head once it is due and its interval since the last paced close has passed. */
  private drive(): void {
    for (;;) {
      if (this.#pacer !== null) return;
      const head = this.#paced[0];
      if (head === undefined) return;
      const now = Date.now();
      const at = Math.max(head.due, this.#lastPacedAt + head.intervalMs);
      if (at > now) {
        // +1 ms: Node may fire a timer up to a millisecond early, which must not shorten a gap.
        this.#pacer = setTimeout(() => {
          this.#pacer = null;
          this.drive();
        }, at - now + 1);
        this.#pacer.unref();
        return;
      }
      this.#paced.shift();
      this.#lastPacedAt = now;
      this.closeNow(head.session, head.reason);
    }
  }

  private schedule(s: Closable, reason: CloseReason, inMs: number): void {
    const timer = setTimeout(() => {
      this.#scheduled.delete(s);
      this.closeNow(s, reason);
    }, inMs);
    timer.unref();
    this.#scheduled.set(s, { timer, reason });
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
