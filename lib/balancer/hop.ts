/**
 * The hop header: what a proxying instance tells the instance it forwards to. Signed with
 * CLUSTER_SECRET over method, URL, time, nonce, the client's remote address and its original
 * x-forwarded-for, the sender's and the target's instance ids, so the receiver can (1) serve
 * without re-balancing and (2) give Meteor the client's address exactly as the entry instance saw
 * it. The target is bound: a header captured on its way to C is refused by every other instance
 * (and by its sender), and C's replay cache refuses it a second time.
 */
import type { IncomingMessage } from 'node:http';
import { randomBytes } from 'node:crypto';
import type { HopRejection } from '../outcomes';

// Nonces only need to be unique: a random prefix per process and a counter, instead of reading
// the system's randomness on every proxied request.
const NONCE_PREFIX = randomBytes(9).toString('base64url');
let nonceCounter = 0;
import { sign, verify, type Keys } from '../sign';

export const HOP_HEADER = 'x-ddp-cluster-hop';

/** Hops older or newer than this are refused (clock skew between peers must stay below it). */
export const HOP_WINDOW_MS = 30_000;

export interface ClientView {
  readonly remoteAddress: string | null;
  readonly forwardedFor: string | null;
}

interface HopPayload {
  readonly v: 2;
  readonly t: number;
  readonly n: string;
  readonly m: string;
  readonly u: string;
  readonly ra: string | null;
  readonly xff: string | null;
  readonly from: string;
  /** The instance id this hop is for. */
  readonly to: string;
}

function parts(p: HopPayload): string[] {
  return ['ddp-cluster/hop/v2', String(p.t), p.n, p.m, p.u, p.ra ?? '', p.xff ?? '', p.from, p.to];
}

/** The header value for forwarding `method url` from instance `from` to instance `to`, on behalf of a client seen as `client`. */
export function makeHop(keys: Keys | null, method: string, url: string, client: ClientView, from: string, to: string, now: number): string {
  const payload: HopPayload = {
    v: 2, t: now, n: `${NONCE_PREFIX}${(nonceCounter++).toString(36)}`, m: method, u: url,
    ra: client.remoteAddress, xff: client.forwardedFor, from, to,
  };
  const body = Buffer.from(JSON.stringify(payload)).toString('base64url');
  // Without a secret the header still stops re-balancing (serving here is always safe), but it
  // is never trusted for the client's address.
  return keys === null ? `${body}.` : `${body}.${sign(keys, parts(payload))}`;
}

export type HopCheck =
  | { readonly kind: 'none' }
  | { readonly kind: 'trusted'; readonly client: ClientView; readonly from: string; readonly nonce: string }
  | { readonly kind: 'untrusted'; readonly reason: HopRejection };

const MAX_HOP_LENGTH = 12_288;

/**
 * Checks a received hop header against the request it came with and the instance (`self`) that
 * received it. Pure apart from `replayed`, which is only asked once everything else holds.
 * `startedAt`: when this process began taking requests. The replay guard lives in memory, so a
 * header made before then (for an earlier process with the same instance id, which may have seen
 * it already) is refused: restarting a target doesn't reopen a captured header's window.
 */
export function checkHop(
  keys: Keys | null,
  value: string | string[] | undefined,
  method: string,
  url: string,
  self: string,
  now: number,
  replayed: (nonce: string, t: number) => boolean,
  startedAt = -Infinity,
): HopCheck {
  if (value === undefined) return { kind: 'none' };
  if (typeof value !== 'string' || value.length > MAX_HOP_LENGTH) return { kind: 'untrusted', reason: 'malformed' };
  const dot = value.indexOf('.');
  if (dot < 1) return { kind: 'untrusted', reason: 'malformed' };
  let p: HopPayload;
  try {
    p = JSON.parse(Buffer.from(value.slice(0, dot), 'base64url').toString('utf8')) as HopPayload;
  } catch {
    return { kind: 'untrusted', reason: 'malformed' };
  }
  if (!isPayload(p)) return { kind: 'untrusted', reason: 'malformed' };
  if (keys === null) return { kind: 'untrusted', reason: 'no CLUSTER_SECRET to verify with' };
  if (!verify(keys, parts(p), value.slice(dot + 1))) return { kind: 'untrusted', reason: 'bad signature' };
  if (Math.abs(now - p.t) > HOP_WINDOW_MS) return { kind: 'untrusted', reason: 'expired' };
  if (p.m !== method || p.u !== url) return { kind: 'untrusted', reason: 'signed for another request' };
  if (p.from === self) return { kind: 'untrusted', reason: 'from this instance' };
  if (p.to !== self) return { kind: 'untrusted', reason: 'signed for another instance' };
  if (p.t < startedAt) return { kind: 'untrusted', reason: 'made before this instance started' };
  if (replayed(p.n, p.t)) return { kind: 'untrusted', reason: 'replayed' };
  return { kind: 'trusted', client: { remoteAddress: p.ra, forwardedFor: p.xff }, from: p.from, nonce: p.n };
}

function isPayload(p: unknown): p is HopPayload {
  if (typeof p !== 'object' || p === null) return false;
  const o = p as Record<string, unknown>;
  const str = (v: unknown): boolean => typeof v === 'string' && v.length <= 8192;
  const strOrNull = (v: unknown): boolean => v === null || str(v);
  return o.v === 2 && typeof o.t === 'number' && Number.isFinite(o.t) && str(o.n) && str(o.m) && str(o.u)
    && strOrNull(o.ra) && strOrNull(o.xff) && str(o.from) && str(o.to);
}

/** What the entry instance sees of a client: the socket peer and x-forwarded-for as received. */
export function clientViewOf(req: IncomingMessage): ClientView {
  const xff = req.headers['x-forwarded-for'];
  return { remoteAddress: req.socket.remoteAddress ?? null, forwardedFor: typeof xff === 'string' ? xff : null };
}

/**
 * Makes a hopped request look to sockjs/Meteor exactly as it looked to the entry instance.
 * sockjs copies `socket.remoteAddress` when it opens a session (transport.js decorateConnection),
 * so an own property on the socket shadows the peer address; `restore` removes it once the
 * request is done (a keep-alive socket from a peer carries many clients' requests in turn).
 */
export function applyClientView(req: IncomingMessage, client: ClientView): () => void {
  if (client.forwardedFor === null) delete req.headers['x-forwarded-for'];
  else req.headers['x-forwarded-for'] = client.forwardedFor;
  const socket = req.socket;
  Object.defineProperty(socket, 'remoteAddress', { value: client.remoteAddress ?? undefined, configurable: true, writable: true });
  return () => {
    delete (socket as { remoteAddress?: string }).remoteAddress;
  };
}

/** Nonces the replay guard remembers at most. */
export const REPLAY_MAX = 200_000;

/**
 * Remembers nonces as long as a header carrying them could still verify, so a captured header
 * can't be replayed. A header verifies while its time is within HOP_WINDOW_MS of ours, so a nonce
 * first seen at `now` must be kept until at most `now + 2 * HOP_WINDOW_MS`: entries are kept in
 * arrival order with that expiry, which is therefore in order too. A check drops the expired ones
 * from the front (amortized O(1), never a scan of the map), and when the guard is full of live
 * nonces the oldest go first (bounded memory under any flood).
 */
export class ReplayGuard {
  readonly #seen = new Map<string, number>();
  readonly #max: number;
  readonly #now: () => number;
  readonly #keepMs: number;

  /** `keepMs`: how long a nonce is remembered (by default as long as a hop header could verify). */
  constructor(max = REPLAY_MAX, now: () => number = Date.now, keepMs = 2 * HOP_WINDOW_MS) {
    this.#max = max;
    this.#now = now;
    this.#keepMs = keepMs;
  }

  /** True when `nonce` was already used; records it otherwise. */
  check = (nonce: string, _t: number): boolean => {
    const now = this.#now();
    this.prune(now);
    if (this.#seen.has(nonce)) return true;
    if (this.#seen.size >= this.#max) {
      const oldest = this.#seen.keys().next().value;
      if (oldest !== undefined) this.#seen.delete(oldest);
    }
    this.#seen.set(nonce, now + this.#keepMs);
    return false;
  };

  /** Drops expired nonces: the oldest first, stopping at the first live one. */
  prune(now: number): void {
    for (const [nonce, expires] of this.#seen) {
      if (expires >= now) break;
      this.#seen.delete(nonce);
    }
  }

  get size(): number {
    return this.#seen.size;
  }
}
