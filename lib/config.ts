import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { NAME_PATTERN } from './names';
import { ClusterError } from './outcomes';

/** Log levels in increasing severity; `silent` turns logging off. */
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The parsed, frozen configuration every part of the core reads. */
export interface ClusterConfig {
  readonly instanceId: string;
  readonly discoveryUrl: string | null;
  readonly collection: string;
  readonly service: string | null;
  readonly endpointUrl: string | null;
  readonly balancerUrl: string | null;
  readonly secret: string | null;
  readonly previousSecret: string | null;
  readonly publicServices: readonly string[];
  readonly uiService: string | null;
  readonly selfWeight: number;
  readonly capacity: number;
  readonly heartbeatMs: number;
  readonly staleMs: number;
  readonly viewStaleMs: number;
  readonly logLevel: LogLevel;
  readonly dashboardPath: string;
  readonly pathPrefix: string;
  readonly disableWebsockets: boolean;
  readonly disableSockjsCors: boolean;
  readonly useJsessionid: boolean;
  readonly appVersion: string | null;
  /** Dashboard login password; when null the dashboard password is derived from CLUSTER_SECRET. */
  readonly dashboardPassword: string | null;
  readonly healthIntervalMs: number;
  readonly healthTimeoutMs: number;
  /** Consecutive failed checks before a peer is down (HAProxy's `fall`). */
  readonly healthFall: number;
  /** Consecutive good checks before a down peer is up again (HAProxy's `rise`). */
  readonly healthRise: number;
  /** How long a drain spreads the closing of existing sessions over. */
  readonly drainWindowMs: number;
  /** How long a member that just started serving ramps its effective capacity. */
  readonly slowStartMs: number;
  /** Active rebalancing: a member above its fair share closes some sessions so they reconnect elsewhere. */
  readonly rebalance: boolean;
  /** Rebalancing closes at most this many sessions per second on this member. */
  readonly rebalanceRate: number;
  /** Relative tolerance over the fair share before a member sheds (0.1 = 10 %). */
  readonly rebalanceTolerance: number;
  /** Absolute tolerance, sessions: a member sheds only when above its share by both. */
  readonly rebalanceToleranceSessions: number;
  /** Sessions younger than this are never moved by rebalancing. */
  readonly rebalanceMinAgeMs: number;
  /** Origins allowed to open websocket and SockJS sessions; empty = any (Meteor's default). */
  readonly allowedOrigins: readonly string[];
  /**
   * Meteor's HTTP_FORWARDED_COUNT: how many proxies in front of this instance are trusted to set
   * X-Forwarded-*. 0: those headers are ignored.
   */
  readonly forwardedCount: number;
  /**
   * CLUSTER_WORKERS_COUNT (issue 14): worker processes this process starts and hands connections
   * to (lib/workers); 0 = none. `auto` in the environment is os.availableParallelism().
   */
  readonly workersCount: number;
  /**
   * CLUSTER_POLLING_HOP: how a balancer reaches the member of a polling session it is the entry of.
   * `translate` (default): it terminates the client's SockJS polling and carries the session to the
   * member over one websocket (lib/balancer/translate.ts); `relay`: it forwards every poll and send.
   */
  readonly pollingHop: PollingHop;
}

export const POLLING_HOPS = ['translate', 'relay'] as const;
export type PollingHop = (typeof POLLING_HOPS)[number];

/** What callers may pass in JS; every field is optional and wins over the environment. */
export type ClusterOptions = { readonly [K in keyof ClusterConfig]?: ClusterConfig[K] | undefined };

type Env = Readonly<Record<string, string | undefined>>;

/** A configuration value that can't be used: names the variable, the bad value and the fix. */
export class ConfigError extends ClusterError {
  readonly variable: string;
  readonly value: string;
  readonly fix: string;

  constructor(variable: string, value: string, fix: string) {
    super('DDPC_ERR_CONFIG', `${variable}=${value} is invalid: ${fix}`);
    this.name = 'ConfigError';
    this.variable = variable;
    this.value = value;
    this.fix = fix;
  }
}

interface Field<T> {
  readonly env: string;
  readonly aliases?: readonly string[];
  readonly secret?: boolean;
  readonly parse: (raw: string, show: string) => T;
}

const MIN_SECRET_BYTES = 16;
const MIN_HEARTBEAT_MS = 1000;

function fail(field: { env: string }, show: string, fix: string): never {
  throw new ConfigError(field.env, show, fix);
}

function httpUrl(env: string): Field<string> {
  const field: Field<string> = {
    env,
    parse(raw, show) {
      let url: URL;
      try {
        url = new URL(raw);
      } catch {
        return fail(field, show, 'use an absolute http(s) URL, e.g. http://10.0.0.5:3000');
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') {
        fail(field, show, `use http:// or https:// (got ${url.protocol}), e.g. http://10.0.0.5:3000`);
      }
      if (url.search || url.hash || url.username || url.password) {
        fail(field, show, 'remove the query string, fragment and credentials from the URL');
      }
      return url.origin + url.pathname.replace(/\/+$/, '');
    },
  };
  return field;
}

function integer(env: string, min: number, max: number, example: string): Field<number> {
  const field: Field<number> = {
    env,
    parse(raw, show) {
      const n = Number(raw.trim());
      if (!Number.isInteger(n) || n < min || n > max) {
        fail(field, show, `use a whole number from ${min} to ${max}, e.g. ${example}`);
      }
      return n;
    },
  };
  return field;
}

const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000 };

/** Durations are milliseconds, or a number with an `ms`, `s` or `m` suffix ("1500", "1.5s"). */
function duration(env: string, minMs: number, example: string): Field<number> {
  const field: Field<number> = {
    env,
    parse(raw, show) {
      const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(raw);
      const ms = m ? Math.round(Number(m[1]) * (UNIT_MS[m[2] ?? 'ms'] ?? 1)) : NaN;
      if (!Number.isFinite(ms) || ms < minMs) {
        fail(field, show, `use milliseconds of at least ${minMs}, or a value like "${example}"`);
      }
      return ms;
    },
  };
  return field;
}


function name(env: string): Field<string> {
  const field: Field<string> = {
    env,
    parse(raw, show) {
      const v = raw.trim();
      if (!NAME_PATTERN.test(v)) fail(field, show, 'use 1-64 letters, digits, "_" or "-", starting with a letter or digit, e.g. web');
      return v;
    },
  };
  return field;
}

function nameList(env: string): Field<readonly string[]> {
  const one = name(env);
  return {
    env,
    parse(raw, show) {
      const names = raw.split(',').map((s) => s.trim()).filter(Boolean);
      return Object.freeze([...new Set(names.map((n) => one.parse(n, show)))]);
    },
  };
}

function secret(env: string): Field<string> {
  const field: Field<string> = {
    env,
    secret: true,
    parse(raw, show) {
      if (Buffer.byteLength(raw) < MIN_SECRET_BYTES) {
        fail(field, show, `use at least ${MIN_SECRET_BYTES} bytes, e.g. the output of \`openssl rand -hex 32\``);
      }
      return raw;
    },
  };
  return field;
}

const FIELDS: { readonly [K in keyof ClusterConfig]: Field<ClusterConfig[K]> } = {
  instanceId: name('CLUSTER_INSTANCE_ID'),
  discoveryUrl: {
    env: 'CLUSTER_DISCOVERY_URL',
    secret: true, // may embed credentials
    parse(raw, show) {
      if (!/^mongodb(\+srv)?:\/\/[^/\s]+/.test(raw.trim())) {
        fail(FIELDS.discoveryUrl, show, 'use a MongoDB URL: mongodb://host:27017/db or mongodb+srv://host/db');
      }
      return raw.trim();
    },
  },
  collection: {
    env: 'CLUSTER_COLLECTION',
    parse(raw, show) {
      const v = raw.trim();
      if (!/^[A-Za-z_][A-Za-z0-9_.-]{0,119}$/.test(v) || v.startsWith('system.')) {
        fail(FIELDS.collection, show, 'use a plain collection name, e.g. clusterEndpoints');
      }
      return v;
    },
  },
  service: name('CLUSTER_SERVICE'),
  endpointUrl: httpUrl('CLUSTER_ENDPOINT_URL'),
  balancerUrl: httpUrl('CLUSTER_BALANCER_URL'),
  secret: secret('CLUSTER_SECRET'),
  previousSecret: secret('CLUSTER_SECRET_PREVIOUS'),
  publicServices: nameList('CLUSTER_PUBLIC_SERVICES'),
  uiService: name('CLUSTER_UI_SERVICE'),
  selfWeight: {
    env: 'CLUSTER_SELF_WEIGHT',
    parse(raw, show) {
      const n = Number(raw.trim());
      if (raw.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) {
        fail(FIELDS.selfWeight, show, 'use a number from 0 (only proxy) to 1 (serve a full share here), e.g. 0.5');
      }
      return n;
    },
  },
  capacity: integer('CLUSTER_CAPACITY', 1, 10_000_000, '2000'),
  forwardedCount: integer('HTTP_FORWARDED_COUNT', 0, 100, '1'),
  heartbeatMs: duration('CLUSTER_HEARTBEAT_INTERVAL', MIN_HEARTBEAT_MS, '1s'),
  staleMs: duration('CLUSTER_STALE_HORIZON', 2000, '5s'),
  viewStaleMs: duration('CLUSTER_VIEW_STALE_AFTER', 1000, '30s'),
  logLevel: {
    env: 'CLUSTER_LOG_LEVEL',
    parse(raw, show) {
      const v = raw.trim().toLowerCase();
      if (!(LOG_LEVELS as readonly string[]).includes(v)) fail(FIELDS.logLevel, show, `use one of ${LOG_LEVELS.join(', ')}`);
      return v as LogLevel;
    },
  },
  dashboardPath: urlPath('CLUSTER_DASHBOARD_PATH', false),
  pathPrefix: urlPath('ROOT_URL_PATH_PREFIX', true),
  disableWebsockets: flag('DISABLE_WEBSOCKETS'),
  disableSockjsCors: flag('DISABLE_SOCKJS_CORS'),
  useJsessionid: flag('USE_JSESSIONID'),
  dashboardPassword: {
    env: 'CLUSTER_DASHBOARD_PASSWORD',
    secret: true,
    parse(raw, show) {
      if (Buffer.byteLength(raw) < 12) fail(FIELDS.dashboardPassword, show, 'use at least 12 characters');
      return raw;
    },
  },
  healthIntervalMs: duration('CLUSTER_HEALTH_INTERVAL', 100, '500ms'),
  healthTimeoutMs: duration('CLUSTER_HEALTH_TIMEOUT', 50, '1s'),
  healthFall: integer('CLUSTER_HEALTH_FALL', 1, 100, '2'),
  healthRise: integer('CLUSTER_HEALTH_RISE', 1, 100, '2'),
  drainWindowMs: duration('CLUSTER_DRAIN_WINDOW', 0, '30s'),
  slowStartMs: duration('CLUSTER_SLOW_START', 0, '30s'),
  rebalance: {
    env: 'CLUSTER_REBALANCE',
    parse(raw, show) {
      const v = raw.trim().toLowerCase();
      if (['1', 'on', 'true', 'yes'].includes(v)) return true;
      if (['0', 'off', 'false', 'no'].includes(v)) return false;
      return fail(FIELDS.rebalance, show, 'use 1 (on, the default) or 0 (off)');
    },
  },
  rebalanceRate: {
    env: 'CLUSTER_REBALANCE_RATE',
    parse(raw, show) {
      const n = Number(raw.trim());
      if (raw.trim() === '' || !Number.isFinite(n) || n <= 0 || n > 10_000) {
        fail(FIELDS.rebalanceRate, show, 'use sessions closed per second per member, more than 0 and at most 10000, e.g. 5 (turn rebalancing off with CLUSTER_REBALANCE=0)');
      }
      return n;
    },
  },
  rebalanceTolerance: {
    env: 'CLUSTER_REBALANCE_TOLERANCE',
    parse(raw, show) {
      const t = raw.trim();
      const pct = /^(\d+(?:\.\d+)?)\s*%$/.exec(t);
      const n = pct ? Number(pct[1]) / 100 : Number(t);
      if (t === '' || !Number.isFinite(n) || n < 0.01 || n > 10) {
        fail(FIELDS.rebalanceTolerance, show, 'use a fraction of the fair share from 0.01 to 10, or a percentage, e.g. 0.1 or 10%');
      }
      return n;
    },
  },
  rebalanceToleranceSessions: integer('CLUSTER_REBALANCE_TOLERANCE_SESSIONS', 1, 1_000_000, '10'),
  rebalanceMinAgeMs: duration('CLUSTER_REBALANCE_MIN_AGE', 0, '60s'),
  allowedOrigins: {
    env: 'CLUSTER_ALLOWED_ORIGINS',
    parse(raw, show) {
      const origins = raw.split(',').map((o) => o.trim()).filter(Boolean);
      for (const o of origins) {
        let ok = false;
        try {
          const u = new URL(o);
          ok = (u.protocol === 'http:' || u.protocol === 'https:') && u.origin === o.replace(/\/+$/, '');
        } catch {
          ok = false;
        }
        if (!ok) fail(FIELDS.allowedOrigins, show, `list origins like https://app.example.com (scheme://host[:port], no path); ${JSON.stringify(o)} is not one`);
      }
      return Object.freeze(origins.map((o) => o.replace(/\/+$/, '')));
    },
  },
  workersCount: {
    env: 'CLUSTER_WORKERS_COUNT',
    parse(raw, show) {
      const v = raw.trim().toLowerCase();
      if (v === 'auto') return availableParallelism();
      const n = Number(v);
      if (v === '' || !Number.isInteger(n) || n < 0 || n > 256) {
        fail(FIELDS.workersCount, show, 'use auto (one worker per available core), a whole number from 0 to 256, or 0/unset for none');
      }
      return n;
    },
  },
  pollingHop: {
    env: 'CLUSTER_POLLING_HOP',
    parse(raw, show) {
      const v = raw.trim().toLowerCase();
      if (!(POLLING_HOPS as readonly string[]).includes(v)) {
        fail(FIELDS.pollingHop, show, 'use translate (carry each polling session over one websocket, the default) or relay (forward every poll)');
      }
      return v as PollingHop;
    },
  },
  appVersion: {
    env: 'CLUSTER_APP_VERSION',
    parse: (raw, show) => {
      const v = raw.trim();
      if (v.length > 128) fail(FIELDS.appVersion, show, 'use at most 128 characters, e.g. 1.4.2');
      return v;
    },
  },
};

/** Meteor's own switches: any non-empty value turns them on. */
function flag(env: string): Field<boolean> {
  return { env, parse: (raw) => raw !== '' && raw !== '0' && raw.toLowerCase() !== 'false' };
}

function urlPath(env: string, emptyAllowed: boolean): Field<string> {
  const field: Field<string> = {
    env,
    parse(raw, show) {
      let v = raw.trim().replace(/\/+$/, '');
      if (v !== '' && !v.startsWith('/')) v = '/' + v;
      if ((!emptyAllowed && v === '') || !/^(\/[A-Za-z0-9._~-]+)*$/.test(v)) {
        fail(field, show, `use a path of plain segments, e.g. ${emptyAllowed ? '/app' : '/cluster'}`);
      }
      return v;
    },
  };
  return field;
}

/** Every environment variable the config reads (README's table must list them all). */
export const CONFIG_ENV_VARS: readonly string[] = Object.freeze(Object.values(FIELDS).map((f: Field<unknown>) => f.env));

function defaults(): ClusterConfig {
  return {
    instanceId: randomBytes(9).toString('base64url'),
    discoveryUrl: null,
    collection: 'clusterEndpoints',
    service: null,
    endpointUrl: null,
    balancerUrl: null,
    secret: null,
    previousSecret: null,
    publicServices: Object.freeze([]),
    uiService: null,
    selfWeight: 1,
    capacity: 1000,
    forwardedCount: 0,
    heartbeatMs: 1000,
    staleMs: 5000,
    viewStaleMs: 30_000,
    logLevel: 'info',
    dashboardPath: '/cluster',
    pathPrefix: '',
    disableWebsockets: false,
    disableSockjsCors: false,
    useJsessionid: false,
    appVersion: null,
    dashboardPassword: null,
    healthIntervalMs: 500,
    healthTimeoutMs: 1000,
    healthFall: 2,
    healthRise: 2,
    drainWindowMs: 30_000,
    slowStartMs: 30_000,
    rebalance: true,
    rebalanceRate: 5,
    rebalanceTolerance: 0.1,
    rebalanceToleranceSessions: 10,
    rebalanceMinAgeMs: 60_000,
    allowedOrigins: Object.freeze([]),
    workersCount: 0,
    pollingHop: 'translate',
  };
}

function shown(field: Field<unknown>, raw: string): string {
  return field.secret ? `<redacted, ${Buffer.byteLength(raw)} bytes>` : JSON.stringify(raw);
}

/**
 * Builds the configuration once: defaults, then environment variables, then JS options.
 * Throws a ConfigError naming the first bad variable; never includes a secret in the message.
 */
export function parseConfig(options: ClusterOptions = {}, env: Env = process.env): ClusterConfig {
  const out: Record<string, unknown> = { ...defaults() };
  for (const key of Object.keys(FIELDS) as (keyof ClusterConfig)[]) {
    const field = FIELDS[key] as Field<unknown>;
    const raw = env[field.env];
    if (raw !== undefined && raw !== '') out[key] = field.parse(raw, shown(field, raw));
    const opt = options[key];
    if (opt !== undefined) out[key] = fromOption(key, field, opt);
  }
  return validate(Object.freeze(out) as unknown as ClusterConfig);
}

/** JS options go through the same parser as env vars, so both faces give the same errors. */
function fromOption(key: string, field: Field<unknown>, value: unknown): unknown {
  if (value === null) return null;
  const raw = Array.isArray(value) ? value.join(',') : String(value);
  const named = { ...field, env: `options.${key} (${field.env})` };
  try {
    return field.parse(raw, shown(field, raw));
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(named.env, err.value, err.fix);
    throw err;
  }
}

function validate(c: ClusterConfig): ClusterConfig {
  if (c.staleMs < 2 * c.heartbeatMs) {
    throw new ConfigError('CLUSTER_STALE_HORIZON', String(c.staleMs),
      `use at least twice CLUSTER_HEARTBEAT_INTERVAL (${c.heartbeatMs} ms), e.g. ${3 * c.heartbeatMs}`);
  }
  if (c.workersCount > 0 && c.discoveryUrl === null) {
    throw new ConfigError('CLUSTER_WORKERS_COUNT', String(c.workersCount),
      'set CLUSTER_DISCOVERY_URL too: each worker is a cluster member, found through the registry (the app\'s MONGO_URL works), or unset CLUSTER_WORKERS_COUNT');
  }
  if (c.previousSecret !== null && c.secret === null) {
    throw new ConfigError('CLUSTER_SECRET_PREVIOUS', '<redacted>', 'set CLUSTER_SECRET too: the previous secret only verifies, the current one signs');
  }
  return c;
}

/** The config with secrets replaced, for logs and the dashboard. */
export function redactedConfig(c: ClusterConfig): Record<string, unknown> {
  return {
    ...c,
    secret: c.secret === null ? null : '<redacted>',
    dashboardPassword: c.dashboardPassword === null ? null : '<redacted>',
    previousSecret: c.previousSecret === null ? null : '<redacted>',
    discoveryUrl: c.discoveryUrl === null ? null : c.discoveryUrl.replace(/\/\/[^@/]*@/, '//<redacted>@'),
  };
}
