/**
 * The six setups, each the same three backend instances of the reference DDP app:
 *   direct   clients connect straight to the three instances (no balancer at all): the physical limit
 *   local    ddp-cluster attached, every connection served where it lands: each instance registers its
 *            own service (web-a, web-b, web-c), so routing always picks itself (hops counted: 0)
 *   hop      ddp-cluster attached, CLUSTER_SELF_WEIGHT=0 everywhere: every session proxied exactly once
 *   cluster  ddp-cluster attached, default policy, each client enters at a random instance
 *   nginx    nginx in front of the plain instances
 *   haproxy  HAProxy in front of the plain instances
 * and, only when asked for (`--setups floor`):
 *   floor    bench/floor.ts, a bare Node front, in front of the plain instances: Node's own cost of
 *            a front, nothing of ddp-cluster's
 * A Stack is one running setup: backends in their own processes (bench/backend.ts) plus the proxy.
 */
import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { freePort, uniqueDbUrl } from '../examples/node-ddp-app/mongo';
import { EXAMPLE_SECRET } from '../examples/node-ddp-app/secret';
import type { EntryPick } from './loadgen';
import { compiled } from './compiled';
import { startFloor, startHaproxy, startNginx, type Backend, type ProxyProcess } from './proxies';

/** The setups of a full run. */
export const SETUPS = ['direct', 'local', 'hop', 'cluster', 'nginx', 'haproxy'] as const;
export const ALL_SETUPS = [...SETUPS, 'floor'] as const;
export type SetupName = (typeof ALL_SETUPS)[number];
export const CLUSTER_SETUPS: readonly SetupName[] = ['local', 'hop', 'cluster'];

export const SETUP_LABELS: Readonly<Record<SetupName, string>> = {
  direct: 'direct',
  local: 'ddp-cluster, served here',
  hop: 'ddp-cluster, forced hop',
  cluster: 'ddp-cluster, cluster mode',
  nginx: 'nginx',
  haproxy: 'HAProxy',
  floor: 'bare Node front',
};

export const IDS = ['a', 'b', 'c'] as const;

export interface BackendStats {
  id: string;
  sessions: number;
  cluster: Record<string, unknown> | null;
  members: Array<{ id: string; healthy: boolean; state: string; sessions: number }> | null;
}

export interface StackOptions {
  readonly name: SetupName;
  /** mongodb:// base URL; required for the ddp-cluster setups. */
  readonly mongoUrl: string | null;
  readonly bins: { nginx: string; haproxy: string } | null;
  readonly tmpDir: string;
  /** Relative capacity per instance (1 = full); the balance test halves one. */
  readonly capacity?: readonly number[];
  /** Most concurrent client connections the proxies must accept. */
  readonly maxConns: number;
  /** Extra env per backend id (and the port it listens on). */
  readonly env?: (id: string, port: number) => Record<string, string>;
}

interface BackendProc {
  readonly id: string;
  readonly port: number;
  readonly url: string;
  readonly proc: ChildProcess;
}

const REPO = path.resolve(__dirname, '..');
const BASE_CAPACITY = 2000;

export class Stack {
  readonly name: SetupName;
  readonly backends: BackendProc[] = [];
  proxy: ProxyProcess | null = null;
  /** Callbacks waiting for a reply of a given type from a backend. */
  #replies = new Map<ChildProcess, Array<{ type: string; cb: (m: Record<string, unknown>) => void }>>();

  private constructor(name: SetupName) {
    this.name = name;
  }

  static async start(o: StackOptions): Promise<Stack> {
    const s = new Stack(o.name);
    try {
      await s.#start(o);
      return s;
    } catch (err) {
      await s.stop();
      throw err;
    }
  }

  get clustered(): boolean {
    return CLUSTER_SETUPS.includes(this.name);
  }

  /** Where clients connect, and how they pick among several. */
  get entries(): { entries: string[]; pick: EntryPick } {
    if (this.proxy) return { entries: [this.proxy.url], pick: 'rr' };
    return { entries: this.backends.map((b) => b.url), pick: this.name === 'cluster' ? 'random' : 'rr' };
  }

  /** Entry points that stay up when `killed` dies (the proxy, or the other instances). */
  entriesWithout(killed: string): string[] {
    if (this.proxy) return [this.proxy.url];
    return this.backends.filter((b) => b.id !== killed).map((b) => b.url);
  }

  backendPids(): number[] {
    return this.backends.filter((b) => !b.proc.killed).map((b) => b.proc.pid ?? 0).filter((p) => p > 0 && this.#alive(p));
  }

  proxyPids(): number[] {
    return this.proxy ? this.proxy.pids() : [];
  }

  #alive(pid: number): boolean {
    const b = this.backends.find((x) => x.proc.pid === pid);
    return !!b && b.proc.exitCode === null && b.proc.signalCode === null;
  }

  async #start(o: StackOptions): Promise<void> {
    const attach = this.clustered;
    if (attach && !o.mongoUrl) throw new Error(`${o.name} needs MongoDB`);
    const discoveryUrl = attach && o.mongoUrl ? uniqueDbUrl(o.mongoUrl, `bench_${o.name}`) : '';
    this.#options = o;
    this.#discoveryUrl = discoveryUrl;
    const caps = o.capacity ?? [1, 1, 1];
    await Promise.all(IDS.map((id, i) => this.#spawn(id, caps[i] ?? 1)));
    this.backends.sort((x, y) => x.id.localeCompare(y.id));
    if (attach) await this.#waitFormed();
    const weights: Backend[] = this.backends.map((b, i) => ({ id: b.id, port: b.port, weight: Math.round(2 * (caps[i] ?? 1)) }));
    if (o.name === 'nginx' || o.name === 'haproxy') {
      if (!o.bins) throw new Error(`${o.name} is not installed`);
      const port = await freePort();
      const dir = path.join(o.tmpDir, `${o.name}-${port}`);
      this.proxy = o.name === 'nginx'
        ? await startNginx(o.bins.nginx, dir, port, weights, o.maxConns)
        : await startHaproxy(o.bins.haproxy, dir, port, weights, o.maxConns);
      if (o.name === 'haproxy') await this.#waitHaproxyUp();
    }
    if (o.name === 'floor') {
      const port = await freePort();
      this.proxy = await startFloor(path.join(o.tmpDir, `floor-${port}`), port, weights);
    }
  }

  #options: StackOptions | null = null;
  #discoveryUrl = '';

  /** A backend that joins the running stack later (the rebalance phase's 4th member). */
  async addBackend(id: string, capacity = 1): Promise<void> {
    await this.#spawn(id, capacity);
    this.backends.sort((x, y) => x.id.localeCompare(y.id));
  }

  async #spawn(id: string, capacity: number): Promise<void> {
    const o = this.#options;
    if (o === null) throw new Error('stack not started');
    const attach = this.clustered;
    const discoveryUrl = this.#discoveryUrl;
    const port = await freePort();
    const env: Record<string, string> = {
      ...process.env as Record<string, string>,
      BENCH_ID: id,
      BENCH_ATTACH: attach ? '1' : '0',
      PORT: String(port),
      // The fixture app reads HTTP_FORWARDED_COUNT; nothing here needs it.
      HTTP_FORWARDED_COUNT: '',
    };
    for (const k of Object.keys(env)) if (k.startsWith('CLUSTER_')) delete env[k];
    if (attach) {
      Object.assign(env, {
        CLUSTER_DISCOVERY_URL: discoveryUrl,
        CLUSTER_SERVICE: 'web',
        CLUSTER_SECRET: EXAMPLE_SECRET,
        CLUSTER_INSTANCE_ID: id,
        CLUSTER_LOG_LEVEL: 'error',
        CLUSTER_CAPACITY: String(Math.round(BASE_CAPACITY * capacity)),
        // Measure steady state, not the ramp of a member that just started.
        CLUSTER_SLOW_START: '0',
      });
      if (o.name === 'hop') env.CLUSTER_SELF_WEIGHT = '0';
      // Served here: each instance is the only member of its own service, so the whole routing
      // path runs (registry, view, route, info pinning) and always picks this instance.
      if (o.name === 'local') env.CLUSTER_SERVICE = `web-${id}`;
    }
    Object.assign(env, o.env?.(id, port) ?? {});
    const proc = fork(compiled('backend'), [], {
      cwd: REPO,
      env,
      execArgv: ['--expose-gc'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      serialization: 'json',
    });
    proc.on('message', (m: Record<string, unknown>) => {
      const q = this.#replies.get(proc) ?? [];
      const i = q.findIndex((w) => w.type === m.type);
      if (i >= 0) q.splice(i, 1)[0]?.cb(m);
    });
    const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`backend ${id} not ready in 30 s`)), 30_000);
      this.#replies.set(proc, [{ type: 'ready', cb: (m) => { clearTimeout(t); resolve(m); } }]);
      proc.once('exit', (code) => { clearTimeout(t); reject(new Error(`backend ${id} exited with ${code}`)); });
    });
    this.backends.push({ id, port, url: String(ready.url), proc });
  }

  async #waitFormed(): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const stats = await this.stats();
      const formed = stats.every((s) => (s.members ?? []).filter((m) => m.healthy && m.state === 'serving').length === IDS.length);
      if (formed) return;
      if (Date.now() > deadline) throw new Error(`cluster did not form: ${JSON.stringify(stats.map((s) => s.members))}`);
      await sleep(200);
    }
  }

  async #waitHaproxyUp(): Promise<void> {
    const { haproxyServerStats } = await import('./proxies');
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const st = await haproxyServerStats(this.proxy?.dir ?? '').catch(() => new Map());
      if (st.size === IDS.length && [...st.values()].every((v: { status: string }) => v.status.startsWith('UP'))) return;
      await sleep(100);
    }
    throw new Error('haproxy servers not UP within 10 s');
  }

  #ask(b: BackendProc, type: string, timeoutMs = 5000, msg: Record<string, unknown> = { type }): Promise<Record<string, unknown>> {
    if (b.proc.exitCode !== null || b.proc.signalCode !== null || b.proc.killed || !b.proc.connected) return Promise.reject(new Error(`${b.id} is gone`));
    return new Promise((resolve, reject) => {
      const q = this.#replies.get(b.proc) ?? [];
      const waiter = { type, cb: (m: Record<string, unknown>) => { clearTimeout(t); resolve(m); } };
      const t = setTimeout(() => {
        q.splice(q.indexOf(waiter) >>> 0, 1);
        reject(new Error(`${b.id}: no ${type} reply`));
      }, timeoutMs);
      q.push(waiter);
      this.#replies.set(b.proc, q);
      b.proc.send(msg);
    });
  }

  /** Stats of every live backend. */
  async stats(): Promise<BackendStats[]> {
    const live = this.backends.filter((b) => b.proc.exitCode === null && b.proc.signalCode === null && !b.proc.killed);
    const replies = await Promise.all(live.map((b) => this.#ask(b, 'stats').then((m) => ({ b, m })).catch(() => null)));
    return replies.filter((r): r is { b: BackendProc; m: Record<string, unknown> } => r !== null).map(({ b, m }) => ({
      id: b.id,
      sessions: Number(m.sessions ?? 0),
      cluster: (m.cluster ?? null) as Record<string, unknown> | null,
      members: (m.members ?? null) as BackendStats['members'],
    }));
  }

  /** Asks one backend something over IPC (e.g. prof-start / prof-stop). */
  async send(id: string, msg: Record<string, unknown>, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    const b = this.backends.find((x) => x.id === id);
    if (!b) throw new Error(`no backend ${id}`);
    return this.#ask(b, String(msg.type), timeoutMs, msg);
  }

  async gc(): Promise<void> {
    await Promise.all(this.backends.map((b) => this.#ask(b, 'gc').catch(() => undefined)));
  }

  /** kill -9 one backend; resolves with the time it was signalled (ms since epoch). */
  kill9(id: string): number {
    const b = this.backends.find((x) => x.id === id);
    if (!b) throw new Error(`no backend ${id}`);
    const at = Date.now();
    b.proc.kill('SIGKILL');
    return at;
  }

  async stop(): Promise<void> {
    await this.proxy?.stop().catch(() => undefined);
    await Promise.all(this.backends.map(async (b) => {
      if (b.proc.exitCode !== null || b.proc.signalCode !== null) return;
      const exited = new Promise<void>((r) => b.proc.once('exit', () => r()));
      b.proc.kill('SIGTERM');
      const t = setTimeout(() => b.proc.kill('SIGKILL'), 8000);
      await exited;
      clearTimeout(t);
    }));
  }
}


export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
