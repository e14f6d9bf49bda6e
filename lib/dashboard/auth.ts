/**
 * Dashboard authentication: one shared password (CLUSTER_DASHBOARD_PASSWORD, or derived from
 * CLUSTER_SECRET), a signed session cookie for the browser, HTTP Basic for scrapers and scripts,
 * constant-time checks and a bounded per-address limit on failed attempts.
 */
import { createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { parse as parseCookie, serialize as serializeCookie } from 'cookie';

/** Domain-separation label of the derived password (README shows the one-liner). */
export const DASHBOARD_PASSWORD_LABEL = 'ddp-cluster/dashboard';

/**
 * The dashboard password derived from the cluster secret: hex HMAC-SHA256(secret, label).
 * Same as `printf %s ddp-cluster/dashboard | openssl dgst -sha256 -hmac "$CLUSTER_SECRET"`.
 */
export function dashboardPasswordFrom(secret: string): string {
  return createHmac('sha256', secret).update(DASHBOARD_PASSWORD_LABEL).digest('hex');
}

/** The passwords that open the dashboard, first one current; empty = dashboard disabled. */
export function dashboardPasswords(c: { dashboardPassword: string | null; secret: string | null; previousSecret: string | null }): string[] {
  if (c.dashboardPassword !== null) return [c.dashboardPassword];
  if (c.secret === null) return [];
  // While CLUSTER_SECRET rotates, the password derived from the previous one keeps working too.
  return [c.secret, c.previousSecret].filter((s): s is string => s !== null).map(dashboardPasswordFrom);
}

export const SESSION_COOKIE = 'ddp_cluster_dashboard';
export const SESSION_TTL_MS = 12 * 3600_000;
const SESSION_LABEL = 'ddp-cluster/dashboard-session/v1';

/**
 * Checks passwords and session tokens. Session keys are stretched from the password with scrypt
 * (once, at start), so a stolen cookie can't be used to brute-force the password offline, and
 * every instance sharing the password accepts the others' cookies (one host behind a load balancer).
 */
export class DashboardAuth {
  readonly #checkKey = randomBytes(32);
  readonly #passwords: readonly string[];
  readonly #passwordMacs: Buffer[];
  #sessionKeys: Promise<Buffer[]> | null = null;

  constructor(passwords: readonly string[]) {
    if (passwords.length === 0) throw new Error('DashboardAuth needs a password');
    this.#passwords = passwords;
    this.#passwordMacs = passwords.map((p) => this.mac(p));
  }

  /** Derived on first use, off the event loop (scrypt runs in the libuv pool). */
  private keys(): Promise<Buffer[]> {
    this.#sessionKeys ??= Promise.all(this.#passwords.map((p) => new Promise<Buffer>((resolve, reject) => {
      scrypt(p, SESSION_LABEL, 32, { N: 1 << 14, r: 8, p: 1 }, (err, key) => (err ? reject(err) : resolve(key)));
    })));
    return this.#sessionKeys;
  }

  /** Constant time in the length and content of the guess. */
  checkPassword(guess: string): boolean {
    const given = this.mac(guess);
    let ok = false;
    for (const want of this.#passwordMacs) if (timingSafeEqual(given, want)) ok = true;
    return ok;
  }

  /** `v1.<expiresAtMs>.<nonce>.<hmac>`. */
  async issueToken(now: number): Promise<{ token: string; expiresAt: number }> {
    const keys = await this.keys();
    const expiresAt = now + SESSION_TTL_MS;
    const nonce = randomBytes(12).toString('base64url');
    const body = `v1.${expiresAt}.${nonce}`;
    return { token: `${body}.${tokenMac(keys[0] as Buffer, body)}`, expiresAt };
  }

  async checkToken(token: string | undefined, now: number): Promise<boolean> {
    if (token === undefined || token.length > 200) return false;
    const m = /^(v1\.(\d{1,15})\.[A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})$/.exec(token);
    if (!m) return false;
    const [, body = '', exp = '0', sig = ''] = m;
    if (Number(exp) <= now || Number(exp) > now + SESSION_TTL_MS + 60_000) return false;
    const given = Buffer.from(sig);
    let ok = false;
    for (const key of await this.keys()) {
      const want = Buffer.from(tokenMac(key, body));
      if (want.length === given.length && timingSafeEqual(want, given)) ok = true;
    }
    return ok;
  }

  private mac(s: string): Buffer {
    return createHmac('sha256', this.#checkKey).update(s).digest();
  }
}

function tokenMac(key: Buffer, body: string): string {
  return createHmac('sha256', key).update(body).digest('base64url');
}

/** The session cookie of a request, if any. */
export function sessionCookieOf(req: IncomingMessage): string | undefined {
  const header = req.headers.cookie;
  if (header === undefined || header.length > 8192) return undefined;
  try {
    return parseCookie(header)[SESSION_COOKIE];
  } catch {
    return undefined;
  }
}

/** The request came over TLS, here or at a proxy that says so. */
export function isHttps(req: IncomingMessage): boolean {
  if ((req.socket as TLSSocket).encrypted) return true;
  const proto = req.headers['x-forwarded-proto'];
  const first = (Array.isArray(proto) ? proto[0] : proto)?.split(',')[0]?.trim().toLowerCase();
  return first === 'https';
}

export function setSessionCookie(req: IncomingMessage, path: string, token: string, expiresAt: number): string {
  return serializeCookie(SESSION_COOKIE, token, {
    httpOnly: true, sameSite: 'strict', secure: isHttps(req), path, maxAge: Math.floor((expiresAt - Date.now()) / 1000),
  });
}

export function clearSessionCookie(req: IncomingMessage, path: string): string {
  return serializeCookie(SESSION_COOKIE, '', { httpOnly: true, sameSite: 'strict', secure: isHttps(req), path, maxAge: 0 });
}

/** The password of an `Authorization: Basic` header (any user name), or null. */
export function basicPassword(req: IncomingMessage): string | null {
  const h = req.headers.authorization;
  if (h === undefined || h.length > 1024) return null;
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(h);
  if (!m?.[1]) return null;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon === -1 ? null : decoded.slice(colon + 1);
}

/**
 * A state-changing POST is same-site: its Origin (or, without one, Sec-Fetch-Site) must name this
 * host. Clients that send neither (curl, scripts) carry no ambient browser credentials to abuse.
 */
export function sameOrigin(req: IncomingMessage): boolean {
  const origin = req.headers.origin;
  const site = req.headers['sec-fetch-site'];
  // "null" is what a browser sends under a no-referrer policy, or from a sandboxed or opaque
  // context: only the browser-set Sec-Fetch-Site can vouch for it then.
  if (origin === 'null') return site === 'same-origin';
  if (origin !== undefined) {
    let host: string;
    try {
      host = new URL(origin).host;
    } catch {
      return false;
    }
    const fwd = req.headers['x-forwarded-host'];
    const candidates = [req.headers.host, ...(Array.isArray(fwd) ? fwd : fwd === undefined ? [] : [fwd.split(',')[0]?.trim()])];
    return candidates.some((h) => h !== undefined && h.toLowerCase() === host.toLowerCase());
  }
  return site === undefined || site === 'same-origin' || site === 'none';
}

/**
 * The address failed attempts are counted against: the socket's peer, or with Meteor's
 * HTTP_FORWARDED_COUNT the entry that many hops back in X-Forwarded-For. IPv6 by /64.
 */
export function clientKey(req: IncomingMessage, forwardedCount: number): string {
  let addr = req.socket.remoteAddress ?? '?';
  if (forwardedCount > 0) {
    const xff = req.headers['x-forwarded-for'];
    const list = (Array.isArray(xff) ? xff.join(',') : xff ?? '').split(',').map((s) => s.trim()).filter(Boolean);
    const picked = list[list.length - forwardedCount];
    if (picked !== undefined && isIP(picked)) addr = picked;
  }
  if (addr.startsWith('::ffff:')) addr = addr.slice(7);
  if (isIP(addr) === 6) return expand6(addr).slice(0, 4).join(':') + '::/64';
  return addr;
}

function expand6(addr: string): string[] {
  const [head = '', tail = ''] = addr.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = addr.includes('::') && tail !== '' ? tail.split(':') : [];
  const fill = addr.includes('::') ? Array<string>(Math.max(0, 8 - h.length - t.length)).fill('0') : [];
  return [...h, ...fill, ...t].map((p) => p.toLowerCase());
}

export interface LimiterOptions {
  /** Failed attempts allowed per address within `windowMs`. */
  readonly maxFailures: number;
  readonly windowMs: number;
  /** Addresses tracked at most; the oldest entries are dropped first. */
  readonly maxEntries: number;
}

/** Fixed-window count of failed attempts per address, in a bounded map. */
export class FailureLimiter {
  readonly #o: LimiterOptions;
  readonly #entries = new Map<string, { since: number; failures: number }>();

  constructor(o: LimiterOptions) {
    this.#o = o;
  }

  /** Milliseconds until `key` may try again, 0 if it may now. */
  blockedFor(key: string, now: number): number {
    const e = this.#entries.get(key);
    if (!e) return 0;
    if (now - e.since >= this.#o.windowMs) {
      this.#entries.delete(key);
      return 0;
    }
    return e.failures >= this.#o.maxFailures ? e.since + this.#o.windowMs - now : 0;
  }

  /** Counts a failure; true when this one used up the address's allowance (log it once). */
  fail(key: string, now: number): boolean {
    let e = this.#entries.get(key);
    if (!e || now - e.since >= this.#o.windowMs) {
      this.#entries.delete(key);
      e = { since: now, failures: 0 };
      while (this.#entries.size >= this.#o.maxEntries) {
        const oldest = this.#entries.keys().next().value;
        if (oldest === undefined) break;
        this.#entries.delete(oldest);
      }
      this.#entries.set(key, e);
    }
    e.failures++;
    return e.failures === this.#o.maxFailures;
  }

  succeed(key: string): void {
    this.#entries.delete(key);
  }

  get size(): number {
    return this.#entries.size;
  }
}
