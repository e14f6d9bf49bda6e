/**
 * Graceful drain for rolling deploys: stop taking new sessions, let peers notice, then close the
 * existing sessions gradually in jittered batches over a window, so their clients reconnect to
 * the survivors at a bounded rate instead of all at once (the "reconnect storm").
 * Prior art: @meteorjs/ddp-graceful-shutdown.
 */

export interface Closable {
  close(): void;
}

export interface DrainOptions {
  /** Spread the closing over this long. 0 closes everything at once. */
  readonly windowMs: number;
  /** Wait this long after announcing `draining` before closing anything (peers see it by then). */
  readonly noticeMs: number;
  /** Live sessions; asked again before every batch (stragglers that arrived meanwhile included). */
  readonly sessions: () => Iterable<Closable>;
  readonly random?: () => number;
  /** Called with each batch, for logs and figures. */
  readonly onBatch?: (batch: DrainBatch) => void;
  /** Closes a batch (the shared paced closer of lib/closer.ts); default: close() each at once. */
  readonly close?: (batch: readonly Closable[]) => void;
}

export interface DrainBatch {
  /** Milliseconds since the closing started. */
  readonly atMs: number;
  readonly closed: number;
  readonly remaining: number;
}

export interface DrainReport {
  readonly closed: number;
  readonly tookMs: number;
  readonly batches: readonly DrainBatch[];
}

/** Roughly this many batches per window; each one's size follows what is left and the time left. */
const BATCHES = 20;
const MIN_STEP_MS = 100;
const MAX_STEP_MS = 2000;

export async function drainSessions(o: DrainOptions): Promise<DrainReport> {
  const random = o.random ?? Math.random;
  await delay(o.noticeMs);
  const began = Date.now();
  const batches: DrainBatch[] = [];
  let closed = 0;
  const step = Math.min(MAX_STEP_MS, Math.max(MIN_STEP_MS, o.windowMs / BATCHES));
  for (;;) {
    const live = shuffle([...o.sessions()], random);
    if (live.length === 0) break;
    const elapsed = Date.now() - began;
    const left = o.windowMs - elapsed;
    // Close the share due now, jittered ±30% so many draining instances don't beat in phase.
    const share = left <= step ? 1 : Math.min(1, (step / left) * (0.7 + 0.6 * random()));
    const n = Math.max(1, Math.ceil(live.length * share));
    if (o.close) o.close(live.slice(0, n));
    else {
      for (const s of live.slice(0, n)) {
        try {
          s.close();
        } catch {
          // A session that fails to close is gone or going; it must not stop the drain.
        }
      }
    }
    closed += n;
    const batch = { atMs: elapsed, closed: n, remaining: live.length - n };
    batches.push(batch);
    o.onBatch?.(batch);
    if (n === live.length && left <= step) break;
    await delay(step * (0.7 + 0.6 * random()));
  }
  return { closed, tookMs: Date.now() - began, batches };
}

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j] as T, items[i] as T];
  }
  return items;
}

function delay(ms: number): Promise<void> {
  return ms <= 0 ? Promise.resolve() : new Promise((resolve) => setTimeout(resolve, ms));
}
