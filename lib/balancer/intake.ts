/**
 * The new sessions this balancer routed recently, per member: what slow start caps. A member
 * that ramps up (route.ts `ramp`) may take at most its ramp fraction of the new sessions this
 * balancer routes (10 % when it starts serving), however empty it is: a weight on a score alone
 * let an empty member win every pick (its score stays lowest) until it had caught up.
 */

/** New sessions are counted over this window. */
export const INTAKE_WINDOW_MS = 5000;
/** Entries kept at most (a flood must not grow this without bound). */
const MAX_ENTRIES = 10_000;

export class RecentIntake {
  /** [when, member id], oldest first. */
  readonly #routed: [number, string][] = [];
  readonly #byMember = new Map<string, number>();
  readonly #windowMs: number;

  constructor(windowMs = INTAKE_WINDOW_MS) {
    this.#windowMs = windowMs;
  }

  add(memberId: string, now: number): void {
    this.prune(now);
    this.#routed.push([now, memberId]);
    this.#byMember.set(memberId, (this.#byMember.get(memberId) ?? 0) + 1);
    if (this.#routed.length > MAX_ENTRIES) this.drop();
  }

  /** New sessions routed to `memberId`, and in all, within the window. */
  share(memberId: string, now: number): { member: number; total: number } {
    this.prune(now);
    return { member: this.#byMember.get(memberId) ?? 0, total: this.#routed.length };
  }

  private prune(now: number): void {
    while (this.#routed.length > 0 && (this.#routed[0] as [number, string])[0] <= now - this.#windowMs) this.drop();
  }

  private drop(): void {
    const first = this.#routed.shift();
    if (!first) return;
    const n = (this.#byMember.get(first[1]) ?? 1) - 1;
    if (n <= 0) this.#byMember.delete(first[1]);
    else this.#byMember.set(first[1], n);
  }
}
