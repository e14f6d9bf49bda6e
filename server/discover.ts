import { pinnedPath, rendezvous } from '../lib/index';
import type { ClusterHandle, Logger, Member, MembershipView } from '../lib/index';
import type { DdpConnection } from './meteor-env';

/** Failed attempts on one member (Meteor retries at once twice, then backs off) before trying another. */
const STUCK_AFTER_RETRIES = 2;

const usable = (m: Member): boolean => m.healthy && m.state === 'serving';
const PROBE_TIMEOUT_MS = 2_000;

/**
 * Meteor's server-side DDP client speaks websocket only (socket-stream-client/node.js), so it
 * can't reach a member that runs with DISABLE_WEBSOCKETS=1: its upgrade gets a 404 on every retry.
 * Asked once per connection when it is stuck: the member's SockJS info says whether websockets are off.
 */
async function websocketDisabled(url: string): Promise<boolean> {
  try {
    const res = await fetch(`${url}/info`, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
    const info: unknown = res.ok ? await res.json() : null;
    return typeof info === 'object' && info !== null && (info as { websocket?: unknown }).websocket === false;
  } catch {
    return false;
  }
}

/**
 * Keeps a server-side DDP connection on a healthy serving member of a service: it moves (with
 * Meteor's own `reconnect({ url })`, which re-sends pending methods and subscriptions) when its
 * member leaves, goes unhealthy or drains, or when the member can't be reached while another can.
 * Members are chosen by rendezvous on a per-connection key, so many instances spread evenly and a
 * member leaving only moves its own connections. Connects through the member's pinned path, so its
 * balancer serves the connection itself instead of passing it on.
 */
export class ServiceConnection {
  #member: Member | null = null;
  #url: string | null = null;
  #retriesAtMove = 0;
  #probed = false;

  constructor(
    readonly connection: DdpConnection,
    private readonly service: string,
    private readonly index: number,
  ) {}

  bind(handle: ClusterHandle): void {
    const { pathPrefix, instanceId } = handle.config;
    const key = `${instanceId}/${this.service}/${this.index}`;
    const check = (view: MembershipView): void => this.check(view, key, pathPrefix, handle.logger);
    handle.on('view', check);
    check(handle.view());
  }

  private check(view: MembershipView, key: string, prefix: string, logger: Logger): void {
    const status = this.connection.status();
    // Closed for good, or disconnected by the app after we connected it: not ours to undo.
    if (status.status === 'failed' || (this.#member !== null && status.status === 'offline')) return;
    if (status.connected) this.#retriesAtMove = 0;
    const current = this.#member === null ? undefined : view.byId.get(this.#member.id);
    const stuck = !status.connected && status.retryCount - this.#retriesAtMove >= STUCK_AFTER_RETRIES;
    if (stuck && !this.#probed && this.#url !== null) this.probe(this.#url, logger);
    if (current !== undefined && usable(current) && !stuck) return;
    const candidates = (view.byService.get(this.service) ?? []).filter((m) => usable(m) && m.id !== this.#member?.id);
    const next = rendezvous(key, candidates);
    if (next === null) return; // nobody else: Meteor keeps retrying where it is
    this.#member = next;
    this.#retriesAtMove = status.retryCount;
    this.#url = new URL(next.endpoint).origin + pinnedPath(next, next.service, prefix);
    this.connection.reconnect({ url: this.#url });
  }

  /** Says once, with the fix, why a connection can't get through to a polling-only service. */
  private probe(url: string, logger: Logger): void {
    this.#probed = true;
    void websocketDisabled(url).then((disabled) => {
      if (!disabled) return;
      logger.error('discover.websocket_disabled', {
        service: this.service, member: this.#member?.id,
        note: `Cluster.discoverConnection('${this.service}') can't connect: the ${this.service} instances run with `
          + 'DISABLE_WEBSOCKETS=1, and Meteor\'s server-side DDP client speaks websocket only',
        fix: `unset DISABLE_WEBSOCKETS on the ${this.service} instances (browsers still fall back to polling where websockets fail)`,
      });
    });
  }
}
