/**
 * Optimistic accounting: a new session routed to a member counts against it at once, until the
 * member's own load report includes it. Without this, a burst between two reports would all go
 * to whichever member looked least loaded.
 *
 * A routed session shows up at its member only once the client has opened it (info, then
 * transport requests), which may be after the member's next report. So entries are not retired by
 * time but by what the member reports having opened since: every report carries `opened`, the
 * sessions ever opened there (monotonic, closes don't lower it), and when it grew by N since the
 * last report, the N oldest entries are retired. A session that opened and closed between two
 * reports is retired like any other (with the live count alone it would never be matched and
 * would weigh on the member as phantom load). Reports without `opened` (older versions) fall
 * back to the growth of the live session count. Entries whose session never opened (the client
 * went away) expire after `maxAgeMs`.
 *
 * The other half of a peer's unreported load is what it opened for others (its own clients, other
 * balancers) since its report; this balancer sees its own new sessions at once, so without an
 * estimate of those every instance would look busier to itself than its peers do. The `opened`
 * growth that entries don't account for is that traffic: its rate over the last reports
 * (RATE_WINDOW_MS), times the age of the current report (at most MAX_EXTRAPOLATE_MS). A rate
 * smoothed over a second lags a burst, though: when sessions arrive evenly at every instance, each
 * one keeps its own at once but sees its peers' only as their rate catches up, and proxies sessions
 * it should keep. So the estimate is at least what this balancer kept for itself since the report
 * (`landed`), scaled by how the peer's arrivals compared with this balancer's over its last few
 * kept sessions (about 1 under even arrival, towards 0 when every client enters here). Without recent
 * reports (a burst from idle) that ratio is the one last measured: 1 (even arrival) until then.
 *
 * A report's age is taken from its time (the peer's clock), but at most MAX_CLOCK_LEAD_MS more
 * than since this balancer first used it, so a peer's clock running behind can't inflate it.
 */

/** Reports (by the peer's clock) over which a peer's rate of sessions opened for others is taken. */
export const RATE_WINDOW_MS = 1000;
/**
 * Sessions of the last known arrival pattern (even, until reports say) assumed before recent
 * reports say how the peer's arrivals compare (see ratio).
 */
const PRIOR_SESSIONS = 2;
/** How long a session that reached a peer may take to show in its report (routing, then pending). */
const SHOW_LAG_MS = 5;
/** The ratio of a peer's arrivals to this balancer's is taken over this many of its own new sessions. */
const RATIO_SESSIONS = 8;
/** A rate needs reports at least this far apart. */
const MIN_RATE_SPAN_MS = 40;
/** Extrapolate at most this far past a report: a correction for the lag of fresh reports, no more. */
export const MAX_EXTRAPOLATE_MS = 200;
/** See above: how much older than "first used" a report may be taken to be. */
export const MAX_CLOCK_LEAD_MS = 50;

/** What a member last reported: its live sessions and, when it says, the sessions it ever opened. */
export interface LoadReport {
  /** When the report was taken (any clock; only compared with the previous report's). */
  readonly at: number;
  readonly sessions: number;
  readonly opened: number | null;
  /** New sessions it kept for itself that have not opened yet, when it says (part of its load). */
  readonly pending?: number | null;
  /** This instance's own figures, taken now: nothing is unseen. */
  readonly live?: boolean;
  /**
   * When the figures were last known to still hold, by this balancer's clock (a peer whose load
   * feed streams: it would have sent a line had they changed); null or absent: only as of `at`.
   */
  readonly heldAt?: number | null;
}

interface Routed {
  /** When each entry was routed, by this balancer's clock, oldest first. */
  readonly times: number[];
  /** The report the entries are counted against. */
  at: number;
  sessions: number;
  opened: number | null;
  pending: number | null;
  /** When this balancer first used that report, by its own clock. */
  seenAt: number;
  /** Sessions the member opened for others, cumulative, sampled per report. */
  readonly others: OthersSample[];
  othersTotal: number;
  /**
   * The peer's arrivals over this balancer's, as last measured over RATIO_SESSIONS kept sessions
   * (ratio(), at most 1); 1 (even) until then. How clients reach a cluster changes with its
   * deployment, not between bursts: a burst from idle starts from the last pattern seen.
   */
  pattern: number;
}

/** [report at (peer's clock), sessions opened for others so far, when taken (this clock, see takenAt)]. */
type OthersSample = [number, number, number];

/**
 * When figures of time `at` (the peer's clock) first used at `now` were taken, by this balancer's
 * clock: their own time, but no earlier than MAX_CLOCK_LEAD_MS before now (a peer's clock may
 * disagree) and no later than now.
 */
export function takenAt(at: number, now: number): number {
  return now - Math.min(MAX_CLOCK_LEAD_MS, Math.max(0, now - at));
}

export class PendingLoad {
  readonly #routed = new Map<string, Routed>();
  /** When this balancer kept new sessions for itself, oldest first (the last RATE_WINDOW_MS). */
  readonly #landed: number[] = [];
  readonly #maxAgeMs: number;

  constructor(maxAgeMs: number) {
    this.#maxAgeMs = maxAgeMs;
  }

  add(memberId: string, report: LoadReport, now: number): void {
    this.record(memberId, report, now).times.push(now);
  }

  /**
   * Sessions `report` doesn't include yet: those routed to `memberId` by this balancer, plus those
   * it likely opened for others since (see above; 0 for a report that is live, like this
   * instance's own). May be fractional.
   */
  count(memberId: string, report: LoadReport, now: number): number {
    const r = this.record(memberId, report, now);
    return report.live === true ? r.times.length : r.times.length + this.unseen(r, now, report.heldAt ?? null);
  }

  /** A new session stays on this instance: the reference for peers' unreported arrivals. */
  landed(now: number): void {
    const l = this.#landed;
    l.push(now);
    while (l.length > 0 && ((l[0] as number) < now - RATE_WINDOW_MS || l.length > 10_000)) l.shift();
  }

  /** Sessions routed to `memberId` and not yet matched by its reports. */
  routed(memberId: string, report: LoadReport, now: number): number {
    return this.record(memberId, report, now).times.length;
  }

  private record(memberId: string, report: LoadReport, now: number): Routed {
    let r = this.#routed.get(memberId);
    if (!r) {
      // The first report is a sample too: one fresh report later there is a rate (often 0).
      r = { times: [], at: report.at, sessions: report.sessions, opened: report.opened, pending: report.pending ?? null, seenAt: now, others: [[report.at, 0, takenAt(report.at, now)]], othersTotal: 0, pattern: 1 };
      this.#routed.set(memberId, r);
      return r;
    }
    this.catchUp(r, report, now);
    return r;
  }

  private catchUp(r: Routed, report: LoadReport, now: number): void {
    const fresh = report.at !== r.at;
    let drop = 0;
    let grown = 0;
    if (report.opened !== null && r.opened !== null) {
      // Opened since the last report, closed or not; never negative (an older report arriving late).
      grown = Math.max(0, report.opened - r.opened);
      drop = grown;
      r.opened = Math.max(r.opened, report.opened);
    } else if (fresh) {
      drop = Math.max(0, report.sessions - r.sessions);
      r.opened = report.opened;
    }
    drop = Math.min(drop, r.times.length);
    if (fresh) {
      r.at = report.at;
      r.sessions = report.sessions;
      r.seenAt = now;
      // What it took on beyond the entries matched now, it took for others: sessions it opened,
      // and new ones it kept that have not opened yet (counted once: when they open, its pending
      // shrinks as much as its opened count grows).
      const kept = report.pending != null && r.pending !== null ? report.pending - r.pending : 0;
      r.othersTotal += Math.max(0, grown + kept - drop);
      r.pending = report.pending ?? null;
      r.others.push([report.at, r.othersTotal, takenAt(report.at, now)]);
      while (r.others.length > 0 && report.at - (r.others[0] as OthersSample)[0] > RATE_WINDOW_MS) r.others.shift();
    }
    const expired = now - this.#maxAgeMs;
    while (drop < r.times.length && (r.times[drop] as number) <= expired) drop++;
    if (drop > 0) r.times.splice(0, drop);
  }

  /**
   * Sessions opened for others since the report (or since `heldAt`, when the figures were last
   * known to hold): what this balancer kept for itself meanwhile,
   * scaled by ratio(), or their recent rate times the report's age if that is more; without
   * recent reports, as many as this balancer kept meanwhile.
   */
  private unseen(r: Routed, now: number, heldAt: number | null): number {
    const seen = Math.max(0, now - r.seenAt);
    let age = Math.min(Math.max(seen, now - r.at), seen + MAX_CLOCK_LEAD_MS);
    // Figures a live feed vouches for are as old as its silence allows, however old their report.
    if (heldAt !== null) age = Math.min(age, Math.max(0, now - heldAt));
    const kept = this.keptSince(now - age, now);
    const first = r.others[0];
    const last = r.others[r.others.length - 1];
    if (!first || !last || last[0] - first[0] < MIN_RATE_SPAN_MS) return kept * r.pattern;
    const byRate = ((last[1] - first[1]) / (last[0] - first[0])) * Math.min(MAX_EXTRAPOLATE_MS, age);
    // The ratio scans recent sessions and reports: only worth it when there is something to scale.
    return kept === 0 ? byRate : Math.max(byRate, Math.min(1, this.ratio(r, now, heldAt)) * kept);
  }

  /**
   * How the member's arrivals compare with this balancer's: sessions it opened for others while
   * this balancer kept its last RATIO_SESSIONS (within RATE_WINDOW_MS), over those. About 1 when
   * clients arrive evenly, towards 0 when they all enter here. Counted in this balancer's
   * sessions, not in time, so that a change of pattern (a burst entering elsewhere, then one
   * entering here) shows within a few sessions. PRIOR_SESSIONS sessions of the last pattern
   * keep a quiet spell from reading as either.
   */
  private ratio(r: Routed, now: number, heldAt: number | null): number {
    // Up to a little before the latest report was taken, or the figures last known to hold: the
    // peer's figures say nothing of what came after, and sessions that reached it just before may
    // not show yet.
    const end = Math.max((r.others[r.others.length - 1] as OthersSample)[2], heldAt ?? -Infinity) - SHOW_LAG_MS;
    const since = now - RATE_WINDOW_MS;
    const l = this.#landed;
    let from = since;
    let keptN = 0;
    for (let k = l.length - 1; k >= 0 && keptN < RATIO_SESSIONS; k--) {
      const t = l[k] as number;
      if (t <= since) break;
      if (t > end) continue;
      keptN++;
      from = t;
    }
    // The peer's count for others when `from` began: its last report taken by then.
    let base = (r.others[0] as OthersSample)[1];
    for (const [, total, taken] of r.others) {
      if (taken >= from) break;
      base = total;
    }
    const others = r.othersTotal - base;
    if (keptN < RATIO_SESSIONS) return (others + PRIOR_SESSIONS * r.pattern) / (keptN + PRIOR_SESSIONS);
    // A full window: measured with even arrival as the prior, and remembered for the next burst.
    r.pattern = Math.min(1, (others + PRIOR_SESSIONS) / (keptN + PRIOR_SESSIONS));
    return r.pattern;
  }

  /** New sessions this balancer kept for itself in (from, to]. */
  private keptSince(from: number, to: number): number {
    let n = 0;
    for (let k = this.#landed.length - 1; k >= 0; k--) {
      const t = this.#landed[k] as number;
      if (t <= from) break;
      if (t <= to) n++;
    }
    return n;
  }

  /** Forgets members no longer in the view. */
  prune(live: ReadonlySet<string>): void {
    for (const id of this.#routed.keys()) if (!live.has(id)) this.#routed.delete(id);
  }
}
