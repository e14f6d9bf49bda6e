/**
 * Lifecycle events on `node:diagnostics_channel`, so an app can observe routing, proxy errors,
 * peers going down and up, and drains without patching anything:
 *
 *   import diagnostics_channel from 'node:diagnostics_channel';
 *   diagnostics_channel.subscribe('ddp-cluster:peer', (m) => console.log(m));
 *
 * Every message names the instance that published it (`instanceId`): the channels are the
 * process's, shared by every attach() in it. The instance's own logger subscribes to them too
 * (logEvents()). Messages are built only while a channel has subscribers.
 */
import diagnosticsChannel from 'node:diagnostics_channel';
import type { Logger } from './log';
import type { ErrorKind, MemberState, RouteAction, RouteReason } from './outcomes';

export const CHANNELS = {
  /** Every routing decision of a balanced request or upgrade (and each new decision after a retry). */
  route: 'ddp-cluster:route',
  /** A forward to a peer failed, and what the retry policy does about it. */
  proxyError: 'ddp-cluster:proxy-error',
  /** A peer went down or came back up, as this instance's health checks see it. */
  peer: 'ddp-cluster:peer',
  /** A drain started, closed a batch of sessions, or finished. */
  drain: 'ddp-cluster:drain',
} as const;

export interface RouteEvent {
  readonly instanceId: string;
  readonly exchange: 'request' | 'upgrade';
  /** The sockjs transport, or `info`, `raw-websocket`, `sockjs-other`, `page`. */
  readonly transport: string;
  readonly action: RouteAction;
  readonly reason: RouteReason;
  /** The member proxied or pinned to; null when served here or rejected. */
  readonly member: string | null;
  /** 0 for the first decision; n after the request moved to its n-th other member. */
  readonly retry: number;
}

export interface ProxyErrorEvent {
  readonly instanceId: string;
  readonly exchange: 'request' | 'upgrade';
  readonly member: string;
  readonly endpoint: string;
  readonly error: ErrorKind;
  readonly cause: Error;
  /** Part of the peer's answer already reached the client. */
  readonly clientTouched: boolean;
  /** What happens next (lib/balancer/retry.ts). */
  readonly verdict: 'same-member' | 'other-member' | 'abandon' | 'give-up';
}

export interface PeerEvent {
  readonly instanceId: string;
  readonly member: string;
  readonly up: boolean;
  /** 'ok', or what failed (an error kind, 'bad-answer', 'wrong-instance', ...). */
  readonly reason: string;
  /** The state the peer reported in its last answer, if any. */
  readonly state: MemberState | null;
}

export type DrainEvent =
  | { readonly instanceId: string; readonly phase: 'start'; readonly windowMs: number; readonly sessions: number }
  | { readonly instanceId: string; readonly phase: 'batch'; readonly atMs: number; readonly closed: number; readonly remaining: number }
  | { readonly instanceId: string; readonly phase: 'done'; readonly closed: number; readonly tookMs: number; readonly batches: number };

export interface ClusterEvents {
  readonly route: RouteEvent;
  readonly proxyError: ProxyErrorEvent;
  readonly peer: PeerEvent;
  readonly drain: DrainEvent;
}

const channels = {
  route: diagnosticsChannel.channel(CHANNELS.route),
  proxyError: diagnosticsChannel.channel(CHANNELS.proxyError),
  peer: diagnosticsChannel.channel(CHANNELS.peer),
  drain: diagnosticsChannel.channel(CHANNELS.drain),
};

/** Publishes on `name` when anyone listens; `message` is only built then. */
export function publish<K extends keyof ClusterEvents>(name: K, message: () => ClusterEvents[K]): void {
  const channel = channels[name];
  if (channel.hasSubscribers) channel.publish(message());
}

/** Subscribes to the events of one instance; returns the unsubscribe. */
export function subscribe(instanceId: string, handlers: { readonly [K in keyof ClusterEvents]?: (message: ClusterEvents[K]) => void }): () => void {
  const subscribed: [string, (message: unknown) => void][] = [];
  for (const name of Object.keys(handlers) as (keyof ClusterEvents)[]) {
    const handler = handlers[name] as ((message: unknown) => void) | undefined;
    if (handler === undefined) continue;
    const listener = (message: unknown): void => {
      if ((message as { instanceId?: unknown }).instanceId === instanceId) handler(message);
    };
    diagnosticsChannel.subscribe(CHANNELS[name], listener);
    subscribed.push([CHANNELS[name], listener]);
  }
  return () => {
    for (const [name, listener] of subscribed.splice(0)) diagnosticsChannel.unsubscribe(name, listener);
  };
}

/** The instance's log lines for its lifecycle events. */
export function logEvents(instanceId: string, logger: Logger): () => void {
  return subscribe(instanceId, {
    proxyError: (e) => logger.once('warn', `proxy:${e.member}:${e.error}`, 'balancer.proxy_error', e.exchange === 'request'
      ? { to: e.endpoint, error: e.cause, touched: e.clientTouched } : { to: e.endpoint, error: e.cause, upgrade: true }),
    peer: (e) => logger.info(e.up ? 'health.up' : 'health.down', { member: e.member, reason: e.reason, state: e.state }),
    drain: (e) => {
      if (e.phase === 'start') logger.info('drain.start', { windowMs: e.windowMs, sessions: e.sessions });
      else if (e.phase === 'batch') logger.debug('drain.batch', { atMs: e.atMs, closed: e.closed, remaining: e.remaining });
      else logger.info('drain.done', { closed: e.closed, tookMs: e.tookMs, batches: e.batches });
    },
  });
}
