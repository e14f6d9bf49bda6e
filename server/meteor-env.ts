/**
 * The parts of Meteor 3 the server glue uses, as found at runtime on the global `Package`
 * (read in server/meteor.ts). Shapes are from meteor/meteor:
 *   packages/webapp/webapp_server.js           WebApp.httpServer, addRuntimeConfigHook, en/decodeRuntimeConfig
 *   packages/meteor/startup_server.js          Meteor.startup (queued until boot runs the hooks)
 *   packages/ddp-server/server_convenience.js  Meteor.server = new Server (livedata_server.js: sessions Map)
 *   packages/ddp-client, socket-stream-client/common.js   DDP.connect, status(), reconnect({ url })
 */
import type { IncomingHttpHeaders, Server } from 'node:http';
import type { DdpConnectOptions, DdpConnection } from '../lib/ddp-connection';

export type { DdpConnectOptions, DdpConnection, DdpStatus } from '../lib/ddp-connection';

/** A decoded `__meteor_runtime_config__`. */
export type RuntimeConfig = Record<string, unknown>;

/**
 * The hook's argument. `request` is `WebApp.categorizeRequest(req)` (headers, path, arch, ...),
 * not the IncomingMessage itself; only `headers` is relied on here.
 */
export interface RuntimeConfigHookArgs {
  readonly arch: string;
  readonly request: { readonly headers: IncomingHttpHeaders };
  readonly encodedCurrentConfig: string;
  readonly updated: boolean;
}

/** Returns a re-encoded config, or a falsy value to leave it as it is. */
export type RuntimeConfigHook = (args: RuntimeConfigHookArgs) => string | undefined | Promise<string | undefined>;

export interface WebAppServer {
  readonly httpServer: Server;
  addRuntimeConfigHook(hook: RuntimeConfigHook): { stop(): void };
  encodeRuntimeConfig(config: RuntimeConfig): string;
  decodeRuntimeConfig(encoded: string): RuntimeConfig;
  /** Lengthens the socket timeout while a request is open (webapp_server.js); ddp-server calls it after sockjs. */
  readonly _timeoutAdjustmentRequestCallback?: unknown;
}

export interface MeteorServer {
  startup(callback: () => void | Promise<void>): void;
  /** DDP sessions by id; a Session has close() (livedata_server.js). */
  readonly server: {
    readonly sessions: ReadonlyMap<string, { close(): void }>;
    /** ddp-server's StreamServer; its `server` is the sockjs server (stream_server.js). */
    readonly stream_server?: { readonly server?: unknown };
  };
}

export interface DdpStatic {
  connect(url: string, options?: DdpConnectOptions): DdpConnection;
}

/** `Package` as the glue reads it (packages it `api.use`s). */
export interface ServerPackages {
  readonly meteor: { readonly Meteor: MeteorServer };
  readonly webapp: { readonly WebApp: WebAppServer };
  readonly 'ddp-client': { readonly DDP: DdpStatic };
}
