/**
 * The parts of Meteor 3's client the client glue uses, read from the global `Package` at runtime.
 * From meteor/meteor: packages/ddp-client/client/client_convenience.js (Meteor.status/reconnect
 * are the default connection's), packages/socket-stream-client/common.js (status, reconnect),
 * packages/meteor/url_common.js (Meteor.absoluteUrl).
 */

// The DDP connection types are the same objects on both sides.
import type { DdpConnectOptions, DdpConnection, DdpStatus } from '../lib/ddp-connection';
export type { DdpConnectOptions, DdpConnection, DdpStatus } from '../lib/ddp-connection';

export interface MeteorClient {
  readonly isCordova: boolean;
  absoluteUrl(path?: string): string;
  status(): DdpStatus;
  reconnect(options?: { readonly url?: string }): void;
}

/** packages/tracker: `autorun` re-runs when a reactive source it read (Meteor.status()) changes. */
export interface TrackerComputation { stop(): void }
export interface TrackerClient {
  autorun(run: (computation: TrackerComputation) => void): TrackerComputation;
}

export interface ClientPackages {
  readonly meteor: { readonly Meteor: MeteorClient };
  /** Loaded with ddp (ddp-client uses it); optional so the glue still works without it. */
  readonly tracker?: { readonly Tracker: TrackerClient };
  readonly 'ddp-client': { readonly DDP: { connect(url: string, options?: DdpConnectOptions): DdpConnection } };
}
