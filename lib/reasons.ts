/**
 * Every reason and error kind the balancer reports, as a fixed, typed set of codes. Counters,
 * Prometheus labels and "log once" keys only ever use these, so no request can mint a new one;
 * whatever varies (a service name, an error message) goes to log fields only.
 */

/** Why a request was served, proxied, pinned or rejected (route.ts). */
export const ROUTE_REASONS = [
  'hop from a peer',                  // a verified hop: served without re-balancing
  'not clustered',                    // no service to balance: served here
  'service not public',               // the path names a service this balancer may not reach (404)
  'least loaded',                     // a new session, to the least-loaded eligible member
  'pinned endpoint',                  // the path names a member that takes it
  'pinned endpoint gone, fresh pick', // a new session pinned to a member that can't take it
  'pinned endpoint is down',          // an established session whose pinned member is down (404)
  'no such endpoint',                 // an established session pinned to an unknown member (404)
  'stateless sockjs resource',        // greeting, iframe, preflight: any member of the service
  'session table',                    // this balancer already sent the session there
  'rendezvous',                       // an unpinned polling session: the same member from every balancer
  'page',                             // a page, served here
  'ui cookie',                        // a page, to the member of the UI affinity cookie
  'ui service',                       // a page, to a member of the UI service
  'no ui member; page served here',   // a page with no UI member reachable
  'no eligible member; serving here', // nobody eligible, but this instance has the service
  'no healthy member',                // nobody eligible and not this instance's service (503)
] as const;
export type RouteReason = (typeof ROUTE_REASONS)[number];

/** Why a request was refused before routing (classify.ts). */
export const MALFORMED_REASONS = [
  'URL too long', 'invalid URL', 'unknown endpoint', 'bad service name', 'not a sockjs path',
  'bad sockjs session path', 'unknown sockjs transport',
] as const;
export type MalformedReason = (typeof MALFORMED_REASONS)[number];

/** Why a hop header was not trusted (hop.ts). */
export const HOP_REJECTIONS = [
  'malformed', 'no CLUSTER_SECRET to verify with', 'bad signature', 'expired', 'signed for another request',
  'signed for another instance', 'from this instance', 'replayed',
] as const;
export type HopRejection = (typeof HOP_REJECTIONS)[number];

/** What went wrong talking to a peer (proxy and health checks); anything else is 'other'. */
export const ERROR_KINDS = [
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE',
  'ECONNABORTED', 'socket-hang-up', 'bad-answer', 'wrong-instance', 'other',
] as const;
export type ErrorKind = (typeof ERROR_KINDS)[number];

const KNOWN_ERRORS: ReadonlySet<string> = new Set(ERROR_KINDS);

/** The error kind of any thrown value: its `code` when it is one of ours, else 'other'. */
export function errorKind(err: unknown): ErrorKind {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && KNOWN_ERRORS.has(code)) return code as ErrorKind;
  if (err instanceof Error && err.message === 'socket hang up') return 'socket-hang-up';
  return 'other';
}
