/**
 * Typed outcomes, at the bottom of the import graph (this module imports nothing): the reason
 * codes of routing decisions, refusals and peer errors, the stats an instance reports, and the
 * errors it throws, each with a stable `code`.
 *
 * Every reason and error kind the balancer reports is a fixed, typed set of codes. Counters,
 * Prometheus labels and diagnostics-channel messages only ever use these, so no request can mint a
 * new one; whatever varies (a service name, an error message) goes to log fields only.
 */

/** What routing does with a request (route.ts). */
export const ROUTE_ACTIONS = ['serve', 'proxy', 'translate', 'pin', 'reject'] as const;
export type RouteAction = (typeof ROUTE_ACTIONS)[number];

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
  'carrying balancer',                // a polling session that its entry balancer carries: to that balancer
  'carrying balancer gone',           // ... which is down or unknown: the session is lost (404)
] as const;
export type RouteReason = (typeof ROUTE_REASONS)[number];

/** Why a request was refused before routing (classify.ts). */
export const MALFORMED_REASONS = [
  'URL too long', 'invalid URL', 'unknown endpoint', 'bad service name', 'not a sockjs path',
  'bad sockjs session path', 'unknown sockjs transport', 'not a carry upgrade',
] as const;
export type MalformedReason = (typeof MALFORMED_REASONS)[number];

/** Why a hop header was not trusted (hop.ts). */
export const HOP_REJECTIONS = [
  'malformed', 'no CLUSTER_SECRET to verify with', 'bad signature', 'expired', 'signed for another request',
  'signed for another instance', 'from this instance', 'replayed', 'made before this instance started',
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

// ---------------------------------------------------------------------------------------------
// Stats

/** The lifecycle state a member advertises in the registry. */
export const MEMBER_STATES = ['starting', 'serving', 'draining'] as const;
export type MemberState = (typeof MEMBER_STATES)[number];

/** The result of this instance's health checks of one peer (lib/balancer/health.ts). */
export interface HealthStatus {
  readonly up: boolean;
  /** Wall-clock time of the last result (check or passive observation). */
  readonly checkedAt: number;
  readonly rttMs: number | null;
  readonly reason: string;
  /** State the peer reported in its last answer (fresher than its registry entry). */
  readonly state: MemberState | null;
  /**
   * Sessions and capacity the peer reported, at `at` by its clock, the sessions it ever opened and
   * those it kept for itself that have not opened yet (both absent from older versions); null if
   * it didn't say.
   */
  readonly load: { readonly sessions: number; readonly capacity: number; readonly at: number; readonly opened?: number; readonly pending?: number } | null;
}

/** The balancer's counters (lib/balancer/gateway.ts). */
export interface BalancerStats {
  requests: number;
  upgrades: number;
  served: number;
  proxied: number;
  pinned: number;
  rejected: number;
  /** Requests that arrived from a peer with a verified hop header. */
  hopsIn: number;
  /** Requests and upgrades this instance forwarded to a peer. */
  hopsOut: number;
  retries: number;
  proxyErrors: number;
  untrustedHops: number;
  /**
   * Polling sessions here whose relaying peer's connection ended while an answer on it may have
   * been in flight (lib/balancer/relayed.ts): answered 404 since, so their clients reconnect.
   */
  lostRelayedPolls: number;
  /** Refused by the Origin allow-list (CLUSTER_ALLOWED_ORIGINS). */
  forbiddenOrigins: number;
  /** Refused because too many proxied requests were pending. */
  overloaded: number;
  pendingProxies: number;
  byTransport: Record<string, number>;
  /** Requests and upgrades forwarded to a peer, by transport. */
  proxiedByTransport: Record<string, number>;
  /** Routing decisions by `<action>:<reason>`; reasons are the fixed codes above. */
  byReason: Partial<Record<`${RouteAction}:${RouteReason}`, number>>;
  sessionTable: number;
  openProxiedSockets: number;
  /** Polling requests of sessions this balancer carries to a peer over a websocket (lib/balancer/translate.ts). */
  translated: number;
  /** Carry websockets peers opened to this member (lib/balancer/carried.ts). */
  carriedIn: number;
  /** Polling sessions this balancer carries to peers now. */
  translatedSessions: number;
  /** Sessions peers carry to this member now. */
  carriedSessions: number;
  /** How this balancer reaches the member of a polling session it is the entry of (CLUSTER_POLLING_HOP, if it can translate). */
  pollingHop: 'translate' | 'relay';
}

/** A rebalancing episode of this instance (lib/rebalancer.ts): it started or stopped shedding. */
export interface RebalanceEvent {
  readonly at: number;
  readonly kind: 'start' | 'stop';
  readonly sessions: number;
  /** Fair share at the time (ramp-weighted). */
  readonly share: number;
  /** Sessions moved during the episode that stopped (stop events). */
  readonly moved?: number;
}

/** This instance's active rebalancing (lib/rebalancer.ts), in `cluster.stats().rebalance`. */
export interface RebalanceStats {
  readonly enabled: boolean;
  readonly shedding: boolean;
  /** Sessions closed by rebalancing so far. */
  readonly moved: number;
  /** Sessions closed by drains so far (same closer). */
  readonly drained: number;
  /** Fair share at the last decision (sessions), null before one. */
  readonly share: number | null;
  /** Times this instance started shedding. */
  readonly episodes: number;
  /** Decisions taken so far (ticks while enabled and not draining). */
  readonly decisions: number;
  readonly events: readonly RebalanceEvent[];
}

/** One of a primary's worker processes (CLUSTER_WORKERS_COUNT, lib/workers/primary.ts). */
export interface WorkerInfo {
  readonly index: number;
  readonly instanceId: string;
  readonly port: number;
  readonly pid: number | null;
  readonly up: boolean;
  readonly restarts: number;
}

/** A primary's connection handoff counters (lib/workers/handoff.ts). */
export interface HandoffStats {
  /** Connections passed to a worker. */
  handedOff: number;
  /** Connections served (or proxied) by this process. */
  kept: number;
  /** Heads that did not parse, were too long or too slow: served here. */
  unparsed: number;
  /** Sends to a worker that failed (served here instead). */
  sendFailed: number;
}

/** CLUSTER_WORKERS_COUNT: this process's role, its workers (primary) and handoff counts (lib/workers). */
export interface WorkersStats {
  readonly role: 'single' | 'primary' | 'worker';
  /** Worker: its number (CLUSTER_WORKER_ID). */
  readonly index?: number;
  /** Primary: its workers. */
  readonly workers?: readonly WorkerInfo[];
  readonly handoff?: HandoffStats;
  /** Worker: connections received from the primary. */
  readonly received?: number;
}

/** `cluster.stats()`: the balancer's counters plus this member's view of the cluster. */
export interface ClusterStats extends BalancerStats {
  readonly instanceId: string;
  /** Active health-check results per peer. */
  readonly health: Readonly<Record<string, HealthStatus>>;
  readonly discoveryRttMs: number | null;
  readonly state: MemberState;
  readonly sessions: number;
  readonly members: number;
  readonly healthyMembers: number;
  readonly discoveryOk: boolean;
  /** Active rebalancing (lib/rebalancer.ts): state, sessions moved and drained, recent events. */
  readonly rebalance: RebalanceStats;
  /** CLUSTER_WORKERS_COUNT: this process's role, its workers (primary) and handoff counts. */
  readonly workers: WorkersStats;
  /** How the SockJS requests served here reach the app: straight into sockjs (AttachOptions.sockjsEntry) or through the app's listeners. */
  readonly sockjsEntry: 'direct' | 'listeners';
  /** Load feeds (lib/balancer/feed.ts): peers whose feed this instance watches, and peers watching this instance's. */
  readonly loadFeeds: { readonly watching: number; readonly watchers: number };
}

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * The stable codes of the errors ddp-cluster throws (README, section Error codes). Match on
 * `err.code`, never on the message.
 */
export const ERROR_CODES = {
  /** A CLUSTER_* variable or attach() option can't be used (ConfigError: `variable`, `value`, `fix`). */
  DDPC_ERR_CONFIG: 'DDPC_ERR_CONFIG',
  /** The Cluster API was used out of order: connect()/register() twice, or after Meteor started. */
  DDPC_ERR_API_MISUSE: 'DDPC_ERR_API_MISUSE',
  /** Cluster.discoverConnection() was given something that is not a service name. */
  DDPC_ERR_SERVICE_NAME: 'DDPC_ERR_SERVICE_NAME',
  /** Cluster.discoverConnection() on an instance that is in no cluster. */
  DDPC_ERR_NOT_CLUSTERED: 'DDPC_ERR_NOT_CLUSTERED',
  /** The Meteor glue was loaded outside a Meteor 3 server or client that has the packages it needs. */
  DDPC_ERR_NOT_METEOR: 'DDPC_ERR_NOT_METEOR',
  /** The discovery database did not answer within the time allowed. */
  DDPC_ERR_DISCOVERY_TIMEOUT: 'DDPC_ERR_DISCOVERY_TIMEOUT',
  /** A request body was larger than the balancer reads before forwarding (answered 400). */
  DDPC_ERR_BODY_TOO_LARGE: 'DDPC_ERR_BODY_TOO_LARGE',
  /** A `ddp-cluster` command failed (`exitCode` is the process exit code). */
  DDPC_ERR_CLI: 'DDPC_ERR_CLI',
} as const;
export type ErrorCode = keyof typeof ERROR_CODES;

/** Base of every error ddp-cluster throws: a stable `code` and a message for people. */
export class ClusterError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = 'ClusterError';
    this.code = code;
  }
}
