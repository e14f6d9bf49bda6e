import { createHash, createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';

/** Keys a signer holds: `current` signs, all of them verify (secret rotation). */
export interface Keys {
  readonly current: string;
  readonly previous: string | null;
}

export function keysFrom(secret: string | null, previous: string | null): Keys | null {
  return secret === null ? null : { current: secret, previous };
}

// The unit separator can't appear in URLs or our identifiers, so joined fields can't be confused.
const SEP = '\x1f';

// Key objects made once per secret: every proxied request signs or verifies a hop header.
const keyObjects = new Map<string, KeyObject>();

function keyFor(secret: string): KeyObject {
  let key = keyObjects.get(secret);
  if (!key) {
    if (keyObjects.size > 16) keyObjects.clear();
    key = createSecretKey(Buffer.from(secret));
    keyObjects.set(secret, key);
  }
  return key;
}

export function hmac(secret: string, parts: readonly string[]): string {
  return createHmac('sha256', keyFor(secret)).update(parts.join(SEP)).digest('base64url');
}

export function sign(keys: Keys, parts: readonly string[]): string {
  return hmac(keys.current, parts);
}

/** Constant-time check against the current and, during rotation, the previous secret. */
export function verify(keys: Keys, parts: readonly string[], signature: unknown): boolean {
  if (typeof signature !== 'string' || signature.length === 0 || signature.length > 128) return false;
  const given = Buffer.from(signature);
  let ok = false;
  for (const secret of [keys.current, keys.previous]) {
    if (secret === null) continue;
    const want = Buffer.from(hmac(secret, parts));
    // Evaluate both secrets every time so timing doesn't reveal which one matched.
    if (want.length === given.length && timingSafeEqual(want, given)) ok = true;
  }
  return ok;
}

/** The short, URL-safe id of an endpoint used in pinned paths (`/cluster-ddp/<hash>/...`). */
export function endpointHash(endpointUrl: string): string {
  return createHash('sha256').update(endpointUrl).digest('hex').slice(0, 20);
}
