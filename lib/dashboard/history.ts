/**
 * What the dashboard remembers, in memory and bounded: sessions per member sampled every second
 * (a ring buffer, so a fresh page load shows the last minutes) and recent membership events.
 */
import type { Member } from '../discovery/view';

export interface Sample {
  /** Wall-clock ms. */
  readonly t: number;
  /** Sessions per member id. */
  readonly s: Readonly<Record<string, number>>;
}

/** Fixed-capacity ring of samples, oldest overwritten first. */
export class SessionHistory {
  readonly #slots: (Sample | undefined)[];
  #next = 0;
  #size = 0;

  constructor(readonly capacity: number, readonly maxMembers = 200) {
    this.#slots = new Array<Sample | undefined>(capacity);
  }

  record(t: number, members: readonly Pick<Member, 'id' | 'load'>[]): void {
    const s: Record<string, number> = {};
    for (const m of members.slice(0, this.maxMembers)) s[m.id] = m.load.sessions;
    this.#slots[this.#next] = Object.freeze({ t, s: Object.freeze(s) });
    this.#next = (this.#next + 1) % this.capacity;
    this.#size = Math.min(this.capacity, this.#size + 1);
  }

  /** Samples newer than `since` (ms), oldest first. */
  since(since = -Infinity): Sample[] {
    const out: Sample[] = [];
    for (let i = 0; i < this.#size; i++) {
      const sample = this.#slots[(this.#next - this.#size + i + this.capacity) % this.capacity];
      if (sample !== undefined && sample.t > since) out.push(sample);
    }
    return out;
  }

  get size(): number {
    return this.#size;
  }
}

export const EVENT_KINDS = ['join', 'leave', 'down', 'up', 'drain', 'serving', 'failover', 'change', 'outage', 'recovered', 'rebalance'] as const;
export type EventKind = (typeof EVENT_KINDS)[number];

export interface ClusterEvent {
  /** Increasing, for incremental fetches. */
  readonly seq: number;
  readonly t: number;
  readonly kind: EventKind;
  /** Member id, or null for cluster-wide events (discovery outage). */
  readonly member: string | null;
  readonly detail: string;
}

/** The last `capacity` events. */
export class EventLog {
  readonly #events: ClusterEvent[] = [];
  #seq = 0;

  constructor(readonly capacity: number) {}

  add(t: number, kind: EventKind, member: string | null, detail: string): void {
    this.#events.push(Object.freeze({ seq: ++this.#seq, t, kind, member, detail: detail.slice(0, 300) }));
    if (this.#events.length > this.capacity) this.#events.splice(0, this.#events.length - this.capacity);
  }

  /** Events after `seq`, oldest first. */
  after(seq = 0): ClusterEvent[] {
    return this.#events.filter((e) => e.seq > seq);
  }
}

/** Events for a member's state and endpoint changes (health is tracked by the dashboard itself). */
export function stateEvents(before: Member, after: Member): { kind: EventKind; detail: string }[] {
  const out: { kind: EventKind; detail: string }[] = [];
  if (before.state !== after.state) {
    const kind: EventKind = after.state === 'draining' ? 'drain' : after.state === 'serving' ? 'serving' : 'change';
    out.push({ kind, detail: `state ${before.state} → ${after.state}` });
  }
  if (before.endpoint !== after.endpoint || before.balancer !== after.balancer) {
    out.push({ kind: 'change', detail: `endpoint ${after.endpoint}${after.balancer ? `, balancer ${after.balancer}` : ''}` });
  }
  return out;
}
