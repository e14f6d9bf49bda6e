export { attach, type AttachOptions, type ClusterHandle } from './attach';
export { parseConfig, redactedConfig, ConfigError, LOG_LEVELS, type ClusterConfig, type ClusterOptions, type LogLevel } from './config';
export { Registry, type RegistryEvents, type RegistryOptions } from './discovery/registry';
export type { Member, MembershipView, DuplicateEndpoint } from './discovery/view';
export type { LoadSnapshot } from './load';
export { createLogger, type Logger, type LogSink } from './log';
export { classify, type RequestFacts, type Transport } from './balancer/classify';
export { route, type Decision, type RoutePolicy, type RouteState } from './balancer/route';
export {
  ClusterError, ERROR_CODES, ROUTE_ACTIONS, ROUTE_REASONS, MALFORMED_REASONS, HOP_REJECTIONS, ERROR_KINDS, MEMBER_STATES,
  type ErrorCode, type RouteAction, type RouteReason, type MalformedReason, type HopRejection, type ErrorKind,
  type BalancerStats, type ClusterStats, type HealthStatus, type MemberState,
} from './outcomes';
export { CHANNELS, type ClusterEvents, type RouteEvent, type ProxyErrorEvent, type PeerEvent, type DrainEvent } from './events';
export { endpointHash } from './sign';
export { pinnedPath } from './balancer/info';
export { rendezvous } from './balancer/rendezvous';
export { drainOnSignals, type Drainable, type ShutdownSignal } from './signals';
export { drainSessions, type DrainReport, type Closable } from './drain';
export { makeDrainRequest, checkDrainRequest, DRAIN_FIELD, type DrainRequest } from './commands';
export { PACKAGE_VERSION } from './version';
