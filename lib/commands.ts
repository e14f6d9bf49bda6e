/**
 * Signed operator commands written into the registry, for instances to act on.
 *
 * A drain request is a field on the target member's own registry document (so the registry's
 * regular poll already reads it: no extra query), written by `ddp-cluster drain <id>`:
 *
 *   { _id: "<instance id>", ..., drainRequest: {
 *       v: 1, instanceId: "<instance id>", requestedAt: ISODate(...), nonce: "<22 base64url chars>",
 *       requestedBy: "<user@host, display only>", sig: "<base64url HMAC-SHA256>" } }
 *
 *   sig = HMAC-SHA256(CLUSTER_SECRET, ["ddp-cluster/command/v1", "drain", instanceId,
 *                      String(requestedAt in ms), nonce, requestedBy].join("\x1f")), base64url
 *
 * (lib/sign.ts `hmac`). An instance acts on it only when `checkDrainRequest` accepts it: signature
 * valid under the current or previous secret (constant time), addressed to this instance id,
 * requested after this process started and at most `maxAgeMs` ago (not more than `maxSkewMs` in
 * the future), and not a nonce it has already acted on. It then advertises `draining` (which is
 * the acknowledgement the CLI's `--wait` watches for) and may `$unset` the field.
 */
import { randomBytes } from 'node:crypto';
import { hmac, verify, type Keys } from './sign';

export const COMMAND_DOMAIN = 'ddp-cluster/command/v1';
/** The field of a member's registry document that carries a drain request. */
export const DRAIN_FIELD = 'drainRequest';
export const DRAIN_MAX_AGE_MS = 5 * 60_000;
export const DRAIN_MAX_SKEW_MS = 60_000;

export interface DrainRequest {
  readonly v: 1;
  readonly instanceId: string;
  readonly requestedAt: Date;
  readonly nonce: string;
  readonly requestedBy: string;
  readonly sig: string;
}

/** The fields the signature covers, in order. */
export function drainSignatureParts(r: Pick<DrainRequest, 'instanceId' | 'requestedAt' | 'nonce' | 'requestedBy'>): string[] {
  return [COMMAND_DOMAIN, 'drain', r.instanceId, String(r.requestedAt.getTime()), r.nonce, r.requestedBy];
}

export function makeDrainRequest(secret: string, instanceId: string,
  o: { now?: number; nonce?: string; requestedBy?: string } = {}): DrainRequest {
  const unsigned = {
    v: 1 as const,
    instanceId,
    requestedAt: new Date(o.now ?? Date.now()),
    nonce: o.nonce ?? randomBytes(16).toString('base64url'),
    requestedBy: (o.requestedBy ?? '').slice(0, 200),
  };
  return { ...unsigned, sig: hmac(secret, drainSignatureParts(unsigned)) };
}

export type DrainCheck =
  | { readonly ok: true; readonly request: DrainRequest }
  | { readonly ok: false; readonly reason: string };

export interface DrainCheckOptions {
  /** The instance deciding whether to act: its id and when its process started (ms). */
  readonly instanceId: string;
  readonly startedAt: number;
  readonly now: number;
  readonly maxAgeMs?: number;
  readonly maxSkewMs?: number;
  /** Nonces already acted on (replays of the same request are refused). */
  readonly seen?: (nonce: string) => boolean;
}

/** Validates an untrusted `drainRequest` value read from the registry. Never throws. */
export function checkDrainRequest(raw: unknown, keys: Keys, o: DrainCheckOptions): DrainCheck {
  if (typeof raw !== 'object' || raw === null) return bad('not a document');
  const d = raw as Record<string, unknown>;
  if (d.v !== 1) return bad('unknown version');
  if (typeof d.instanceId !== 'string' || typeof d.nonce !== 'string' || typeof d.requestedBy !== 'string') return bad('malformed');
  if (!(d.requestedAt instanceof Date) || Number.isNaN(d.requestedAt.getTime())) return bad('malformed');
  if (d.nonce.length < 16 || d.nonce.length > 64 || d.requestedBy.length > 200) return bad('malformed');
  const request: DrainRequest = {
    v: 1, instanceId: d.instanceId, requestedAt: d.requestedAt, nonce: d.nonce, requestedBy: d.requestedBy,
    sig: typeof d.sig === 'string' ? d.sig : '',
  };
  if (!verify(keys, drainSignatureParts(request), d.sig)) return bad('bad signature');
  if (request.instanceId !== o.instanceId) return bad('addressed to another instance');
  const at = request.requestedAt.getTime();
  if (at > o.now + (o.maxSkewMs ?? DRAIN_MAX_SKEW_MS)) return bad('requested in the future');
  if (o.now - at > (o.maxAgeMs ?? DRAIN_MAX_AGE_MS)) return bad('expired');
  if (at < o.startedAt) return bad('requested before this process started');
  if (o.seen?.(request.nonce)) return bad('already handled');
  return { ok: true, request };
}

function bad(reason: string): DrainCheck {
  return { ok: false, reason };
}
