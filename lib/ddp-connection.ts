/**
 * A Meteor DDP connection as both glues see it: the same objects on the server and the client
 * (packages/ddp-client livedata_connection.js, socket-stream-client/common.js). Types only.
 */

/** `connection.status()`: socket-stream-client's currentStatus. */
export interface DdpStatus {
  readonly status: 'connected' | 'connecting' | 'failed' | 'waiting' | 'offline';
  readonly connected: boolean;
  readonly retryCount: number;
  /** While `waiting`: when Meteor retries next (ms since the epoch). */
  readonly retryTime?: number;
}

/** A Meteor DDP connection (livedata_connection.js); the glue only moves it between members. */
export interface DdpConnection {
  status(): DdpStatus;
  reconnect(options?: { readonly url?: string }): void;
  disconnect(): void;
  callAsync(name: string, ...args: unknown[]): Promise<unknown>;
}

export type DdpConnectOptions = Readonly<Record<string, unknown>>;
