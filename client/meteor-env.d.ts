/**
 * The parts of Meteor 3's client the client glue uses, read from the global `Package` at runtime.
 * From meteor/meteor: packages/ddp-client/client/client_convenience.js (Meteor.status/reconnect
 * are the default connection's), packages/socket-stream-client/common.js (status, reconnect),
 * packages/meteor/url_common.js (Meteor.absoluteUrl).
 */

/** `connection.status()`: socket-stream-client's currentStatus. */
export interface DdpStatus {
  readonly status: 'connected' | 'connecting' | 'failed' | 'waiting' | 'offline';
  readonly connected: boolean;
  readonly retryCount: number;
}

/** A Meteor DDP connection (livedata_connection.js); all its methods work, these are typed here. */
export interface DdpConnection {
  status(): DdpStatus;
  reconnect(options?: { readonly url?: string }): void;
  disconnect(): void;
  callAsync(name: string, ...args: unknown[]): Promise<unknown>;
}

export type DdpConnectOptions = Readonly<Record<string, unknown>>;

export interface MeteorClient {
  readonly isCordova: boolean;
  absoluteUrl(path?: string): string;
  status(): DdpStatus;
  reconnect(options?: { readonly url?: string }): void;
}

export interface ClientPackages {
  readonly meteor: { readonly Meteor: MeteorClient };
  readonly 'ddp-client': { readonly DDP: { connect(url: string, options?: DdpConnectOptions): DdpConnection } };
}
