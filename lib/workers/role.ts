/**
 * Issue 14, CLUSTER_WORKERS_COUNT: which part this process plays. The process started by the
 * operator (`node main.js`) is the primary: it holds the public port, serves like any member and
 * starts the workers. A worker is the same program started again by the primary, marked by
 * CLUSTER_WORKER_ID; it listens on a private port and is a full cluster member of its own.
 */
import type { ClusterConfig } from '../config';
import { ConfigError } from '../config';

export const WORKER_ID_ENV = 'CLUSTER_WORKER_ID';

export type Role =
  | { readonly kind: 'single' }
  | { readonly kind: 'primary'; readonly count: number }
  | { readonly kind: 'worker'; readonly index: number };

type Env = Readonly<Record<string, string | undefined>>;

export function roleOf(config: ClusterConfig, env: Env): Role {
  const raw = env[WORKER_ID_ENV];
  if (raw !== undefined && raw !== '') {
    const index = Number(raw);
    if (!Number.isInteger(index) || index < 1 || index > 256) {
      throw new ConfigError(WORKER_ID_ENV, JSON.stringify(raw), 'leave it unset: the primary sets it (1 to CLUSTER_WORKERS_COUNT) for the workers it starts');
    }
    return { kind: 'worker', index };
  }
  return config.workersCount > 0 ? { kind: 'primary', count: config.workersCount } : { kind: 'single' };
}

/** A worker's instance id: the primary's plus `-w<i>` (ids are at most 64 characters). */
export function workerInstanceId(primaryId: string, index: number): string {
  const suffix = `-w${index}`;
  return primaryId.slice(0, 64 - suffix.length) + suffix;
}

/**
 * The URL peers use to reach worker `index` listening on `port`: the primary's endpoint with the
 * worker's port (same host, so remote balancers reach it like any member), or loopback when the
 * primary has none (then only this machine can reach it).
 */
export function workerEndpoint(primaryEndpoint: string | null, port: number): string {
  if (primaryEndpoint === null) return `http://127.0.0.1:${port}`;
  const url = new URL(primaryEndpoint);
  url.port = String(port);
  return url.origin + url.pathname.replace(/\/+$/, '');
}

/**
 * A worker's own configuration, whatever the program passed to attach(): its id and endpoint are
 * the ones the primary assigned (an app's `Cluster.register({ endpoint })` names the primary's),
 * it takes new sessions at full weight (CLUSTER_SELF_WEIGHT is the primary's share) and starts no
 * workers of its own.
 */
export function workerConfig(config: ClusterConfig, env: Env): ClusterConfig {
  const role = roleOf(config, env);
  if (role.kind !== 'worker') return config;
  const port = Number(env.PORT);
  const instanceId = env.CLUSTER_INSTANCE_ID ?? workerInstanceId(config.instanceId, role.index);
  let endpointUrl = config.endpointUrl;
  if (Number.isInteger(port) && port > 0) {
    const own = endpointUrl === null ? null : new URL(endpointUrl);
    if (own === null || Number(own.port || (own.protocol === 'https:' ? 443 : 80)) !== port) endpointUrl = workerEndpoint(endpointUrl, port);
  }
  return Object.freeze({ ...config, instanceId, endpointUrl, selfWeight: 1, workersCount: 0 });
}
