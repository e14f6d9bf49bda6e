/**
 * A shimmed Meteor 3 server, for testing the Meteor glue (server/) without the meteor tool.
 *
 * The shim puts on the global `Package` the real parts Meteor would give the glue, built only from
 * public facts of meteor/meteor's source:
 *   - WebApp (packages/webapp/webapp_server.js): `httpServer` is a real http.Server with sockjs
 *     0.3.24 installed and overshadowed exactly as ddp-server does (examples/node-ddp-app/app.ts);
 *     `addRuntimeConfigHook`, `onListening`, `encodeRuntimeConfig`/`decodeRuntimeConfig` behave like
 *     webapp's, including getBoilerplateAsync keeping a hook's result as the base of later requests.
 *     Pages carry the config the way boilerplate-generator/template-web.browser.js writes it.
 *   - Meteor: `startup` queues hooks until boot runs them in order, awaiting each
 *     (packages/meteor/startup_server.js, tools/static-assets/server/boot.js); `server.sessions`
 *     and `onConnection` (ddp-server/livedata_server.js, server_convenience.js); `absoluteUrl`.
 *   - DDP.connect: a real DDP client over a raw websocket with Meteor's connection lifecycle:
 *     status()/reconnect({ url })/disconnect() (socket-stream-client/common.js), retry timing
 *     (packages/retry/retry.js), methods re-sent on the next connection (livedata_connection.js).
 *
 * Each shimmed server runs in its own child process (this file is also the child's entry), so every
 * instance has its own module instances, signal handlers and sockjs session table, like separate
 * Meteor servers. The parent talks to a child over IPC; `spawnMeteor()` is the parent side.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import type http from 'node:http';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { ClusterApi, ConnectOptions, RegisterOptions } from '../../server/cluster';
import type {
  DdpConnection, DdpStatus, RuntimeConfig, RuntimeConfigHook, RuntimeConfigHookArgs, ServerPackages,
} from '../../server/meteor-env';
import { createDdpApp, type DdpApp } from '../../examples/node-ddp-app/app';
import { DdpError, wsDdp, type WsDdpClient } from '../../examples/node-ddp-app/clients';
import { waitForEvent } from './wait';

/* ------------------------------------------------------------------------------------------ */
/* webapp                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/** WebApp.encodeRuntimeConfig, as in webapp_server.js. */
export function encodeRuntimeConfig(config: RuntimeConfig): string {
  return JSON.stringify(encodeURIComponent(JSON.stringify(config)));
}

/** WebApp.decodeRuntimeConfig, as in webapp_server.js. */
export function decodeRuntimeConfig(encoded: string): RuntimeConfig {
  return JSON.parse(decodeURIComponent(JSON.parse(encoded) as string)) as RuntimeConfig;
}

const CONFIG_SCRIPT = /__meteor_runtime_config__ = JSON\.parse\(decodeURIComponent\(("(?:[^"\\]|\\.)*")\)\)/;

/** The runtime config of a served page, as the browser evaluates its inline script. */
export function runtimeConfigOfPage(html: string): RuntimeConfig {
  const encoded = CONFIG_SCRIPT.exec(html)?.[1];
  if (encoded === undefined) throw new Error(`no __meteor_runtime_config__ in page: ${html.slice(0, 200)}`);
  return decodeRuntimeConfig(encoded);
}

/** The encoded config string of a served page, byte for byte. */
export function encodedConfigOfPage(html: string): string {
  const encoded = CONFIG_SCRIPT.exec(html)?.[1];
  if (encoded === undefined) throw new Error('no __meteor_runtime_config__ in page');
  return encoded;
}

export const ARCHS = ['web.browser', 'web.browser.legacy', 'web.cordova'] as const;
type Arch = (typeof ARCHS)[number];

class ShimWebApp {
  readonly #hooks: RuntimeConfigHook[] = [];
  /** boilerplateByArch[arch].baseData.meteorRuntimeConfig */
  readonly #baseConfig = new Map<Arch, string>();
  /** runtimeConfig.isUpdatedByArch */
  readonly #updated = new Map<Arch, boolean>();
  /** The configs as generated, before any hook ran. */
  readonly generated = new Map<string, string>();
  #onListening: (() => void)[] | null = [];
  readonly encodeRuntimeConfig = encodeRuntimeConfig;
  readonly decodeRuntimeConfig = decodeRuntimeConfig;

  constructor(readonly httpServer: http.Server) {}

  addRuntimeConfigHook(hook: RuntimeConfigHook): { stop(): void; callback: RuntimeConfigHook } {
    this.#hooks.push(hook);
    return {
      callback: hook,
      stop: () => {
        const i = this.#hooks.indexOf(hook);
        if (i !== -1) this.#hooks.splice(i, 1);
      },
    };
  }

  onListening(f: () => void): void {
    if (this.#onListening) this.#onListening.push(f);
    else f();
  }

  /** WebAppInternals.generateBoilerplateInstance: `{ ...__meteor_runtime_config__, ...overrides }`. */
  generateBoilerplate(runtimeConfig: RuntimeConfig, overrides: Readonly<Record<Arch, RuntimeConfig>>): void {
    for (const arch of ARCHS) {
      const encoded = encodeRuntimeConfig({ ...runtimeConfig, ...overrides[arch] });
      this.#updated.set(arch, true);
      this.#baseConfig.set(arch, encoded);
      this.generated.set(arch, encoded);
    }
  }

  /** getBoilerplateAsync: hooks in order; a returned string replaces the base config for good. */
  async page(request: RuntimeConfigHookArgs['request'], arch: Arch): Promise<string> {
    for (const hook of [...this.#hooks]) {
      const encodedCurrentConfig = this.#baseConfig.get(arch) ?? encodeRuntimeConfig({});
      const result = await hook({ arch, request, encodedCurrentConfig, updated: this.#updated.get(arch) ?? false });
      if (result) this.#baseConfig.set(arch, result);
    }
    this.#updated.set(arch, false);
    const conf = this.#baseConfig.get(arch) ?? encodeRuntimeConfig({});
    return ['<html>', '<head>', '</head>', '<body>', '',
      `  <script type="text/javascript">__meteor_runtime_config__ = JSON.parse(decodeURIComponent(${conf}))</script>`,
      '', '</body>', '</html>'].join('\n');
  }

  listening(): void {
    const callbacks = this.#onListening ?? [];
    this.#onListening = null;
    for (const f of callbacks) f();
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Meteor                                                                                      */
/* ------------------------------------------------------------------------------------------ */

class ShimMeteor {
  readonly isServer = true;
  readonly isClient = false;
  readonly isCordova = false;
  readonly settings: { readonly public: Record<string, unknown> } = { public: {} };
  readonly server: { readonly sessions: DdpApp['sessions']; onConnection: DdpApp['onConnection'] };
  #startupHooks: (() => unknown)[] | null = [];

  constructor(app: DdpApp, private readonly rootUrl: string) {
    this.server = { sessions: app.sessions, onConnection: (cb) => app.onConnection(cb) };
  }

  startup(callback: () => unknown): void {
    if (this.#startupHooks) this.#startupHooks.push(callback);
    else void callback();
  }

  /** boot.js callStartupHooks: in order, awaited; hooks added meanwhile run at the end. */
  async runStartupHooks(): Promise<void> {
    for (let hook = this.#startupHooks?.shift(); hook; hook = this.#startupHooks?.shift()) await hook();
    this.#startupHooks = null;
  }

  absoluteUrl(path = ''): string {
    return `${this.rootUrl.replace(/\/+$/, '')}/${path}`;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* DDP.connect                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/** Retry._timeout with Meteor's defaults (packages/retry/retry.js). */
function retryTimeout(count: number): number {
  if (count < 2) return 10;
  return Math.min(5 * 60_000, 1000 * 2.2 ** count) * (Math.random() * 0.5 + 0.75);
}

/** A server-side DDP connection with Meteor's lifecycle, over a raw websocket to `<url>/websocket`. */
export class ShimConnection implements DdpConnection {
  #url: string;
  #status: { status: DdpStatus['status']; connected: boolean; retryCount: number } = { status: 'connecting', connected: false, retryCount: 0 };
  #client: WsDdpClient | null = null;
  #generation = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  readonly #events = new EventEmitter();

  constructor(url: string) {
    this.#url = url;
    this.#launch();
  }

  get url(): string {
    return this.#url;
  }

  status(): DdpStatus {
    return { ...this.#status };
  }

  reconnect(options: { readonly url?: string } = {}): void {
    if (options.url) this.#url = options.url;
    if (this.#status.connected) {
      if (options.url) this.#lost();
      return;
    }
    if (this.#status.status === 'connecting') this.#cleanup();
    clearTimeout(this.#retryTimer);
    this.#status.retryCount -= 1; // manual retries don't count
    this.#retryNow();
  }

  disconnect(): void {
    this.#cleanup();
    clearTimeout(this.#retryTimer);
    this.#status = { status: 'offline', connected: false, retryCount: 0 };
  }

  /** Methods without a result when the connection drops are sent again on the next one. */
  async callAsync(name: string, ...args: unknown[]): Promise<unknown> {
    for (;;) {
      const client = await this.#connected();
      try {
        return await client.call(name, ...args);
      } catch (err) {
        if (err instanceof DdpError || client === this.#client) throw err;
      }
    }
  }

  #connected(): Promise<WsDdpClient> {
    const client = this.#client;
    if (client && this.#status.connected) return Promise.resolve(client);
    return new Promise((resolve) => this.#events.once('connected', resolve));
  }

  #launch(): void {
    const generation = ++this.#generation;
    wsDdp(this.#url, { timeoutMs: 10_000 }).then((client) => {
      if (generation !== this.#generation) return void client.close().catch(() => undefined);
      this.#client = client;
      this.#status = { status: 'connected', connected: true, retryCount: 0 };
      void client.closed.then(() => {
        if (this.#client === client) this.#lost();
      });
      this.#events.emit('connected', client);
    }, () => {
      if (generation === this.#generation) this.#lost();
    });
  }

  #cleanup(): void {
    this.#generation++;
    const client = this.#client;
    this.#client = null;
    void client?.close().catch(() => undefined);
  }

  #lost(): void {
    this.#cleanup();
    this.#status = { status: 'waiting', connected: false, retryCount: this.#status.retryCount };
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#retryNow(), retryTimeout(this.#status.retryCount));
  }

  #retryNow(): void {
    this.#status = { status: 'connecting', connected: false, retryCount: this.#status.retryCount + 1 };
    this.#launch();
  }
}

/* ------------------------------------------------------------------------------------------ */
/* installing the shim                                                                         */
/* ------------------------------------------------------------------------------------------ */

export interface MeteorShim {
  readonly app: DdpApp;
  readonly Meteor: ShimMeteor;
  readonly WebApp: ShimWebApp;
  /** webapp's main(): generate the boilerplate, listen on 127.0.0.1:port, run onListening callbacks. */
  main(): Promise<string>;
}

/**
 * Builds the Meteor server parts and puts them on the global `Package`, as Meteor has done by the
 * time a package that uses webapp, ddp and ddp-server loads. Require server/index.ts after this.
 */
export function installMeteorShim(o: { readonly instanceId: string; readonly port: number; readonly env?: NodeJS.ProcessEnv }): MeteorShim {
  const env = o.env ?? process.env;
  const rootUrl = env.ROOT_URL ?? `http://127.0.0.1:${o.port}`;
  const app = createDdpApp({ instanceId: o.instanceId });
  const WebApp = new ShimWebApp(app.server);
  const Meteor = new ShimMeteor(app, rootUrl);
  const DDP = { connect: (url: string) => new ShimConnection(url) };
  serveBoilerplate(app.server, WebApp);

  // server_convenience.js copies DDP_DEFAULT_CONNECTION_URL; webapp adds per-arch overrides.
  const runtimeConfig: RuntimeConfig = {
    meteorRelease: 'METEOR@3.0.4', meteorEnv: { NODE_ENV: 'production', TEST_METADATA: '{}' }, PUBLIC_SETTINGS: {},
    ROOT_URL: rootUrl, ROOT_URL_PATH_PREFIX: '', appId: 'shim.app',
    ...(env.DDP_DEFAULT_CONNECTION_URL && { DDP_DEFAULT_CONNECTION_URL: env.DDP_DEFAULT_CONNECTION_URL }),
  };
  const overrides: Record<Arch, RuntimeConfig> = {
    'web.browser': { isModern: true },
    'web.browser.legacy': { isModern: false },
    'web.cordova': { DDP_DEFAULT_CONNECTION_URL: env.MOBILE_DDP_URL || Meteor.absoluteUrl(), ROOT_URL: env.MOBILE_ROOT_URL || Meteor.absoluteUrl() },
  };

  const packages = {
    meteor: { Meteor },
    webapp: { WebApp },
    'ddp-client': { DDP },
    'ddp-server': { DDPServer: {} },
    ddp: { DDP },
  } satisfies ServerPackages & Record<string, unknown>;
  Object.assign(globalThis, { Package: packages, __meteor_runtime_config__: runtimeConfig });

  return {
    app, Meteor, WebApp,
    async main() {
      WebApp.generateBoilerplate(runtimeConfig, overrides);
      await app.listen(o.port, '127.0.0.1');
      WebApp.listening();
      return app.url;
    },
  };
}

/**
 * Webapp's Express app answers every other GET with the boilerplate page. In Meteor it sits behind
 * sockjs in the listener chain; here it wraps the fixture's single 'request' listener and takes
 * only what Express would get, so the server still has exactly one 'request' listener.
 */
function serveBoilerplate(server: http.Server, webApp: ShimWebApp): void {
  const inner = server.listeners('request') as ((req: http.IncomingMessage, res: http.ServerResponse) => void)[];
  server.removeAllListeners('request');
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const pathname = new URL(req.url ?? '/', 'http://x').pathname;
    if (req.method !== 'GET' || /^\/(sockjs|websocket)(\/|$)/.test(pathname)) {
      for (const l of inner) l.call(server, req, res);
      return;
    }
    // WebApp.categorizeRequest: '/__cordova/...' is the Cordova arch; modern browsers get web.browser.
    const arch: Arch = pathname.startsWith('/__cordova/') ? 'web.cordova' : 'web.browser';
    const request = { browser: { name: 'unknown', major: 0, minor: 0, patch: 0 }, modern: true, path: pathname, arch, headers: req.headers, cookies: {} };
    webApp.page(request, arch).then((html) => {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(html);
    }, (err: unknown) => {
      res.writeHead(500);
      res.end(String(err));
    });
  });
}

/* ------------------------------------------------------------------------------------------ */
/* the child process: one shimmed Meteor server running the glue and some app code             */
/* ------------------------------------------------------------------------------------------ */

/** A Cluster API call the app's server code makes. */
export type ApiCall =
  | readonly ['connect', string, ConnectOptions?]
  | readonly ['register', string, RegisterOptions?]
  | readonly ['allowPublicAccess', readonly string[]];

/** What the shimmed app does besides serving DDP (its `whoami` method comes from the fixture). */
export interface ShimApp {
  /** Calls made by the app's server code when it loads. */
  readonly calls?: readonly ApiCall[];
  /** Calls made in a Meteor.startup callback the app registers when it loads. */
  readonly startupCalls?: readonly ApiCall[];
  /** Services the app's server code calls Cluster.discoverConnection for when it loads. */
  readonly discover?: readonly string[];
  /** The app's own SIGTERM handler: prints `app: SIGTERM handler ran`, exits 0 a second later. */
  readonly sigtermHandler?: boolean;
}

export interface MemberSummary {
  readonly id: string;
  readonly service: string;
  readonly state: string;
  readonly healthy: boolean;
  readonly balancer: string | null;
}

type ToParent =
  | { readonly type: 'listening'; readonly url: string }
  | { readonly type: 'fatal'; readonly message: string }
  | { readonly type: 'view'; readonly members: readonly MemberSummary[] }
  | { readonly type: 'reply'; readonly id: number; readonly ok: boolean; readonly value: unknown };

type Command =
  | { readonly cmd: 'status' }
  | { readonly cmd: 'api'; readonly call: ApiCall }
  | { readonly cmd: 'generated-config'; readonly arch: string }
  | { readonly cmd: 'discover'; readonly service: string }
  | { readonly cmd: 'call'; readonly connection: number; readonly method: string };

function applyCall(Cluster: ClusterApi, call: ApiCall): void {
  switch (call[0]) {
    case 'connect': return Cluster.connect(call[1], call[2]);
    case 'register': return Cluster.register(call[1], call[2]);
    case 'allowPublicAccess': return Cluster.allowPublicAccess(call[1]);
  }
}

async function childMain(): Promise<void> {
  const send = (msg: ToParent): void => void (process.connected && process.send?.(msg));
  // Like a Meteor server that fails to boot: print the error and exit 1 (once the parent has it).
  const fail = (err: unknown): void => {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`${message}\n`);
    if (process.connected && process.send) process.send({ type: 'fatal', message } satisfies ToParent, () => process.exit(1));
    else process.exit(1);
  };
  // Never outlive the test run.
  process.once('disconnect', () => process.exit(1));
  try {
    const shim = installMeteorShim({ instanceId: process.env.CLUSTER_INSTANCE_ID ?? 'shim', port: Number(process.env.PORT) });
    // What Meteor does when it loads the package's server module...
    const { Cluster } = require('../../server/index') as { Cluster: ClusterApi };
    // ...then the app's server code.
    const app = JSON.parse(process.env.SHIM_APP ?? '{}') as ShimApp;
    for (const call of app.calls ?? []) applyCall(Cluster, call);
    const connections = (app.discover ?? []).map((service) => Cluster.discoverConnection(service));
    if (app.startupCalls) shim.Meteor.startup(() => app.startupCalls?.forEach((call) => applyCall(Cluster, call)));
    if (app.sigtermHandler) {
      process.on('SIGTERM', () => {
        process.stdout.write('app: SIGTERM handler ran\n');
        setTimeout(() => process.exit(0), 1000);
      });
    }
    let last = '';
    Cluster.on('view', (view) => {
      const members = view.members.map((m) => ({ id: m.id, service: m.service, state: m.state, healthy: m.healthy, balancer: m.balancer }));
      const json = JSON.stringify(members);
      if (json !== last) send({ type: 'view', members });
      last = json;
    });
    await shim.Meteor.runStartupHooks();
    const url = await shim.main();

    const run = async (c: Command): Promise<unknown> => {
      switch (c.cmd) {
        case 'status': {
          const s = Cluster.status();
          return s && { config: s.config, stats: s.stats, members: s.view.members.map((m) => m.id) };
        }
        case 'api':
          return applyCall(Cluster, c.call);
        case 'generated-config':
          return shim.WebApp.generated.get(c.arch);
        case 'discover':
          return connections.push(Cluster.discoverConnection(c.service)) - 1;
        case 'call': {
          const conn = connections[c.connection];
          if (!conn) throw new Error(`no connection ${c.connection}`);
          return conn.callAsync(c.method);
        }
      }
    };
    process.on('message', (msg: Command & { readonly id: number }) => {
      run(msg).then((value) => send({ type: 'reply', id: msg.id, ok: true, value }),
        (err: unknown) => send({ type: 'reply', id: msg.id, ok: false, value: err instanceof Error ? err.message : String(err) }));
    });
    send({ type: 'listening', url });
  } catch (err) {
    fail(err);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* the parent side                                                                             */
/* ------------------------------------------------------------------------------------------ */

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** A shimmed Meteor server in a child process, as the test sees it. */
export class MeteorChild {
  readonly lines: string[] = [];
  url = '';
  view: readonly MemberSummary[] = [];
  exited: ExitInfo | null = null;
  readonly events = new EventEmitter();
  #nextId = 1;

  constructor(readonly id: string, readonly proc: ChildProcess) {
    for (const stream of [proc.stdout, proc.stderr]) {
      if (!stream) continue;
      createInterface({ input: stream }).on('line', (line) => {
        this.lines.push(line);
        this.events.emit('line', line);
      });
    }
    proc.on('message', (msg: ToParent) => {
      if (msg.type === 'view') this.view = msg.members;
      this.events.emit(msg.type === 'reply' ? `reply:${msg.id}` : msg.type, msg);
    });
    proc.once('exit', (code, signal) => {
      this.exited = { code, signal };
      this.events.emit('exit', this.exited);
    });
  }

  /** Runs a command in the child; rejects with the child's error message, on exit or after `timeoutMs`. */
  request<T>(command: Command, timeoutMs = 30_000): Promise<T> {
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.events.off(`reply:${id}`, onReply);
        this.events.off('exit', onExit);
      };
      const onReply = (msg: { ok: boolean; value: unknown }): void => {
        done();
        if (msg.ok) resolve(msg.value as T);
        else reject(new Error(String(msg.value)));
      };
      const onExit = (): void => {
        done();
        reject(new Error(`${this.id} exited before answering ${command.cmd}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.id}: no answer to ${command.cmd} after ${timeoutMs} ms`));
      }, timeoutMs);
      this.events.on(`reply:${id}`, onReply);
      this.events.on('exit', onExit);
      this.proc.send({ ...command, id });
    });
  }

  waitView(what: string, pred: (members: readonly MemberSummary[]) => boolean, timeoutMs = 30_000): Promise<readonly MemberSummary[]> {
    return waitForEvent(this.events, 'view', () => pred(this.view) && this.view, `${this.id}: ${what}`, timeoutMs);
  }

  waitLine(re: RegExp, timeoutMs = 30_000): Promise<string> {
    return waitForEvent(this.events, 'line', () => this.lines.find((l) => re.test(l)), `${this.id}: a line matching ${re}`, timeoutMs);
  }

  waitExit(timeoutMs = 30_000): Promise<ExitInfo> {
    return waitForEvent(this.events, 'exit', () => this.exited ?? undefined, `${this.id} to exit`, timeoutMs);
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<ExitInfo> {
    if (this.exited) return this.exited;
    this.proc.kill(signal);
    return this.waitExit();
  }
}

export interface SpawnOptions {
  readonly id: string;
  readonly port: number;
  /** CLUSTER_* and Meteor variables; the parent's CLUSTER_*, ROOT_URL and *_DDP_URL are not inherited. */
  readonly env?: Readonly<Record<string, string>>;
  readonly app?: ShimApp;
}

const INHERIT = (key: string): boolean =>
  !/^(CLUSTER_(?!TEST_)|ROOT_URL|MOBILE_|DDP_DEFAULT_CONNECTION_URL|HTTP_FORWARDED_COUNT)/.test(key);

/** Starts a shimmed Meteor server; resolves once it listens, rejects with its fatal error if it fails to boot. */
export async function spawnMeteor(o: SpawnOptions): Promise<MeteorChild> {
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => INHERIT(k)));
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, 'meteor-shim.ts')], {
    cwd: path.resolve(__dirname, '..', '..'),
    env: { ...env, CLUSTER_INSTANCE_ID: o.id, PORT: String(o.port), SHIM_APP: JSON.stringify(o.app ?? {}), ...o.env },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  const child = new MeteorChild(o.id, proc);
  const outcome = await new Promise<ToParent | ExitInfo>((resolve) => {
    child.events.once('listening', resolve);
    child.events.once('fatal', resolve);
    child.events.once('exit', resolve);
  });
  if ('type' in outcome && outcome.type === 'listening') {
    child.url = outcome.url;
    return child;
  }
  await child.kill();
  const detail = 'type' in outcome && outcome.type === 'fatal' ? outcome.message : `exited before listening:\n${child.lines.slice(-20).join('\n')}`;
  throw Object.assign(new Error(`${o.id}: ${detail}`), { child });
}

if (require.main === module) void childMain();
