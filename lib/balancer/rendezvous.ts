import { createHash } from 'node:crypto';

/**
 * Highest-random-weight (rendezvous) choice of one id for a key: every balancer with the same
 * candidate list picks the same id with no shared state, and removing one candidate only moves
 * the keys that were on it.
 */
export function rendezvous<T extends { readonly id: string }>(key: string, candidates: readonly T[]): T | null {
  let best: T | null = null;
  let bestScore = -1n;
  for (const c of candidates) {
    const score = createHash('sha256').update(c.id).update('\x1f').update(key).digest().readBigUInt64BE(0);
    if (score > bestScore || (score === bestScore && best !== null && c.id < best.id)) {
      best = c;
      bestScore = score;
    }
  }
  return best;
}
