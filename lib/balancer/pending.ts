import type { Member } from '../discovery/view';

/**
 * Optimistic accounting: a new session routed to a member counts against it at once, until the
 * member's own load report includes it. Without this, a burst between two heartbeats would all
 * go to whichever member looked least loaded.
 *
 * A routed session shows up in the member's count only once the client has opened it (info,
 * then transport requests, then DDP connect), which may be after the member's next heartbeat.
 * So entries are not retired by time but by the growth of the member's reported count: when a
 * report says the member gained N sessions since the last one, the N oldest entries are retired.
 * Entries that never open (the client went away) expire after `maxAgeMs`.
 */
interface Routed {
  readonly times: number[];
  /** The report (heartbeat time and session count) the entries are counted against. */
  heartbeatAt: number;
  sessions: number;
}

export class PendingLoad {
  readonly #routed = new Map<string, Routed>();
  readonly #maxAgeMs: number;

  constructor(maxAgeMs: number) {
    this.#maxAgeMs = maxAgeMs;
  }

  add(member: Member, now: number): void {
    const r = this.#routed.get(member.id);
    if (r) {
      this.catchUp(r, member);
      r.times.push(now);
    } else {
      this.#routed.set(member.id, { times: [now], heartbeatAt: member.heartbeatAt, sessions: member.load.sessions });
    }
  }

  /** Sessions routed to `member` that its current load figures don't include yet. */
  count(member: Member): number {
    const r = this.#routed.get(member.id);
    if (!r) return 0;
    this.catchUp(r, member);
    return r.times.length;
  }

  private catchUp(r: Routed, member: Member): void {
    if (member.heartbeatAt === r.heartbeatAt) return;
    const gained = member.load.sessions - r.sessions;
    let drop = Math.max(0, Math.min(gained, r.times.length));
    const expired = member.heartbeatAt - this.#maxAgeMs;
    while (drop < r.times.length && (r.times[drop] as number) <= expired) drop++;
    if (drop > 0) r.times.splice(0, drop);
    r.heartbeatAt = member.heartbeatAt;
    r.sessions = member.load.sessions;
  }

  /** Forgets members no longer in the view. */
  prune(live: ReadonlySet<string>): void {
    for (const id of this.#routed.keys()) if (!live.has(id)) this.#routed.delete(id);
  }
}
