/**
 * ddp-cluster's Meteor client entry (package.js `api.mainModule`): `Cluster.discoverConnection`
 * for public services, and the way back from a pinned balancer that stopped answering.
 */
import { FALLBACK_KEY, NAME_PATTERN } from '../lib/names';
import { ClusterError } from '../lib/outcomes';
import type { ClientPackages, DdpConnection, DdpConnectOptions, DdpStatus, MeteorClient } from './meteor-env';

export type { DdpConnection, DdpConnectOptions } from './meteor-env';

/**
 * Meteor retries a lost connection twice at once, then backs off (~5 s, then longer; packages/retry).
 * Two failed immediate retries mean the pinned balancer is gone: fall back before the long wait.
 */
const FALLBACK_AFTER_RETRIES = 2;
/**
 * The default URL's balancer may not have noticed the death yet (health checks take ~0.5-1 s) and
 * send the session to the dead member once more. So after falling back, a few quick retries
 * (jittered, bounded) before Meteor's back-off takes over again.
 */
const QUICK_RETRIES = 4;
const QUICK_RETRY_MS = 400;
/** Without Tracker (never in a real Meteor client), the status is polled this often instead. */
const POLL_EVERY_MS = 250;

function packages(): ClientPackages {
  const pkg = (globalThis as { Package?: Partial<ClientPackages> }).Package;
  if (!pkg?.meteor?.Meteor || !pkg['ddp-client']?.DDP) throw new ClusterError('DDPC_ERR_NOT_METEOR', 'ddp-cluster: the client glue must run in a Meteor client that uses ddp');
  return pkg as ClientPackages;
}

export interface ClientClusterApi {
  /** A DDP connection to a public service (Cluster.allowPublicAccess on the server) through the balancers. */
  discoverConnection(service: string, ddpOptions?: DdpConnectOptions): DdpConnection;
}

export const Cluster: ClientClusterApi = {
  discoverConnection(service, ddpOptions) {
    if (!NAME_PATTERN.test(String(service))) {
      throw new ClusterError('DDPC_ERR_SERVICE_NAME', `Cluster.discoverConnection(): ${JSON.stringify(service)} is not a service name (1-64 letters, digits, "_" or "-")`);
    }
    const { Meteor } = packages().meteor;
    // Any balancer serves public services at /<service>/sockjs and /<service>/websocket. Cordova
    // pages come from the device, so they need the absolute (MOBILE_)ROOT_URL.
    return packages()['ddp-client'].DDP.connect(Meteor.isCordova ? Meteor.absoluteUrl(service) : `/${service}`, ddpOptions);
  },
};

/** True once the pinned URL has failed its immediate retries and Meteor is waiting to try again. */
function pinIsDead(s: DdpStatus): boolean {
  return !s.connected && s.status === 'waiting' && s.retryCount >= FALLBACK_AFTER_RETRIES;
}

/**
 * Follows the default connection's status (one call per change); returns true when done. Falls
 * back once the pinned URL is dead, then retries quickly a few times until connected.
 */
function pinWatcher(Meteor: MeteorClient, fallback: string): (s: DdpStatus) => boolean {
  let fellBack = false;
  let quick = 0;
  let timer: ReturnType<typeof setTimeout> | null = null;
  return (s) => {
    if (!fellBack) {
      if (pinIsDead(s)) {
        fellBack = true;
        setTimeout(() => Meteor.reconnect({ url: fallback }), 0);
      }
      return false;
    }
    if (s.connected || quick >= QUICK_RETRIES) return true;
    const wait = s.status === 'waiting' && s.retryTime !== undefined ? s.retryTime - Date.now() : 0;
    if (timer === null && wait > 2 * QUICK_RETRY_MS) {
      quick++;
      timer = setTimeout(() => {
        timer = null;
        Meteor.reconnect();
      }, QUICK_RETRY_MS * (0.75 + Math.random() / 2));
    }
    return false;
  };
}

/**
 * A page pinned to a balancer that stopped answering goes back to its default URL, where any
 * balancer routes it, as soon as Meteor's immediate retries have failed (not after its back-off).
 */
function fallBackFromDeadPin(): void {
  const config = (globalThis as { __meteor_runtime_config__?: Readonly<Record<string, unknown>> }).__meteor_runtime_config__;
  const fallback = config?.[FALLBACK_KEY];
  if (typeof fallback !== 'string') return;
  const { meteor: { Meteor }, tracker } = packages();
  const watch = pinWatcher(Meteor, fallback);
  if (tracker) {
    // Meteor.status() is reactive: this runs on every status change of the default connection.
    tracker.Tracker.autorun((c) => {
      if (watch(Meteor.status())) c.stop();
    });
    return;
  }
  const timer = setInterval(() => {
    if (watch(Meteor.status())) clearInterval(timer);
  }, POLL_EVERY_MS);
}

fallBackFromDeadPin();
