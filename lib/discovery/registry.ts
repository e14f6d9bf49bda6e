import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import { MongoClient, type Collection, type MongoClientOptions } from 'mongodb';
import type { ClusterConfig } from '../config';
import type { LoadSnapshot } from '../load';
import type { Logger } from '../log';
import { ClusterError } from '../outcomes';
import { endpointHash, keysFrom, type Keys } from '../sign';
import { PACKAGE_VERSION } from '../version';
import { checkEntry, signEntry, type EntryDoc, type MemberState } from './entry';
import { DRAIN_FIELD, DRAIN_MAX_AGE_MS, DRAIN_MAX_SKEW_MS, checkDrainRequest, type DrainRequest } from '../commands';
import { ReplayGuard } from '../balancer/hop';
import { buildView, diffViews, type DuplicateEndpoint, type Member, type MembershipView, type Observed } from './view';

export interface RegistryOptions {
  readonly config: ClusterConfig;
  readonly logger: Logger;
  /** Called once per heartbeat for the load snapshot written into this instance's entry. */
  readonly load: () => LoadSnapshot;
  readonly mongoOptions?: MongoClientOptions;
}

export interface RegistryEvents {
  view: [MembershipView];
  join: [Member];
  leave: [Member];
  change: [after: Member, before: Member];
  duplicate: [DuplicateEndpoint];
  outage: [Error];
  recovered: [];
  /** A signed drain request for this instance (`ddp-cluster drain <id>`) was found in the registry. */
  drainRequested: [DrainRequest];
}

/** Bound on peers read per poll: a cluster is tens of instances, never thousands. */
const MAX_MEMBERS = 1000;
const MAX_BACKOFF_MS = 30_000;
const CLEANUP_EVERY_TICKS = 30;

interface Observation {
  seq: number;
  changedAt: number;
}

/**
 * Registers this instance in the shared collection, heartbeats, and polls its peers into an
 * immutable MembershipView. Never throws into the app: an unreachable database means retries
 * with backoff while the last-known view stays in force.
 */
export class Registry extends EventEmitter<RegistryEvents> {
  readonly #config: ClusterConfig;
  readonly #log: Logger;
  readonly #load: () => LoadSnapshot;
  readonly #keys: Keys | null;
  readonly #mongoOptions: MongoClientOptions;
  readonly #startedAt = new Date();
  readonly #observations = new Map<string, Observation>();
  /** Drain commands acted on, remembered while they could still be accepted (replays are refused). */
  readonly #commandNonces = new ReplayGuard(256, Date.now, DRAIN_MAX_AGE_MS + DRAIN_MAX_SKEW_MS);
  readonly #registered: boolean;
  #client: MongoClient | null = null;
  #collection: Collection<EntryDoc> | null = null;
  #state: MemberState = 'starting';
  #servingSince = 0;
  #seq = 0;
  #ticks = 0;
  #view: MembershipView;
  #lastOkAt = performance.now();
  #everOk = false;
  #failures = 0;
  #running: Promise<void> | null = null;
  #closed = false;
  #wake: (() => void) | null = null;
  #lastLoad: LoadSnapshot;
  #rttMs: number | null = null;
  #lastLoadAt = Date.now();
  #firstPoll: Promise<void>;
  #firstPollDone!: () => void;

  constructor(options: RegistryOptions) {
    super();
    this.#config = options.config;
    this.#log = options.logger;
    this.#load = options.load;
    this.#keys = keysFrom(options.config.secret, options.config.previousSecret);
    this.#registered = options.config.service !== null && options.config.endpointUrl !== null;
    const heartbeat = options.config.heartbeatMs;
    this.#mongoOptions = {
      appName: 'ddp-cluster',
      maxPoolSize: 3,
      serverSelectionTimeoutMS: Math.max(2000, 2 * heartbeat),
      connectTimeoutMS: Math.max(2000, 2 * heartbeat),
      socketTimeoutMS: Math.max(10_000, 5 * heartbeat),
      ...options.mongoOptions,
    };
    this.#lastLoad = options.load();
    this.#view = this.build(performance.now(), []);
    this.#firstPoll = new Promise((resolve) => (this.#firstPollDone = resolve));
  }

  /** Starts heartbeating and polling in the background; returns at once. */
  start(): void {
    if (this.#running || this.#closed) return;
    if (this.#config.discoveryUrl === null) {
      this.#firstPollDone();
      return;
    }
    this.#running = this.loop().catch((err: unknown) => {
      this.#log.error('discovery.loop_failed', { error: err });
    });
  }

  /** Resolves after the first successful poll (or at once without discovery). */
  ready(): Promise<void> {
    return this.#firstPoll;
  }

  view(): MembershipView {
    return this.#view;
  }

  get state(): MemberState {
    return this.#state;
  }

  /** Round-trip time of the last successful heartbeat + poll, ms. */
  get rttMs(): number | null {
    return this.#rttMs;
  }

  /** The signing keys of this cluster (CLUSTER_SECRET and CLUSTER_PREVIOUS_SECRET), derived once; null without a secret. */
  get keys(): Keys | null {
    return this.#keys;
  }

  get registered(): boolean {
    return this.#registered;
  }

  /** Changes this instance's advertised state and writes it at once, not at the next heartbeat. */
  setState(state: MemberState): void {
    if (this.#state === state) return;
    this.#state = state;
    if (state === 'serving') this.#servingSince = Date.now();
    this.#view = this.rederive(this.#view.discoveryOk, this.#view.stale);
    this.fire('view', this.#view);
    this.#wake?.();
  }

  /** Stops the loop and deletes this instance's entry so peers drop it at once. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#wake?.();
    await this.#running;
    const collection = this.#collection;
    if (collection && this.#registered) {
      await withTimeout(collection.deleteOne({ _id: this.#config.instanceId }), 3000).catch((err: unknown) => {
        this.#log.warn('discovery.deregister_failed', { error: err });
      });
    }
    await this.#client?.close(true).catch(() => undefined);
    this.#client = null;
    this.#collection = null;
  }

  /**
   * Calls the listeners of `event` one by one, each isolated: a listener that throws (or an async
   * one that rejects) is logged once per event per minute and the others still run. The app's
   * listeners (Cluster.on) run here; their bugs must never stop the discovery loop, count as a
   * discovery outage or crash the process.
   */
  private fire<E extends keyof RegistryEvents>(event: E, ...args: RegistryEvents[E]): void {
    for (const listener of this.listeners(event) as ((...a: RegistryEvents[E]) => unknown)[]) {
      try {
        const result = listener.apply(this, args);
        if (typeof (result as PromiseLike<unknown> | null)?.then === 'function') {
          (result as PromiseLike<unknown>).then(undefined, (err: unknown) => this.listenerThrew(event, err));
        }
      } catch (err) {
        this.listenerThrew(event, err);
      }
    }
  }

  private listenerThrew(event: keyof RegistryEvents, err: unknown): void {
    this.#log.once('error', `listener:${event}`, 'cluster.listener_threw', {
      on: event, error: err, note: 'a cluster event listener threw; the cluster goes on',
    });
  }

  private async loop(): Promise<void> {
    while (!this.#closed) {
      const began = performance.now();
      let delay = this.#config.heartbeatMs;
      try {
        await this.tick();
        this.onSuccess();
      } catch (err) {
        delay = this.onFailure(err instanceof Error ? err : new Error(String(err)));
      }
      await this.sleep(Math.max(0, delay - (performance.now() - began)));
    }
  }

  private async tick(): Promise<void> {
    const collection = await this.connect();
    const began = performance.now();
    this.#lastLoad = this.#load();
    this.#lastLoadAt = Date.now();
    if (this.#registered) {
      const doc = this.selfDoc();
      const { _id, ...fields } = doc;
      await collection.updateOne({ _id }, { $set: fields }, { upsert: true });
    }
    const docs = await collection
      .find({}, { projection: { _id: 1, service: 1, endpoint: 1, balancer: 1, state: 1, appVersion: 1, pkgVersion: 1,
        host: 1, pid: 1, startedAt: 1, heartbeatAt: 1, heartbeatMs: 1, seq: 1, servingMs: 1, load: 1, sig: 1, [DRAIN_FIELD]: 1 } })
      .sort({ _id: 1 })
      .limit(MAX_MEMBERS)
      .toArray();
    const now = performance.now();
    this.#rttMs = Math.round((now - began) * 10) / 10;
    await this.commands(collection, docs);
    // Back from an outage: nobody could heartbeat while the database was away, so the outage
    // must not count against anyone. Ages resume where they were frozen.
    if (this.#failures > 0) for (const obs of this.#observations.values()) obs.changedAt += now - this.#lastOkAt;
    this.#lastOkAt = now;
    this.#everOk = true;
    this.apply(now, this.observe(now, docs));
    if (++this.#ticks % CLEANUP_EVERY_TICKS === 1) await this.cleanup(collection);
  }

  /** Acts on a signed drain request addressed to this instance, once; removes it either way. */
  private async commands(collection: Collection<EntryDoc>, docs: readonly unknown[]): Promise<void> {
    if (!this.#registered) return;
    const mine = docs.find((d) => (d as { _id?: unknown })._id === this.#config.instanceId) as Record<string, unknown> | undefined;
    const raw = mine?.[DRAIN_FIELD];
    if (raw === undefined) return;
    await collection.updateOne({ _id: this.#config.instanceId }, { $unset: { [DRAIN_FIELD]: '' } });
    if (this.#keys === null) {
      this.#log.once('warn', 'drain:nokeys', 'command.ignored', { reason: 'no CLUSTER_SECRET to verify the drain request with' });
      return;
    }
    const check = checkDrainRequest(raw, this.#keys, {
      instanceId: this.#config.instanceId, startedAt: this.#startedAt.getTime(), now: Date.now(),
      // Checked last, so only a request that passed every other check is remembered.
      seen: (nonce) => this.#commandNonces.check(nonce, 0),
    });
    if (!check.ok) {
      this.#log.warn('command.ignored', { command: 'drain', reason: check.reason });
      return;
    }
    this.#log.info('command.drain', { requestedBy: check.request.requestedBy, requestedAt: check.request.requestedAt });
    this.fire('drainRequested', check.request);
  }

  private async connect(): Promise<Collection<EntryDoc>> {
    if (this.#collection) return this.#collection;
    const client = new MongoClient(this.#config.discoveryUrl ?? '', this.#mongoOptions);
    try {
      await client.connect();
    } catch (err) {
      await client.close(true).catch(() => undefined);
      throw err;
    }
    const collection = client.db().collection<EntryDoc>(this.#config.collection);
    // TTL index where the server supports it; cleanup covers servers that don't.
    await collection
      .createIndex({ heartbeatAt: 1 }, { name: 'ddp_cluster_ttl', expireAfterSeconds: Math.ceil(this.cleanupAfterMs() / 1000) })
      .catch((err: unknown) => this.#log.debug('discovery.ttl_index_unavailable', { error: err }));
    this.#client = client;
    this.#collection = collection;
    return collection;
  }

  /** Entries of instances dead for far longer than the stale horizon; generous so clock skew can't hurt. */
  private cleanupAfterMs(): number {
    return Math.max(60_000, 10 * this.#config.staleMs);
  }

  private async cleanup(collection: Collection<EntryDoc>): Promise<void> {
    const before = new Date(Date.now() - this.cleanupAfterMs());
    const { deletedCount } = await collection.deleteMany({ heartbeatAt: { $lt: before } });
    if (deletedCount > 0) this.#log.info('discovery.cleanup', { removed: deletedCount });
  }

  private observe(now: number, docs: readonly unknown[]): Observed[] {
    const observed: Observed[] = [];
    const present = new Set<string>();
    for (const raw of docs) {
      const check = checkEntry(raw, this.#keys);
      if (!check.ok) {
        this.#log.once('warn', `ignored:${check.id}:${check.reason}`, 'discovery.entry_ignored', { entry: check.id, reason: check.reason });
        continue;
      }
      const e = check.entry;
      present.add(e._id);
      const prev = this.#observations.get(e._id);
      if (!prev) {
        // First sight: trust the writer's clock only to place the heartbeat in the past, never the future.
        const age = Math.min(Math.max(0, Date.now() - e.heartbeatAt.getTime()), 24 * 3600_000);
        this.#observations.set(e._id, { seq: e.seq, changedAt: now - age });
      } else if (prev.seq !== e.seq) {
        prev.seq = e.seq;
        prev.changedAt = now;
      }
      const obs = this.#observations.get(e._id) as Observation;
      observed.push({ entry: e, ageMs: now - obs.changedAt });
    }
    for (const id of this.#observations.keys()) if (!present.has(id)) this.#observations.delete(id);
    return observed;
  }

  private apply(now: number, observed: readonly Observed[]): void {
    const before = this.#view;
    const after = this.build(now, observed);
    this.#view = after;
    const diff = diffViews(before, after);
    for (const m of diff.joined) this.fire('join', m);
    for (const m of diff.left) this.fire('leave', m);
    for (const c of diff.changed) this.fire('change', c.after, c.before);
    for (const d of after.duplicates) {
      const mine = this.#registered && d.endpoint === this.#config.endpointUrl;
      this.#log.once('error', `duplicate:${d.endpoint}:${d.ids.join(',')}`, 'discovery.duplicate_endpoint', {
        endpoint: d.endpoint, ids: d.ids, mine,
        fix: 'give every instance its own CLUSTER_ENDPOINT_URL (the address peers use to reach it)',
      });
      this.fire('duplicate', d);
    }
    this.fire('view', after);
  }

  private build(now: number, observed: readonly Observed[]): MembershipView {
    return buildView({
      at: Date.now(),
      observed,
      self: this.selfMember(),
      staleMs: this.#config.staleMs,
      discoveryOk: this.#everOk && this.#lastOkAt === now,
      stale: false,
    });
  }

  /** Re-derives the view without a poll: peers keep the ages they had at the last success. */
  private rederive(discoveryOk: boolean, stale: boolean): MembershipView {
    const v = this.#view;
    return buildView({
      at: Date.now(),
      observed: v.members.filter((m) => !m.self).map((m) => ({ entry: entryOf(m), ageMs: m.heartbeatAgeMs })),
      self: this.selfMember(),
      staleMs: this.#config.staleMs,
      discoveryOk,
      stale,
    });
  }

  private onSuccess(): void {
    if (this.#failures > 0) {
      this.#log.info('discovery.recovered', { after: this.#failures });
      this.#log.reset('discovery.outage');
      this.fire('recovered');
    }
    this.#failures = 0;
    this.#firstPollDone();
  }

  /** Keeps the last-known view (ages frozen at the last success) and returns the retry delay. */
  private onFailure(err: Error): number {
    this.#failures++;
    if (this.#failures === 1) this.fire('outage', err);
    this.#log.once('warn', 'discovery.outage', 'discovery.unreachable', {
      error: err, keeping: this.#view.members.length, note: 'serving on the last-known view; retrying',
    });
    const stale = performance.now() - this.#lastOkAt > this.#config.viewStaleMs;
    if (this.#view.discoveryOk || this.#view.stale !== stale) {
      this.#view = this.rederive(false, stale);
      this.fire('view', this.#view);
    }
    // Never connected yet: back off exponentially. Mid-run: retry every heartbeat.
    if (!this.#everOk) {
      return Math.min(MAX_BACKOFF_MS, this.#config.heartbeatMs * 2 ** Math.min(this.#failures - 1, 5));
    }
    return this.#config.heartbeatMs;
  }

  private selfDoc(): EntryDoc {
    const c = this.#config;
    const endpoint = c.endpointUrl ?? '';
    return signEntry(this.#keys, {
      _id: c.instanceId,
      service: c.service ?? '',
      endpoint,
      endpointHash: endpointHash(endpoint),
      balancer: c.balancerUrl,
      state: this.#state,
      appVersion: c.appVersion,
      pkgVersion: PACKAGE_VERSION,
      host: hostname(),
      pid: process.pid,
      startedAt: this.#startedAt,
      heartbeatAt: new Date(this.#lastLoadAt),
      heartbeatMs: c.heartbeatMs,
      seq: ++this.#seq,
      servingMs: this.servingMs(),
      load: this.#lastLoad,
    });
  }

  private selfMember(): Member | null {
    if (!this.#registered) return null;
    const c = this.#config;
    const endpoint = c.endpointUrl ?? '';
    return Object.freeze({
      id: c.instanceId,
      service: c.service ?? '',
      endpoint,
      endpointHash: endpointHash(endpoint),
      balancer: c.balancerUrl,
      state: this.#state,
      healthy: true,
      self: true,
      appVersion: c.appVersion,
      pkgVersion: PACKAGE_VERSION,
      host: hostname(),
      pid: process.pid,
      startedAt: this.#startedAt.getTime(),
      heartbeatAgeMs: 0,
      heartbeatAt: this.#lastLoadAt,
      heartbeatMs: c.heartbeatMs,
      servingMs: this.servingMs(),
      load: this.#lastLoad,
    });
  }

  private servingMs(): number {
    return this.#state === 'serving' ? Date.now() - this.#servingSince : 0;
  }

  private sleep(ms: number): Promise<void> {
    if (this.#closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      timer.unref();
      const self = this;
      function done(): void {
        clearTimeout(timer);
        self.#wake = null;
        resolve();
      }
      this.#wake = done;
    });
  }
}

/** Rebuilds the entry behind a member so a view can be re-derived without a new poll. */
function entryOf(m: Member): EntryDoc {
  return {
    _id: m.id, service: m.service, endpoint: m.endpoint, endpointHash: m.endpointHash, balancer: m.balancer,
    state: m.state, appVersion: m.appVersion, pkgVersion: m.pkgVersion, host: m.host, pid: m.pid,
    // memberFrom adds the observed age to the reported serving time: take it out again, so a
    // re-derived view doesn't count it twice.
    servingMs: m.state === 'serving' ? Math.max(0, m.servingMs - m.heartbeatAgeMs) : 0,
    startedAt: new Date(m.startedAt), heartbeatAt: new Date(m.heartbeatAt), heartbeatMs: m.heartbeatMs, seq: 0, load: m.load, sig: null,
  };
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new ClusterError('DDPC_ERR_DISCOVERY_TIMEOUT', `timed out after ${ms} ms`)), ms);
    p.then((v) => { clearTimeout(t); resolve(v); }, (e: unknown) => { clearTimeout(t); reject(e); });
  });
}
