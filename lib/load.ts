import { monitorEventLoopDelay, performance, type EventLoopUtilization, type IntervalHistogram } from 'node:perf_hooks';

/** What an instance reports about itself in every heartbeat. */
export interface LoadSnapshot {
  /** Live DDP sessions served here. */
  readonly sessions: number;
  /** Sessions this instance is sized for (CLUSTER_CAPACITY). */
  readonly capacity: number;
  /** Event-loop utilization over the last interval, 0..1. */
  readonly elu: number;
  /** Event-loop delay p99 over the last interval, ms, net of the 20 ms sampling resolution. */
  readonly delayMs: number;
  /** CPU used over the last interval, in cores (1 = one core fully busy). */
  readonly cpu: number;
  /** Resident set size, bytes. */
  readonly rss: number;
  /**
   * Sessions ever opened here (monotonic; closes don't lower it), so a peer can tell which of the
   * sessions it routed here arrived even when they closed again before this report. Absent from
   * reports of older versions.
   */
  readonly opened?: number;
  /**
   * New sessions this instance's balancer kept for itself that have not opened yet (SockJS info
   * answered, transport not yet requested): load it has committed to that `sessions` doesn't show.
   */
  readonly pending?: number;
  /** Sessions rebalancing closed here so far (monotonic), for the dashboard. Absent from older versions. */
  readonly moved?: number;
}

/** Sampling resolution of the event-loop delay histogram, ms. */
const DELAY_RESOLUTION_MS = 20;

export const EMPTY_LOAD: LoadSnapshot = Object.freeze({ sessions: 0, capacity: 1, elu: 0, delayMs: 0, cpu: 0, rss: 0 });

/**
 * Samples process figures between calls to `sample()`; the caller decides the interval
 * (the heartbeat), so nothing here runs on a timer of its own.
 */
export class LoadSampler {
  readonly #sessions: () => number;
  readonly #capacity: number;
  readonly #opened: (() => { opened: number; pending: number; moved?: number }) | null;
  readonly #delay: IntervalHistogram;
  #elu: EventLoopUtilization;
  #cpu: NodeJS.CpuUsage;
  #at: number;

  constructor(sessions: () => number, capacity: number, opened: (() => { opened: number; pending: number; moved?: number }) | null = null) {
    this.#sessions = sessions;
    this.#capacity = capacity;
    this.#opened = opened;
    this.#delay = monitorEventLoopDelay({ resolution: DELAY_RESOLUTION_MS });
    this.#delay.enable();
    this.#elu = performance.eventLoopUtilization();
    this.#cpu = process.cpuUsage();
    this.#at = performance.now();
  }

  sample(): LoadSnapshot {
    const now = performance.now();
    const elu = performance.eventLoopUtilization(this.#elu);
    const cpu = process.cpuUsage(this.#cpu);
    const elapsedUs = Math.max(1, (now - this.#at) * 1000);
    const snapshot: LoadSnapshot = {
      sessions: this.#sessions(),
      capacity: this.#capacity,
      elu: round(elu.utilization, 3),
      // Each sample is the time between two ticks of a timer of the histogram's resolution, so an
      // idle loop reads as the resolution itself: report the delay net of it (as Node's docs advise).
      delayMs: round(this.#delay.count > 0 ? Math.max(0, this.#delay.percentile(99) / 1e6 - DELAY_RESOLUTION_MS) : 0, 1),
      cpu: round((cpu.user + cpu.system) / elapsedUs, 3),
      rss: process.memoryUsage.rss(),
      ...(this.#opened ? this.#opened() : {}),
    };
    this.#elu = performance.eventLoopUtilization();
    this.#cpu = process.cpuUsage();
    this.#at = now;
    this.#delay.reset();
    return snapshot;
  }

  /** Delay samples taken since the last `sample()`. */
  delaySamples(): number {
    return this.#delay.count;
  }

  close(): void {
    this.#delay.disable();
  }
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}
