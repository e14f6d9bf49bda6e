import { endpointHash, sign, verify, type Keys } from '../sign';
import type { LoadSnapshot } from '../load';
import { NAME_PATTERN } from '../names';

import { MEMBER_STATES, type MemberState } from '../outcomes';

export { MEMBER_STATES, type MemberState };

/** One instance as stored in the discovery collection. */
export interface EntryDoc {
  readonly _id: string;
  readonly service: string;
  readonly endpoint: string;
  readonly endpointHash: string;
  readonly balancer: string | null;
  readonly state: MemberState;
  readonly appVersion: string | null;
  readonly pkgVersion: string;
  readonly host: string;
  readonly pid: number;
  readonly startedAt: Date;
  readonly heartbeatAt: Date;
  readonly heartbeatMs: number;
  /** Bumped on every heartbeat; observers time its changes with their own clock (no clock-skew trust). */
  readonly seq: number;
  /** How long the instance had been serving when it wrote this (0 unless serving): slow start. */
  readonly servingMs: number;
  readonly load: LoadSnapshot;
  readonly sig: string | null;
}

/** The identity a signature covers: what decides where traffic may be proxied. */
function identity(doc: Pick<EntryDoc, '_id' | 'service' | 'endpoint' | 'balancer'>): string[] {
  return ['ddp-cluster/entry/v1', doc._id, doc.service, doc.endpoint, doc.balancer ?? ''];
}

export function signEntry(keys: Keys | null, doc: Omit<EntryDoc, 'sig'>): EntryDoc {
  return { ...doc, sig: keys === null ? null : sign(keys, identity(doc)) };
}

export type EntryCheck =
  | { readonly ok: true; readonly entry: EntryDoc }
  | { readonly ok: false; readonly id: string; readonly reason: string };


/**
 * Turns an untrusted document from the collection into an entry, or says why it is ignored.
 * With keys, the signature must verify; without keys, any well-formed entry is accepted.
 */
export function checkEntry(raw: unknown, keys: Keys | null): EntryCheck {
  if (typeof raw !== 'object' || raw === null) return bad('?', 'not a document');
  const d = raw as Record<string, unknown>;
  const id = typeof d._id === 'string' ? d._id.slice(0, 64) : safeString(d._id);
  if (typeof d._id !== 'string' || !NAME_PATTERN.test(d._id)) return bad(id, 'bad _id');
  if (typeof d.service !== 'string' || !NAME_PATTERN.test(d.service)) return bad(id, 'bad service');
  if (typeof d.endpoint !== 'string' || !isHttpUrl(d.endpoint)) return bad(id, 'bad endpoint');
  if (d.balancer !== null && d.balancer !== undefined && (typeof d.balancer !== 'string' || !isHttpUrl(d.balancer))) {
    return bad(id, 'bad balancer');
  }
  const balancer = typeof d.balancer === 'string' ? d.balancer : null;
  if (!(MEMBER_STATES as readonly unknown[]).includes(d.state)) return bad(id, 'bad state');
  if (!isDate(d.heartbeatAt) || !isDate(d.startedAt)) return bad(id, 'bad dates');
  if (keys !== null) {
    if (typeof d.sig !== 'string') return bad(id, 'unsigned');
    if (!verify(keys, identity({ _id: id, service: d.service, endpoint: d.endpoint, balancer }), d.sig)) {
      return bad(id, 'bad signature');
    }
  }
  const entry: EntryDoc = {
    _id: id,
    service: d.service,
    endpoint: d.endpoint,
    // Recomputed, never trusted: a forged hash must not alias another endpoint.
    endpointHash: endpointHash(d.endpoint),
    balancer,
    state: d.state as MemberState,
    appVersion: typeof d.appVersion === 'string' ? d.appVersion.slice(0, 128) : null,
    pkgVersion: typeof d.pkgVersion === 'string' ? d.pkgVersion.slice(0, 32) : '?',
    host: typeof d.host === 'string' ? d.host.slice(0, 255) : '?',
    pid: num(d.pid, 0),
    startedAt: d.startedAt,
    heartbeatAt: d.heartbeatAt,
    heartbeatMs: num(d.heartbeatMs, 1000),
    seq: num(d.seq, 0),
    servingMs: num(d.servingMs, 0),
    load: loadOf(d.load),
    sig: typeof d.sig === 'string' ? d.sig : null,
  };
  return { ok: true, entry };
}

function bad(id: string, reason: string): EntryCheck {
  return { ok: false, id, reason };
}

/** For log lines about a rejected document: never throws, never long. */
function safeString(v: unknown): string {
  try {
    return String(v).slice(0, 64);
  } catch {
    return '?';
  }
}

function isDate(v: unknown): v is Date {
  return v instanceof Date && !Number.isNaN(v.getTime());
}

function isHttpUrl(s: string): boolean {
  // new URL() silently strips whitespace and control characters; the raw string is what we'd store.
  if (s.length > 2048 || /[\x00-\x20\x7f]/.test(s)) return false;
  try {
    const u = new URL(s);
    return (u.protocol === 'http:' || u.protocol === 'https:') && !u.username && !u.password;
  } catch {
    return false;
  }
}

function num(v: unknown, fallback: number): number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : fallback;
}

function loadOf(v: unknown): LoadSnapshot {
  const l = typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : {};
  const opened = num(l.opened, -1);
  const pending = num(l.pending, -1);
  const moved = num(l.moved, -1);
  return {
    sessions: num(l.sessions, 0),
    capacity: Math.max(1, num(l.capacity, 1)),
    elu: Math.min(1, num(l.elu, 0)),
    delayMs: num(l.delayMs, 0),
    cpu: num(l.cpu, 0),
    rss: num(l.rss, 0),
    ...(opened >= 0 ? { opened } : {}),
    ...(pending >= 0 ? { pending } : {}),
    ...(moved >= 0 ? { moved } : {}),
  };
}
