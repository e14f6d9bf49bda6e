import {
  attach, ConfigError, createLogger, drainOnSignals, parseConfig, redactedConfig,
  type ClusterHandle, type ClusterOptions, type ClusterStats, type MembershipView, type RegistryEvents,
} from '../lib/index';
import { NAME_PATTERN } from '../lib/names';
import { ClusterError } from '../lib/outcomes';
import { ServiceConnection } from './discover';
import type { DdpConnection, DdpConnectOptions, ServerPackages } from './meteor-env';
import { pinDdpUrl } from './pin-ddp-url';
import { meteorSessionTraits } from './session-traits';
import { meteorSockjsEntry } from './sockjs-entry';

/** `Cluster.connect` options: any core option (JS wins over the CLUSTER_* variables), plus pinning. */
export interface ConnectOptions extends Omit<ClusterOptions, 'discoveryUrl'> {
  /** Point each page's DDP connection at the picked member's balancer URL (env CLUSTER_PIN_DDP_URL=1). */
  readonly pinDdpUrl?: boolean;
}

/** `Cluster.register` options, as in meteorhacks:cluster (CLUSTER_ENDPOINT_URL, CLUSTER_BALANCER_URL, ...). */
export interface RegisterOptions {
  readonly endpoint?: string;
  readonly balancer?: string;
  readonly uiService?: string;
  readonly selfWeight?: number;
}

export interface ClusterStatus {
  readonly config: Readonly<Record<string, unknown>>;
  readonly view: MembershipView;
  readonly stats: ClusterStats;
}

export type ClusterListener<E extends keyof RegistryEvents> = (...args: RegistryEvents[E]) => void;

export interface ClusterApi {
  connect(discoveryUrl: string, options?: ConnectOptions): void;
  register(service: string, options?: RegisterOptions): void;
  allowPublicAccess(services: string | readonly string[], ...more: string[]): void;
  /** A DDP connection to a healthy member of `service` that follows the cluster as members come and go. */
  discoverConnection(service: string, ddpOptions?: DdpConnectOptions): DdpConnection;
  /** Null until Meteor has started with a discovery URL. */
  status(): ClusterStatus | null;
  on<E extends keyof RegistryEvents>(event: E, listener: ClusterListener<E>): void;
  off<E extends keyof RegistryEvents>(event: E, listener: ClusterListener<E>): void;
}

/** Never resolves (RFC 2606): a discovered connection waits here, disconnected, for its first member. */
const NOWHERE = 'http://ddp-cluster.invalid';

type Writable<T> = { -readonly [K in keyof T]: T[K] };
interface Subscription { readonly event: string; readonly listener: unknown; readonly apply: (h: ClusterHandle) => void }

/** The env API and the JS API are two faces of one configuration, applied once by `start()`. */
export class MeteorCluster implements ClusterApi {
  readonly #meteor: ServerPackages;
  readonly #options: Writable<ClusterOptions> = {};
  readonly #publicServices = new Set<string>();
  readonly #subscriptions: Subscription[] = [];
  readonly #connections: ServiceConnection[] = [];
  #pin: boolean | undefined;
  #started = false;
  #handle: ClusterHandle | null = null;

  constructor(meteor: ServerPackages) {
    this.#meteor = meteor;
  }

  connect(discoveryUrl: string, options: ConnectOptions = {}): void {
    this.configurable('connect');
    if (this.#options.discoveryUrl !== undefined) {
      throw new ClusterError('DDPC_ERR_API_MISUSE', 'Cluster.connect() was called twice: this instance already has a discovery URL. '
        + 'Remove the second call (CLUSTER_DISCOVERY_URL sets it without code).');
    }
    const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(String(discoveryUrl))?.[1];
    if (scheme !== 'mongodb' && scheme !== 'mongodb+srv') {
      throw new ClusterError('DDPC_ERR_CONFIG', `Cluster.connect(): ${scheme ? `unknown discovery scheme "${scheme}:"` : 'the discovery URL has no scheme'}. `
        + 'ddp-cluster keeps its registry in MongoDB: use mongodb://host:27017/db or mongodb+srv://host/db '
        + '(any MongoDB-compatible server; the app\'s MONGO_URL works).');
    }
    const { pinDdpUrl: pin, ...core } = options;
    this.set({ ...core, discoveryUrl });
    if (pin !== undefined) this.#pin = pin;
  }

  register(service: string, options: RegisterOptions = {}): void {
    this.configurable('register');
    if (this.#options.service !== undefined) {
      throw new ClusterError('DDPC_ERR_API_MISUSE', `Cluster.register() was called twice: this instance is already registered as "${this.#options.service}" `
        + 'and an instance registers one service. Remove the second call (CLUSTER_SERVICE sets it without code).');
    }
    this.set({ service, endpointUrl: options.endpoint, balancerUrl: options.balancer, uiService: options.uiService, selfWeight: options.selfWeight });
  }

  allowPublicAccess(services: string | readonly string[], ...more: string[]): void {
    this.configurable('allowPublicAccess');
    const list = [...(typeof services === 'string' ? [services] : services), ...more];
    for (const s of parseConfig({ publicServices: list }, {}).publicServices) this.#publicServices.add(s);
  }

  discoverConnection(service: string, ddpOptions?: DdpConnectOptions): DdpConnection {
    if (!NAME_PATTERN.test(String(service))) {
      throw new ClusterError('DDPC_ERR_SERVICE_NAME', `Cluster.discoverConnection(): ${JSON.stringify(service)} is not a service name (1-64 letters, digits, "_" or "-")`);
    }
    if (this.#started && !this.#handle) {
      throw new ClusterError('DDPC_ERR_NOT_CLUSTERED', 'Cluster.discoverConnection(): this instance is not in a cluster; set CLUSTER_DISCOVERY_URL or call Cluster.connect()');
    }
    const connection = this.#meteor['ddp-client'].DDP.connect(NOWHERE, ddpOptions);
    connection.disconnect();
    const discovered = new ServiceConnection(connection, service, this.#connections.length);
    this.#connections.push(discovered);
    if (this.#handle) discovered.bind(this.#handle);
    return connection;
  }

  status(): ClusterStatus | null {
    const h = this.#handle;
    return h && { config: redactedConfig(h.config), view: h.view(), stats: h.stats() };
  }

  on<E extends keyof RegistryEvents>(event: E, listener: ClusterListener<E>): void {
    if (this.#handle) return this.#handle.on(event, listener);
    this.#subscriptions.push({ event, listener, apply: (h) => h.on(event, listener) });
  }

  off<E extends keyof RegistryEvents>(event: E, listener: ClusterListener<E>): void {
    this.#handle?.off(event, listener);
    const i = this.#subscriptions.findIndex((s) => s.event === event && s.listener === listener);
    if (i !== -1) this.#subscriptions.splice(i, 1);
  }

  /** Called once from Meteor.startup (server/index.ts); throws on a bad configuration, failing the boot. */
  start(env: NodeJS.ProcessEnv = process.env): void {
    if (this.#started) return;
    this.#started = true;
    const js: Writable<ClusterOptions> = { ...this.#options };
    if (this.#publicServices.size > 0) js.publicServices = [...new Set([...parseConfig({}, env).publicServices, ...this.#publicServices])];
    const config = parseConfig(js, env);
    if (config.discoveryUrl === null) {
      createLogger(config.logLevel).info('cluster.inactive', {
        note: 'neither CLUSTER_DISCOVERY_URL nor Cluster.connect(): this instance is not clustered',
        ...(this.#connections.length > 0 && { discoverConnection: 'discovered connections stay offline' }),
      });
      return;
    }
    const { WebApp } = this.#meteor.webapp;
    const { Meteor } = this.#meteor.meteor;
    // CLUSTER_WORKERS_COUNT (issue 14): the bundle's main.js runs again as each worker; attach()
    // finds its role. Not under `meteor run`, which restarts the server on every change.
    if (env.METEOR_PARENT_PID && config.workersCount > 0) {
      createLogger(config.logLevel).info('workers.off_in_development', { note: 'meteor run: CLUSTER_WORKERS_COUNT is ignored, one process serves' });
      js.workersCount = 0;
    }
    const sockjsEntry = meteorSockjsEntry(WebApp.httpServer, Meteor.server.stream_server, WebApp._timeoutAdjustmentRequestCallback);
    const handle = attach(WebApp.httpServer, {
      ...js, instanceId: config.instanceId, env,
      ...(sockjsEntry && { sockjsEntry }),
      sockjsServer: Meteor.server.stream_server?.server,
      sessionCount: () => Meteor.server.sessions.size,
      sessions: () => Meteor.server.sessions.values(),
      sessionTraits: meteorSessionTraits,
    });
    this.#handle = handle;
    for (const s of this.#subscriptions.splice(0)) s.apply(handle);
    if (this.#pin ?? pinFromEnv(env.CLUSTER_PIN_DDP_URL)) pinDdpUrl(WebApp, handle, env.MOBILE_DDP_URL);
    // SIGTERM/SIGINT: drain over CLUSTER_DRAIN_WINDOW and deregister, next to Meteor's and the
    // app's own listeners. Under `meteor run` (the tool sets METEOR_PARENT_PID, runners/run-app.js)
    // every code change restarts the server with SIGTERM: deregister at once, don't pace a drain.
    drainOnSignals(env.METEOR_PARENT_PID ? { drain: async () => handle.setState('draining'), close: () => handle.close() } : handle);
    for (const c of this.#connections) c.bind(handle);
  }

  private configurable(method: string): void {
    if (this.#started) {
      throw new ClusterError('DDPC_ERR_API_MISUSE', `Cluster.${method}() was called after Meteor started: the cluster is configured once, at startup. `
        + 'Call it at the top level of your server code or in Meteor.startup, or use the CLUSTER_* environment variables.');
    }
  }

  /** Validates JS options with the env parser (same rules, errors name `options.x`) before keeping them. */
  private set(options: ClusterOptions): void {
    parseConfig({ ...this.#options, ...options }, {});
    for (const [key, value] of Object.entries(options)) if (value !== undefined) Object.assign(this.#options, { [key]: value });
  }
}

function pinFromEnv(raw: string | undefined): boolean {
  const v = (raw ?? '').trim().toLowerCase();
  if (v === '' || v === '0' || v === 'false') return false;
  if (v === '1' || v === 'true') return true;
  throw new ConfigError('CLUSTER_PIN_DDP_URL', JSON.stringify(raw), 'use 1 to pin each page\'s DDP connection to a balancer URL, or 0');
}
