/**
 * ddp-cluster's Meteor client entry (package.js `api.mainModule`): `Cluster.discoverConnection`
 * for public services, and the way back from a pinned balancer that stopped answering.
 */
import type { ClientPackages, DdpConnection, DdpConnectOptions } from './meteor-env';

export type { DdpConnection, DdpConnectOptions } from './meteor-env';

/** Written by the server's runtime config hook (server/pin-ddp-url.ts) when it pins the DDP URL. */
const FALLBACK_KEY = 'DDP_CLUSTER_FALLBACK_URL';
const FALLBACK_AFTER_RETRIES = 3;
const CHECK_EVERY_MS = 5_000;
const SERVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

function packages(): ClientPackages {
  const pkg = (globalThis as { Package?: Partial<ClientPackages> }).Package;
  if (!pkg?.meteor?.Meteor || !pkg['ddp-client']?.DDP) throw new Error('ddp-cluster: the client glue must run in a Meteor client that uses ddp');
  return pkg as ClientPackages;
}

export interface ClientClusterApi {
  /** A DDP connection to a public service (Cluster.allowPublicAccess on the server) through the balancers. */
  discoverConnection(service: string, ddpOptions?: DdpConnectOptions): DdpConnection;
}

export const Cluster: ClientClusterApi = {
  discoverConnection(service, ddpOptions) {
    if (!SERVICE_NAME.test(String(service))) {
      throw new Error(`Cluster.discoverConnection(): ${JSON.stringify(service)} is not a service name (1-64 letters, digits, "_" or "-")`);
    }
    const { Meteor } = packages().meteor;
    // Any balancer serves public services at /<service>/sockjs and /<service>/websocket. Cordova
    // pages come from the device, so they need the absolute (MOBILE_)ROOT_URL.
    return packages()['ddp-client'].DDP.connect(Meteor.isCordova ? Meteor.absoluteUrl(service) : `/${service}`, ddpOptions);
  },
};

/** A page pinned to a balancer that keeps failing goes back to its default URL, where any balancer routes it. */
function fallBackFromDeadPin(): void {
  const config = (globalThis as { __meteor_runtime_config__?: Readonly<Record<string, unknown>> }).__meteor_runtime_config__;
  const fallback = config?.[FALLBACK_KEY];
  if (typeof fallback !== 'string') return;
  const { Meteor } = packages().meteor;
  const timer = setInterval(() => {
    const s = Meteor.status();
    if (s.connected || s.status === 'offline' || s.status === 'failed' || s.retryCount < FALLBACK_AFTER_RETRIES) return;
    clearInterval(timer);
    Meteor.reconnect({ url: fallback });
  }, CHECK_EVERY_MS);
}

fallBackFromDeadPin();
