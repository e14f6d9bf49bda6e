/**
 * A DDP client that behaves like Meteor's in the face of failures: when its connection drops it
 * reconnects (to any of the entry URLs, like DNS round robin over balancers, with a short jittered
 * backoff) and a method call that couldn't complete is sent again once reconnected.
 * It records every reconnect, so chaos tests can measure reconnect storms.
 */
import { sockjsDdp, wsDdp, type DdpClient } from '../../examples/node-ddp-app/clients';
import type { WhoamiResult } from '../../examples/node-ddp-app/app';

export type Transport = 'ws' | 'sockjs-websocket' | 'sockjs-xhr';

export interface RetryingOptions {
  readonly entries: readonly string[];
  readonly transport: Transport;
  /** Give up a call after this long (it then counts as failed). */
  readonly callDeadlineMs?: number;
}

export class RetryingDdpClient {
  readonly #o: RetryingOptions;
  #client: DdpClient | null = null;
  #connecting: Promise<DdpClient> | null = null;
  #closed = false;
  #next = Math.floor(Math.random() * 1000);
  /** Wall-clock times of reconnects after the first connect. */
  readonly reconnects: number[] = [];
  failedCalls = 0;
  okCalls = 0;
  instanceId: string | null = null;
  /** The entry URL the current connection went through (the balancer it depends on). */
  entry: string | null = null;

  constructor(o: RetryingOptions) {
    this.#o = o;
  }

  async start(): Promise<this> {
    await this.#connection();
    return this;
  }

  /** Calls `method`, retrying over reconnects until the deadline. Never throws. */
  async call(method: string, ...params: unknown[]): Promise<unknown> {
    const deadline = Date.now() + (this.#o.callDeadlineMs ?? 30_000);
    for (;;) {
      try {
        const client = await this.#connection();
        const result = await client.call(method, ...params);
        this.okCalls++;
        return result;
      } catch {
        if (this.#closed || Date.now() > deadline) {
          this.failedCalls++;
          return undefined;
        }
        await pause(50 + Math.random() * 100);
      }
    }
  }

  async whoami(): Promise<WhoamiResult | undefined> {
    const r = (await this.call('whoami')) as WhoamiResult | undefined;
    if (r) this.instanceId = r.instanceId;
    return r;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#client?.close().catch(() => undefined);
  }

  #connection(): Promise<DdpClient> {
    if (this.#client) return Promise.resolve(this.#client);
    this.#connecting ??= this.#connect().finally(() => (this.#connecting = null));
    return this.#connecting;
  }

  async #connect(): Promise<DdpClient> {
    let attempt = 0;
    for (;;) {
      if (this.#closed) throw new Error('closed');
      const entry = this.#o.entries[this.#next++ % this.#o.entries.length] as string;
      try {
        const t = this.#o.transport;
        const client = t === 'ws' ? await wsDdp(entry, { timeoutMs: 5000 })
          : await sockjsDdp(entry, { transports: [t === 'sockjs-xhr' ? 'xhr-polling' : 'websocket'], timeoutMs: 5000 });
        if (this.instanceId !== null || this.reconnects.length > 0 || attempt > 0) this.reconnects.push(Date.now());
        this.#client = client;
        this.entry = entry;
        void client.closed.then(() => {
          if (this.#client === client) this.#client = null;
          // Reconnect eagerly, like Meteor's client does, so sessions move even when idle.
          if (!this.#closed) void this.#connection().then(() => this.whoami()).catch(() => undefined);
        });
        return client;
      } catch {
        attempt++;
        // Meteor retries quickly first, then backs off; jittered so clients don't beat in phase.
        await pause(Math.min(2000, 100 * 2 ** Math.min(attempt, 4)) * (0.5 + Math.random()));
      }
    }
  }
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
