/**
 * The load feed: this instance's health answer pushed to the peers that watch it, as a stream of
 * JSON lines on one long-lived response per peer, each time its figures change (at most every
 * FEED_TICK_MS) and at least every FEED_KEEPALIVE_MS. A balancer routing a burst of new sessions
 * then compares its own live load with peers' figures that are milliseconds old without asking
 * for them: one small write per change instead of a health request and answer per peer every few
 * milliseconds on both sides (which, with every instance a balancer, grows with the square of the
 * cluster's size). Only peers open a watch (a valid hop header), and their number is capped.
 *
 * A feed's silence means "no change" only if the feed could have written: a peer busy serving a
 * burst of its own clients writes its lines 10-30 ms late (and a busy watcher reads them late),
 * and a watcher that takes the silence as "nothing changed" sees it less loaded than it is and
 * sends it sessions it should have kept. So for FEED_ACTIVE_MS after a change the feed beats: a
 * line every tick, changed or not (the same health answer, a newer `at`), and a watcher holds the
 * figures only as of the last line it read; once quiet, lines come on change and as keep-alives
 * only, and a quiet feed's silence vouches for its figures. A busy cluster's figures change every
 * tick anyway: beats cost little there, and nothing when idle. The media type says the feed beats
 * and for how long (`beat=10; active=500`): watchers of an older feed don't expect beats.
 */
import type { ServerResponse } from 'node:http';

/** How often the figures are compared with the last ones sent, while anyone watches. */
export const FEED_TICK_MS = 10;
/** A line goes out at least this often, so a watcher can tell a live feed from a stuck one. */
export const FEED_KEEPALIVE_MS = 1000;
/** After a change, a line goes out every tick for this long (the feed beats; see above). */
export const FEED_ACTIVE_MS = 500;
/** Watches served at once at most (every peer holds one): past it, new ones are refused. */
export const FEED_WATCHERS_MAX = 256;
/** The watch's media type: a peer that answers anything else doesn't stream (an older version). */
export const FEED_CONTENT_TYPE = 'application/x-ndjson';
/**
 * The media type of a feed that beats: every how many ms, and for how long after a change (an
 * older feed sends neither, and a watcher then takes its silence as "unchanged").
 */
export const FEED_BEATING_TYPE = `${FEED_CONTENT_TYPE}; beat=${FEED_TICK_MS}; active=${FEED_ACTIVE_MS}`;

/** What the feed sends: the health answer's body; `key` says whether it changed. */
export interface FeedSource {
  /** The figures that matter, as one string: a line goes out when it differs from the last one sent. */
  key(): string;
  /** The line's body (the health route's JSON). */
  body(): string;
}

export class LoadFeed {
  readonly #source: FeedSource;
  readonly #max: number;
  readonly #watchers = new Set<ServerResponse>();
  #timer: NodeJS.Timeout | null = null;
  #lastKey = '';
  #lastSent = 0;
  /** When the figures last changed (Date.now()); -Infinity: not since the first watch. */
  #changedAt = -Infinity;

  constructor(source: FeedSource, max = FEED_WATCHERS_MAX) {
    this.#source = source;
    this.#max = max;
  }

  get size(): number {
    return this.#watchers.size;
  }

  /** Serves one watch on `res` (already authenticated); false when the cap is reached. */
  add(res: ServerResponse): boolean {
    if (this.#watchers.size >= this.#max) return false;
    res.socket?.setTimeout(0);
    res.socket?.setNoDelay(true);
    res.writeHead(200, { 'Content-Type': FEED_BEATING_TYPE, 'Cache-Control': 'no-store' });
    // The current figures at once: the watcher's view is fresh from its first line.
    res.write(`${this.#source.body()}\n`);
    this.#watchers.add(res);
    res.once('close', () => {
      this.#watchers.delete(res);
      if (this.#watchers.size === 0) this.stopTicking();
    });
    if (this.#timer === null) {
      this.#lastKey = this.#source.key();
      this.#lastSent = Date.now();
      this.#timer = setInterval(() => this.tick(), FEED_TICK_MS);
      this.#timer.unref();
    }
    return true;
  }

  /**
   * Sends the figures now if they changed, if they changed less than FEED_ACTIVE_MS ago (a beat),
   * or if the keep-alive is due; called by the timer and on demand.
   */
  tick(): void {
    if (this.#watchers.size === 0) return;
    const key = this.#source.key();
    const now = Date.now();
    if (key !== this.#lastKey) {
      this.#lastKey = key;
      this.#changedAt = now;
    } else if (now - this.#changedAt >= FEED_ACTIVE_MS && now - this.#lastSent < FEED_KEEPALIVE_MS) {
      return;
    }
    this.#lastSent = now;
    const line = `${this.#source.body()}\n`;
    for (const res of this.#watchers) {
      // A watcher that doesn't read (its buffer grows past a few lines) is dropped, not buffered for.
      if (res.writableLength > 64 * 1024) res.destroy();
      else res.write(line);
    }
  }

  /** Ends every watch (shutdown): watchers fall back to polling, or see the instance gone. */
  close(): void {
    this.stopTicking();
    for (const res of this.#watchers) res.end();
    this.#watchers.clear();
  }

  private stopTicking(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }
}
