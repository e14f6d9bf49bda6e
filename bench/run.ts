/**
 * `npm run bench`: ddp-cluster against the direct connection, nginx and HAProxy, side by side on
 * this machine, in one run. Writes bench/results/latest.{json,md,png}.
 *
 *   npm run bench                         full run (~40 min on 2 cores)
 *   npm run bench -- --quick              ~2.5 min: latency, throughput and set-up rate, short, one repeat
 *                                         (add --phases memory,balance,failover for those, with small counts)
 *   npm run bench -- --setups direct,hop  only some setups (direct is always added: ratios need it)
 *   npm run bench -- --phases latency,throughput,setup,memory,balance,bursts,failover,rebalance
 *   npm run bench -- --phases rebalance   a 4th member joins 3 with 3,000 sessions (~9 min; --quick: 600, ~4 min)
 *   npm run bench -- --repeats 3 --sessions 9000
 *   npm run bench -- --profile ws|xhr|setup   CPU profile of a forced-hop instance (node --cpu-prof)
 *   npm run bench -- --profile xhr --setups local   the same of an instance serving everything here
 *   npm run bench -- --cost --setups hop,nginx,floor   CPU per session set-up of the entry (instance a,
 *                                             the proxy, or bench/floor.ts) and of the instances behind it
 *                                             (also direct, local: instance a serving everything)
 *   npm run bench -- --out DIR            write the results elsewhere (default bench/results)
 *
 * Needs nginx and haproxy (Debian: apt-get install -y nginx haproxy) and a MongoDB-compatible
 * server for discovery (same sources as the tests: CLUSTER_TEST_MONGO_URL, mongod, or FerretDB).
 * Everything is on loopback; every load loop is bounded in count and time.
 */
import { execFileSync, fork } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { disposeAll, startMongo } from '../examples/node-ddp-app/mongo';
import type { FailoverResult, HoldResult, Job, JobResult, LatencyResult, RebalanceResult, SetupResult, ThroughputResult } from './loadgen';
import { foreignCores, machine, systemCpu, usage, type Usage } from './procstat';
import { analyzeProfile } from './profile';
import { LogTail, haproxyServerStats, requireProxies } from './proxies';
import { median, writeReport, type RunRecord, type Sample } from './report';
import { ALL_SETUPS, IDS, SETUPS, Stack, sleep, type BackendStats, type SetupName, type StackOptions } from './setups';

const REPO = path.resolve(__dirname, '..');

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    setups: { type: 'string' },
    phases: { type: 'string' },
    repeats: { type: 'string' },
    sessions: { type: 'string' },
    profile: { type: 'string' },
    cost: { type: 'boolean', default: false },
    out: { type: 'string' },
  },
});

const quick = args.quick === true;
const PHASES = ['latency', 'throughput', 'setup', 'memory', 'balance', 'bursts', 'failover', 'rebalance'] as const;
type Phase = (typeof PHASES)[number];

/** Every figure of the run; `--quick` scales counts and durations down. */
const P = {
  repeats: Number(args.repeats ?? (quick ? 1 : 3)),
  memoryRepeats: quick ? 1 : 2,
  failoverRepeats: quick ? 1 : 2,
  latency: {
    ws: { sessions: 60, rate: 1000, warmupMs: quick ? 500 : 2000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
    xhr: { sessions: 30, rate: 200, warmupMs: quick ? 500 : 2000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
  },
  throughput: {
    ws: { sessions: 90, depth: 4, warmupMs: quick ? 500 : 2000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
    xhr: { sessions: 90, depth: 2, warmupMs: quick ? 500 : 2000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
  },
  setup: { concurrency: 24, warmupMs: quick ? 1000 : 20_000, durationMs: quick ? 2000 : 6000 },
  memory: { sessions: Number(args.sessions ?? (quick ? 1000 : 9000)), concurrency: 48, maxMs: 120_000 },
  balance: { sessions: quick ? 600 : 3000, concurrency: 32, capacity: [1, 1, 0.5] as const, settleMs: quick ? 2000 : 3000 },
  /**
   * Cluster mode's hop share in bursts from idle: `count` bursts per round on one stack, each of
   * `sessions` websocket sessions opened 32 at a time at random entries, closed, then `idleMs` of
   * quiet (past the feeds' beats and the pending rate window). One burst is one sample: the latency
   * phase gives one per round, too few to tell a change from the scatter.
   */
  bursts: { count: quick ? 5 : 15, sessions: 60, concurrency: 32, idleMs: 1500 },
  failover: { sessions: quick ? 150 : 600, callEveryMs: 1000, probeRate: 40, afterKillMs: quick ? 12_000 : 20_000, killed: 'c' },
  /**
   * Active rebalancing: 3 members hold the sessions (older than the minimum age), then a 4th joins;
   * then the balanced cluster is watched for `steadyMs`. Default slow start (30 s), the rate below.
   */
  rebalance: {
    sessions: Number(args.sessions ?? (quick ? 600 : 3000)), concurrency: 32, callEveryMs: 5000, callDeadlineMs: 30_000,
    rate: 10, minAgeMs: quick ? 20_000 : 60_000, windowMs: 60_000, target: 1.15, steadyMs: quick ? 60_000 : 300_000,
  },
};

const FAILOVER_SETUPS: readonly SetupName[] = ['cluster', 'hop', 'nginx', 'haproxy'];

const log = (line: string): void => void process.stdout.write(`${line}\n`);

/** Phases that failed: reported in the results instead of ending the run. */
const failures: string[] = [];

async function guarded(what: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    const msg = `${what}: ${(err as Error).message}`;
    failures.push(msg);
    log(`  FAILED ${msg}`);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* load generator processes                                                                    */

interface JobHooks {
  onMessage?: (m: Record<string, unknown>, child: import('node:child_process').ChildProcess) => void;
  /** Server-side processes of the stack under test (to tell our CPU from other tenants'). */
  pids?: () => number[];
}

/** A job's result plus the CPU other tenants of the machine used meanwhile, in cores. */
type Measured<R> = R & { foreignCores: number };

/** Runs one job in a fresh load-generator process. */
function runJob<R extends JobResult>(job: Job, hooks: JobHooks = {}, limitMs = 240_000): Promise<Measured<R>> {
  const pids = hooks.pids ?? (() => []);
  const sys0 = systemCpu();
  const own0 = usage(pids()).cpu;
  const me0 = process.cpuUsage();
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const child = fork(path.join(REPO, 'bench', 'loadgen.ts'), [], {
      cwd: REPO,
      execArgv: ['--import', 'tsx', '--max-old-space-size=4096'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      serialization: 'json',
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`load generator (${job.kind}) exceeded ${limitMs} ms`));
    }, limitMs);
    let settled = false;
    child.on('message', (m: Record<string, unknown>) => {
      if (m.type === 'result') {
        settled = true;
        clearTimeout(timer);
        const sys1 = systemCpu();
        const me = process.cpuUsage(me0);
        const ours = usage(pids()).cpu - own0 + Number(m.cpuSec ?? 0) + (me.user + me.system) / 1e6;
        const wall = Math.max(0.001, (Date.now() - t0) / 1000);
        const foreign = Math.max(0, (sys1.busy - sys0.busy - ours) / wall);
        resolve({ ...(m.result as R), foreignCores: Math.round(foreign * 100) / 100 });
      } else if (m.type === 'error') {
        settled = true;
        clearTimeout(timer);
        reject(new Error(`load generator: ${String(m.message)}`));
      } else {
        hooks.onMessage?.(m, child);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (!settled) reject(new Error(`load generator exited with ${code}`));
    });
    child.send({ type: 'job', job });
  });
}

/**
 * Other test suites run on this machine too. Before a measurement, wait (bounded) until they use
 * less than FOREIGN_LIMIT cores; a measurement during which they used more is repeated once.
 */
const FOREIGN_LIMIT = 0.35;
const QUIET_WAIT_MS = quick ? 10_000 : 60_000;

async function waitQuiet(pids: () => number[]): Promise<number> {
  const deadline = Date.now() + QUIET_WAIT_MS;
  let f = await foreignCores(pids);
  while (f > FOREIGN_LIMIT && Date.now() < deadline) f = await foreignCores(pids);
  return f;
}

async function measure<R extends JobResult>(job: Job, hooks: JobHooks): Promise<Measured<R>> {
  const pids = hooks.pids ?? (() => []);
  await waitQuiet(pids);
  const r = await runJob<R>(job, hooks);
  if (r.foreignCores <= FOREIGN_LIMIT) return r;
  log(`    (other processes used ${r.foreignCores} cores during ${job.kind} ${job.transport}; waiting for quiet and repeating once)`);
  await waitQuiet(pids);
  const again = await runJob<R>(job, hooks);
  return again.foreignCores < r.foreignCores ? again : r;
}

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                     */

function sumStat(stats: BackendStats[], key: string): number {
  let n = 0;
  for (const s of stats) n += Number((s.cluster ?? {})[key] ?? 0);
  return n;
}

/** Share of routing decisions at entry instances that took a hop (ddp-cluster setups). */
function hopShare(before: BackendStats[], after: BackendStats[]): number | null {
  if (after.every((s) => s.cluster === null)) return null;
  const d = (k: string): number => sumStat(after, k) - sumStat(before, k);
  // A translated poll took a hop too (carried to its member over a websocket); a carry upgrade is a
  // verified hop that is not a served request.
  const hops = d('proxied') + d('translated');
  const entry = d('served') - (d('hopsIn') - d('carriedIn')) + hops;
  return entry > 0 ? hops / entry : 0;
}

function diffUsage(a: Usage, b: Usage): Usage {
  return { cpu: b.cpu - a.cpu, rss: b.rss };
}

interface Ctx {
  mongoUrl: string | null;
  bins: { nginx: string; haproxy: string } | null;
  tmpDir: string;
  samples: Sample[];
}

function stackOptions(ctx: Ctx, name: SetupName, extra: Partial<StackOptions> = {}): StackOptions {
  return { name, mongoUrl: ctx.mongoUrl, bins: ctx.bins, tmpDir: ctx.tmpDir, maxConns: Math.max(P.memory.sessions, P.balance.sessions) + 500, ...extra };
}

async function withStack<T>(ctx: Ctx, o: StackOptions, fn: (s: Stack) => Promise<T>): Promise<T> {
  const stack = await Stack.start(o);
  try {
    return await fn(stack);
  } finally {
    await stack.stop();
  }
}

function record(ctx: Ctx, setup: SetupName, round: number, metric: string, value: number | null, extra: Record<string, unknown> = {}): void {
  if (value === null || !Number.isFinite(value)) return;
  ctx.samples.push({ setup, round, metric, value, ...extra });
}

/* ------------------------------------------------------------------------------------------ */
/* phases                                                                                      */

/** Latency, throughput and set-up rate on one fresh stack. */
async function battery(ctx: Ctx, setup: SetupName, round: number, phases: Set<Phase>): Promise<void> {
  await withStack(ctx, stackOptions(ctx, setup), async (stack) => {
    const { entries, pick } = stack.entries;
    const serverPids = (): number[] => [...stack.backendPids(), ...stack.proxyPids()];

    if (phases.has('latency')) {
      for (const transport of ['ws', 'xhr'] as const) {
        // Counted over the whole job: websocket sessions are routed once, when they open.
        const before = await stack.stats();
        const r = await measure<LatencyResult>({ kind: 'latency', transport, entries, pick, ...P.latency[transport] }, { pids: serverPids });
        const share = hopShare(before, await stack.stats());
        record(ctx, setup, round, `foreign_lat_${transport}`, r.foreignCores);
        record(ctx, setup, round, `lat_${transport}_p50`, r.ms.p50);
        record(ctx, setup, round, `lat_${transport}_p90`, r.ms.p90);
        record(ctx, setup, round, `lat_${transport}_p99`, r.ms.p99);
        record(ctx, setup, round, `lat_${transport}_errors`, r.errors);
        record(ctx, setup, round, `hops_${transport}`, share);
        log(`  ${setup} latency ${transport} @${r.offered}/s: p50 ${r.ms.p50} p90 ${r.ms.p90} p99 ${r.ms.p99} ms, ${r.errors} errors, ${r.opened} sessions${share === null ? '' : `, hop share ${(share * 100).toFixed(1)}%`}; others ${r.foreignCores} cores`);
        await sleep(500);
      }
    }

    if (phases.has('throughput')) {
      for (const transport of ['ws', 'xhr'] as const) {
        let u0: Usage | null = null;
        let p0: Usage | null = null;
        let du: Usage | null = null;
        let dp: Usage | null = null;
        const before = await stack.stats();
        const r = await measure<ThroughputResult>({ kind: 'throughput', transport, entries, pick, ...P.throughput[transport] }, {
          pids: serverPids,
          onMessage: (m) => {
            if (m.type !== 'mark') return;
            if (m.what === 'start') {
              u0 = usage(serverPids());
              p0 = usage(stack.proxyPids());
            } else if (m.what === 'end' && u0 && p0) {
              du = diffUsage(u0, usage(serverPids()));
              dp = diffUsage(p0, usage(stack.proxyPids()));
            }
          },
        });
        const share = hopShare(before, await stack.stats());
        record(ctx, setup, round, `hops_tput_${transport}`, share);
        const calls = r.callsPerSec * (P.throughput[transport].durationMs / 1000);
        const cpuServer = du ? (du as Usage).cpu : NaN;
        const cpuProxy = dp ? (dp as Usage).cpu : NaN;
        record(ctx, setup, round, `tput_${transport}`, r.callsPerSec);
        record(ctx, setup, round, `tput_${transport}_errors`, r.errors);
        record(ctx, setup, round, `foreign_tput_${transport}`, r.foreignCores);
        record(ctx, setup, round, `cpu_${transport}_server_per10k`, calls > 0 ? (cpuServer / calls) * 10_000 : null);
        if (stack.proxy) record(ctx, setup, round, `cpu_${transport}_proxy_per10k`, calls > 0 ? (cpuProxy / calls) * 10_000 : null);
        log(`  ${setup} throughput ${transport}: ${r.callsPerSec} calls/s (p50 ${r.ms.p50} ms, ${r.errors} errors), server CPU ${cpuServer.toFixed(2)} s${stack.proxy ? `, proxy CPU ${cpuProxy.toFixed(2)} s` : ''}${share === null ? '' : `, hop share ${(share * 100).toFixed(1)}%`}; others ${r.foreignCores} cores`);
        await sleep(500);
      }
    }

    if (phases.has('setup')) {
      let u0: Usage = usage(serverPids());
      let p0: Usage = usage(stack.proxyPids());
      let du: Usage = { cpu: NaN, rss: 0 };
      let dp: Usage = { cpu: NaN, rss: 0 };
      const r = await measure<SetupResult>({ kind: 'setup', transport: 'ws', entries, pick, ...P.setup }, {
        pids: serverPids,
        onMessage: (m) => {
          if (m.type !== 'mark') return;
          if (m.what === 'start') {
            u0 = usage(serverPids());
            p0 = usage(stack.proxyPids());
          } else {
            du = diffUsage(u0, usage(serverPids()));
            dp = diffUsage(p0, usage(stack.proxyPids()));
          }
        },
      });
      record(ctx, setup, round, 'foreign_setup', r.foreignCores);
      const n = r.perSec * (P.setup.durationMs / 1000);
      record(ctx, setup, round, 'setup_per_s', r.perSec);
      record(ctx, setup, round, 'setup_p50', r.ms.p50);
      record(ctx, setup, round, 'setup_errors', r.errors);
      record(ctx, setup, round, 'cpu_setup_server_per1k', n > 0 ? (du.cpu / n) * 1000 : null);
      if (stack.proxy) record(ctx, setup, round, 'cpu_setup_proxy_per1k', n > 0 ? (dp.cpu / n) * 1000 : null);
      log(`  ${setup} set-up: ${r.perSec}/s (p50 ${r.ms.p50} ms, ${r.errors} errors${r.errorSample[0] ? `: ${r.errorSample[0]}` : ''}); others ${r.foreignCores} cores`);
    }
  });
}

/** Idle sessions: server-side RSS per session. */
async function memory(ctx: Ctx, setup: SetupName, round: number): Promise<void> {
  await withStack(ctx, stackOptions(ctx, setup), async (stack) => {
    const { entries, pick } = stack.entries;
    await waitQuiet(() => stack.backendPids());
    await stack.gc();
    const base = { server: usage([...stack.backendPids(), ...stack.proxyPids()]).rss, proxy: usage(stack.proxyPids()).rss };
    let held: Record<string, unknown> = {};
    const r = await runJob<HoldResult>({ kind: 'hold', transport: 'ws', entries, pick, ...P.memory }, {
      onMessage: (m, child) => {
        if (m.type !== 'held') return;
        void (async () => {
          await sleep(2000);
          await stack.gc();
          await sleep(300);
          const stats = await stack.stats();
          held = {
            server: usage([...stack.backendPids(), ...stack.proxyPids()]).rss,
            proxy: usage(stack.proxyPids()).rss,
            sessions: stats.reduce((n, s) => n + s.sessions, 0),
            opened: m.opened,
          };
          child.send({ type: 'release' });
        })();
      },
    });
    const n = Number(held.sessions ?? 0);
    const perServer = n > 0 ? (Number(held.server) - base.server) / n / 1024 : null;
    const perProxy = stack.proxy && n > 0 ? (Number(held.proxy) - base.proxy) / n / 1024 : null;
    record(ctx, setup, round, 'mem_sessions', n);
    record(ctx, setup, round, 'mem_server_kib_per_session', perServer);
    record(ctx, setup, round, 'mem_proxy_kib_per_session', perProxy);
    record(ctx, setup, round, 'mem_proxy_rss_mib', stack.proxy ? Number(held.proxy) / 1048576 : null);
    log(`  ${setup} memory: ${n} idle sessions (${r.opened} opened in ${(r.openMs / 1000).toFixed(1)} s, ${r.errors} errors${r.errorSample[0] ? `: ${r.errorSample[0]}` : ''}), server ${perServer?.toFixed(1)} KiB/session${perProxy === null ? '' : `, proxy ${perProxy.toFixed(1)} KiB/session`}`);
  });
}

/** 3,000 sessions with instance c at half capacity: how evenly is the load spread? */
/** Cluster mode's hop share over P.bursts.count bursts of new websocket sessions from idle (see P.bursts). */
async function bursts(ctx: Ctx, round: number): Promise<void> {
  const B = P.bursts;
  await withStack(ctx, stackOptions(ctx, 'cluster'), async (stack) => {
    const { entries, pick } = stack.entries;
    const shares: number[] = [];
    for (let k = 0; k < B.count; k++) {
      await waitQuiet(() => stack.backendPids());
      const before = await stack.stats();
      await runJob<HoldResult>({ kind: 'hold', transport: 'ws', entries, pick, sessions: B.sessions, concurrency: B.concurrency, maxMs: 60_000 }, {
        onMessage: (m, child) => {
          if (m.type === 'held') child.send({ type: 'release' });
        },
      });
      const share = hopShare(before, await stack.stats());
      record(ctx, 'cluster', round, 'burst_hops_ws', share);
      if (share !== null) shares.push(share);
      await sleep(B.idleMs);
    }
    const sorted = [...shares].sort((a, b) => a - b);
    log(`  cluster bursts: hop share per burst of ${B.sessions} ${sorted.map((x) => x.toFixed(2)).join(' ')} (median ${median(shares).toFixed(2)})`);
  });
}

async function balance(ctx: Ctx, setup: SetupName, round: number): Promise<void> {
  const caps = P.balance.capacity;
  await withStack(ctx, stackOptions(ctx, setup, { capacity: caps }), async (stack) => {
    const { entries, pick } = stack.entries;
    let counts: number[] = [];
    await waitQuiet(() => stack.backendPids());
    await runJob<HoldResult>({ kind: 'hold', transport: 'ws', entries, pick, sessions: P.balance.sessions, concurrency: P.balance.concurrency, maxMs: 120_000 }, {
      onMessage: (m, child) => {
        if (m.type !== 'held') return;
        void (async () => {
          await sleep(P.balance.settleMs);
          const stats = await stack.stats();
          counts = IDS.map((id) => stats.find((s) => s.id === id)?.sessions ?? 0);
          child.send({ type: 'release' });
        })();
      },
    });
    const loads = counts.map((c, i) => c / (caps[i] ?? 1));
    const mean = loads.reduce((a, b) => a + b, 0) / loads.length;
    const ratio = mean > 0 ? Math.max(...loads) / mean : null;
    const plainMean = counts.reduce((a, b) => a + b, 0) / counts.length;
    record(ctx, setup, round, 'balance_max_over_mean_load', ratio, { counts });
    record(ctx, setup, round, 'balance_max_over_mean_sessions', plainMean > 0 ? Math.max(...counts) / plainMean : null);
    log(`  ${setup} balance: sessions a/b/c = ${counts.join('/')} (c at half capacity), max/mean load ${ratio?.toFixed(2)}`);
  });
}

/** kill -9 of instance c under load. */
async function failover(ctx: Ctx, setup: SetupName, round: number): Promise<void> {
  const killed = P.failover.killed;
  await withStack(ctx, stackOptions(ctx, setup), async (stack) => {
    const entries = stack.entriesWithout(killed);
    const pick = stack.entries.pick;
    const deadPort = stack.backends.find((b) => b.id === killed)?.port ?? 0;
    const monitor = { errors: 0, lastErrorAt: 0, detectedAt: 0 };
    let stopMonitor = false;
    let monitorDone: Promise<void> = Promise.resolve();
    const startMonitor = (): void => {
      const tail = stack.proxy?.kind === 'nginx' ? new LogTail(path.join(stack.proxy.dir, 'error.log')) : null;
      let last = -1;
      monitorDone = (async () => {
        while (!stopMonitor) {
          const now = Date.now();
          let count = 0;
          let down = false;
          if (stack.proxy?.kind === 'haproxy') {
            const st = await haproxyServerStats(stack.proxy.dir).catch(() => null);
            const c = st?.get(killed);
            if (c) {
              count = c.econ + c.wretr + c.wredis;
              down = !c.status.startsWith('UP');
            }
          } else if (tail) {
            count = (last < 0 ? 0 : last) + tail.read(`127.0.0.1:${deadPort}`);
          } else {
            const stats = (await stack.stats()).filter((s) => s.id !== killed);
            count = sumStat(stats, 'proxyErrors');
            // Down for routing on every survivor: its health check (or passive detection) failed.
            down = stats.length > 0 && stats.every((s) => (s.members ?? []).some((m) => m.id === killed && (!m.healthy || m.state !== 'serving')));
          }
          if (last >= 0 && count > last) monitor.lastErrorAt = now;
          if (last >= 0) monitor.errors += Math.max(0, count - last);
          last = count;
          if (down && monitor.detectedAt === 0) monitor.detectedAt = now;
          await sleep(100);
        }
      })();
    };
    await waitQuiet(() => [...stack.backendPids(), ...stack.proxyPids()]);
    const r = await runJob<FailoverResult>({ kind: 'failover', transport: 'ws', entries, pick, ...P.failover, maxMs: 120_000 }, {
      onMessage: (m, child) => {
        if (m.type !== 'ready') return;
        void (async () => {
          await sleep(3000);
          startMonitor();
          await sleep(300);
          const at = stack.kill9(killed);
          child.send({ type: 'killed', at });
          await sleep(P.failover.afterKillMs);
          stopMonitor = true;
        })();
      },
    }, 180_000);
    stopMonitor = true;
    await monitorDone;
    const k = r.killedAt;
    const lost = r.clients.filter((c) => c.lostFrom === killed && c.lostAt !== null && c.lostAt >= k - 50);
    const back = lost.filter((c) => c.backAt !== null).map((c) => (c.backAt as number) - k).sort((a, b) => a - b);
    const probesAfter = r.probes.filter((p) => p.at >= k);
    const failed = probesAfter.filter((p) => !p.ok);
    const onDead = probesAfter.filter((p) => p.ok && p.on === killed);
    const lastFail = failed.length > 0 ? Math.max(...failed.map((p) => p.at)) - k : 0;
    const allBack = back.length === lost.length && lost.length > 0 ? (back[back.length - 1] ?? NaN) : null;
    const median = back.length > 0 ? (back[Math.floor((back.length - 1) / 2)] ?? NaN) : null;
    record(ctx, setup, round, 'fo_clients_on_dead', lost.length);
    record(ctx, setup, round, 'foreign_failover', r.foreignCores);
    record(ctx, setup, round, 'fo_detect_ms', monitor.detectedAt > 0 ? monitor.detectedAt - k : null);
    record(ctx, setup, round, 'fo_last_routed_ms', monitor.lastErrorAt > 0 ? monitor.lastErrorAt - k : 0);
    record(ctx, setup, round, 'fo_routing_errors', monitor.errors);
    record(ctx, setup, round, 'fo_new_failed', failed.length);
    record(ctx, setup, round, 'fo_new_failed_last_ms', lastFail);
    record(ctx, setup, round, 'fo_reconnect_p50_ms', median);
    record(ctx, setup, round, 'fo_reconnect_all_ms', allBack);
    record(ctx, setup, round, 'fo_not_back', lost.length - back.length);
    log(`  ${setup} failover: ${lost.length} clients on ${killed}; detected ${monitor.detectedAt > 0 ? `${monitor.detectedAt - k} ms` : 'n/a'}, `
      + `last attempt routed to it ${monitor.lastErrorAt > 0 ? `${monitor.lastErrorAt - k} ms` : 'none seen'} (${monitor.errors} errors); `
      + `new sessions failed: ${failed.length}/${probesAfter.length} (last at ${lastFail} ms), landed on dead: ${onDead.length}; `
      + `reconnected p50 ${median ?? '-'} ms, all ${allBack ?? `no (${lost.length - back.length} not back)`} ms`);
  });
}

/**
 * A 4th member joins 3 that hold the sessions: how fast and how gently does it get its share?
 * Samples every member's session count and rebalancing closes once a second; the clients (Meteor's
 * reconnect schedule, calls re-sent over a reconnect) count their disconnects and failed calls.
 */
async function rebalancePhase(ctx: Ctx, round: number): Promise<void> {
  const R = P.rebalance;
  const env = (): Record<string, string> => ({
    CLUSTER_SLOW_START: '30s', CLUSTER_REBALANCE: '1', CLUSTER_REBALANCE_RATE: String(R.rate),
    CLUSTER_REBALANCE_MIN_AGE: `${R.minAgeMs}ms`,
  });
  await withStack(ctx, stackOptions(ctx, 'cluster', { env }), async (stack) => {
    const { entries, pick } = stack.entries;
    type Tick = { t: number; sessions: Record<string, number>; moved: Record<string, number> };
    const timeline: Tick[] = [];
    let joinedAt = 0;
    let steadyFrom: Tick | null = null;
    let steadyTo: Tick | null = null;
    const sample = async (): Promise<Tick> => {
      const stats = await stack.stats();
      const tick: Tick = { t: Date.now() - joinedAt, sessions: {}, moved: {} };
      for (const st of stats) {
        tick.sessions[st.id] = st.sessions;
        tick.moved[st.id] = Number(((st.cluster ?? {}).rebalance as { moved?: number } | undefined)?.moved ?? 0);
      }
      timeline.push(tick);
      return tick;
    };
    const ratio = (t: Tick): number => {
      const v = Object.values(t.sessions);
      const mean = v.reduce((a, b) => a + b, 0) / v.length;
      return mean > 0 ? Math.max(...v) / mean : Infinity;
    };
    await waitQuiet(() => stack.backendPids());
    const r = await runJob<RebalanceResult>({ kind: 'rebalance', transport: 'ws', entries, pick, sessions: R.sessions, concurrency: R.concurrency,
      callEveryMs: R.callEveryMs, callDeadlineMs: R.callDeadlineMs, maxMs: 20 * 60_000 }, {
      pids: () => stack.backendPids(),
      onMessage: (m, child) => {
        if (m.type !== 'ready') return;
        void (async () => {
          log(`  rebalance: ${String(m.opened)} sessions on a/b/c; waiting ${R.minAgeMs / 1000} s (CLUSTER_REBALANCE_MIN_AGE) before d joins`);
          await sleep(R.minAgeMs + 2000);
          joinedAt = Date.now();
          await sample();
          await stack.addBackend('d');
          // Until the window is over and nobody sheds any more (at most 3 windows), then the steady state.
          for (;;) {
            await sleep(1000);
            const t = await sample();
            if (t.t >= R.windowMs && ratio(t) <= R.target) break;
            if (t.t >= 3 * R.windowMs) break;
          }
          steadyFrom = await sample();
          log(`  rebalance: balanced window over at ${(steadyFrom.t / 1000).toFixed(0)} s (${JSON.stringify(steadyFrom.sessions)}); steady state for ${R.steadyMs / 1000} s`);
          const end = Date.now() + R.steadyMs;
          while (Date.now() < end) {
            await sleep(1000);
            await sample();
          }
          steadyTo = await sample();
          child.send({ type: 'stop' });
        })().catch((err: unknown) => {
          log(`  rebalance driver failed: ${(err as Error).message}`);
          child.send({ type: 'stop' });
        });
      },
    }, 30 * 60_000);
    const from = steadyFrom as Tick | null;
    const to = steadyTo as Tick | null;
    const first = timeline.find((t) => t.t > 0 && Object.keys(t.sessions).length === 4 && ratio(t) <= R.target);
    const atWindow = timeline.find((t) => t.t >= R.windowMs);
    // Close rates: per member, over each sampling interval (≈1 s) and over the whole episode.
    let maxRate = 0;
    let maxRate5 = 0;
    const episodeRates: Record<string, number> = {};
    const movedWindow: Record<string, number> = {};
    for (const id of ['a', 'b', 'c', 'd']) {
      const pts = timeline.filter((t) => t.moved[id] !== undefined && (from === null || t.t <= from.t));
      for (let i = 1; i < pts.length; i++) {
        const a = pts[i - 1] as Tick;
        const b = pts[i] as Tick;
        const dt = (b.t - a.t) / 1000;
        if (dt > 0.5) maxRate = Math.max(maxRate, ((b.moved[id] ?? 0) - (a.moved[id] ?? 0)) / dt);
        // Over ~5 s too: a 1 s sample taken over IPC can catch one close of the next second.
        const c = pts.find((t) => t.t >= a.t + 5000);
        if (c) maxRate5 = Math.max(maxRate5, ((c.moved[id] ?? 0) - (a.moved[id] ?? 0)) / ((c.t - a.t) / 1000));
      }
      const moving = pts.filter((t, i) => i > 0 && (t.moved[id] ?? 0) > ((pts[i - 1] as Tick).moved[id] ?? 0));
      const total = (pts[pts.length - 1]?.moved[id] ?? 0) - (pts[0]?.moved[id] ?? 0);
      movedWindow[id] = total;
      if (moving.length > 0) {
        const start = pts[pts.indexOf(moving[0] as Tick) - 1] as Tick;
        const end = moving[moving.length - 1] as Tick;
        episodeRates[id] = Math.round((total / Math.max(1, (end.t - start.t) / 1000)) * 100) / 100;
      }
    }
    const steadyMoved = from && to ? Object.keys(to.moved).reduce((n, id) => n + (to.moved[id] ?? 0) - (from.moved[id] ?? 0), 0) : null;
    const moved = r.clients.filter((c) => c.disconnects.length > 0);
    const perMoved = moved.map((c) => c.disconnects.length);
    const failedCalls = r.clients.reduce((n, c) => n + c.failedCalls, 0);
    const okCalls = r.clients.reduce((n, c) => n + c.okCalls, 0);
    const trace = timeline.filter((t, i) => i % 5 === 0 || t === first).map((t) => `${(t.t / 1000).toFixed(0)}s ${ratio(t).toFixed(2)}`).join(', ');
    record(ctx, 'cluster', round, 'rb_sessions', r.opened);
    record(ctx, 'cluster', round, 'rb_balanced_ms', first ? first.t : null);
    record(ctx, 'cluster', round, 'rb_ratio_at_window', atWindow ? ratio(atWindow) : null, { sessions: atWindow?.sessions });
    record(ctx, 'cluster', round, 'rb_max_close_rate', maxRate, { limit: R.rate, episodeRates });
    record(ctx, 'cluster', round, 'rb_max_close_rate_5s', maxRate5, { limit: R.rate });
    record(ctx, 'cluster', round, 'rb_moved', moved.length, { byMember: movedWindow });
    record(ctx, 'cluster', round, 'rb_max_disconnects_per_moved', perMoved.length ? Math.max(...perMoved) : 0);
    record(ctx, 'cluster', round, 'rb_failed_calls', failedCalls, { okCalls });
    record(ctx, 'cluster', round, 'rb_steady_moved', steadyMoved, { steadyMs: R.steadyMs });
    const out = path.join(ctx.tmpDir, '..', `ddp-cluster-rebalance-${process.pid}.json`);
    fs.writeFileSync(out, JSON.stringify({ params: R, timeline, clients: { opened: r.opened, moved: moved.length, perMoved: count(perMoved), failedCalls, okCalls } }));
    log(`  rebalance: ${r.opened} sessions; max/mean ≤ ${R.target} after ${first ? `${(first.t / 1000).toFixed(1)} s` : 'never'}, `
      + `at ${R.windowMs / 1000} s ${atWindow ? ratio(atWindow).toFixed(2) : '-'} ${JSON.stringify(atWindow?.sessions ?? {})}; `
      + `close rate max ${maxRate.toFixed(1)}/s per member over ~1 s, ${maxRate5.toFixed(1)}/s over 5 s (limit ${R.rate}; per episode ${JSON.stringify(episodeRates)}); `
      + `${moved.length} clients moved (${JSON.stringify(movedWindow)}), disconnects per moved client ${JSON.stringify(count(perMoved))}; `
      + `failed calls ${failedCalls} of ${failedCalls + okCalls}; steady state ${R.steadyMs / 1000} s: ${steadyMoved ?? '-'} moved`);
    log(`  rebalance: max/mean over time: ${trace}`);
    log(`  rebalance: timeline written to ${out}`);
  });
}

function count(values: readonly number[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[String(v)] = (out[String(v)] ?? 0) + 1;
  return out;
}

/* ------------------------------------------------------------------------------------------ */
/* profile                                                                                     */

/**
 * Every client entering at instance a. Forced hop (`hop`): a only proxies (to b and c), b and c
 * serve hops; served here (`local`): a serves every session itself. V8 CPU profiles of a and b
 * over the measured window of a throughput run.
 */
async function profile(ctx: Ctx, transport: 'ws' | 'xhr' | 'setup', outDir: string, setup: 'hop' | 'local'): Promise<void> {
  const profDir = path.join(ctx.tmpDir, `prof-${transport}`);
  fs.mkdirSync(profDir, { recursive: true });
  fs.mkdirSync(outDir, { recursive: true });
  let result: ThroughputResult | SetupResult | null = null;
  await withStack(ctx, stackOptions(ctx, setup), async (stack) => {
    const a = stack.backends.find((b) => b.id === 'a');
    if (!a) throw new Error('no instance a');
    const job: Job = transport === 'setup'
      ? { kind: 'setup', transport: 'ws', entries: [a.url], pick: 'rr', ...P.setup, durationMs: quick ? 5000 : 10_000 }
      : { kind: 'throughput', transport, entries: [a.url], pick: 'rr', ...P.throughput[transport], durationMs: quick ? 5000 : 10_000 };
    await waitQuiet(() => stack.backendPids());
    let stopped: Promise<unknown> = Promise.resolve();
    result = await runJob<ThroughputResult | SetupResult>(job, {
      onMessage: (m) => {
        if (m.type !== 'mark') return;
        if (m.what === 'start') for (const id of ['a', 'b']) void stack.send(id, { type: 'prof-start' });
        else stopped = Promise.all(['a', 'b'].map((id) => stack.send(id, { type: 'prof-stop', file: path.join(profDir, `${id}.cpuprofile`) }).then((r) => { if (r.ok !== true) throw new Error(`profiler on ${id}: ${String(r.error)}`); })));
      },
    });
    await stopped;
  });
  const r = result as ThroughputResult | SetupResult | null;
  const what = transport === 'setup'
    ? `session set-up (websocket), ${P.setup.concurrency} concurrent, every client entering at instance a: ${r?.kind === 'setup' ? r.perSec : '?'} set-ups/s`
    : `${transport}, ${P.throughput[transport].sessions} sessions × ${P.throughput[transport].depth} in flight, every client entering at instance a: ${r?.kind === 'throughput' ? r.callsPerSec : '?'} calls/s`;
  const header = `${setup === 'hop' ? 'forced hop' : 'served here'} (${what})\n`;
  let text = header;
  const roles = setup === 'hop'
    ? [['a', 'entry instance a: proxies every request to b or c'], ['b', 'instance b: serves hops from a']] as const
    : [['a', 'instance a: serves every session itself'], ['b', 'instance b: idle member']] as const;
  for (const [id, role] of roles) {
    const file = path.join(profDir, `${id}.cpuprofile`);
    text += `\n=== ${role}\n${analyzeProfile(file, REPO)}`;
    fs.mkdirSync(path.join(outDir, 'tmp'), { recursive: true });
    fs.copyFileSync(file, path.join(outDir, 'tmp', `profile-${setup}-${transport}-${id}.cpuprofile`));
  }
  const dest = path.join(outDir, `profile-${setup}-${transport}.txt`);
  fs.writeFileSync(dest, text);
  log(text);
  log(`profile written to ${path.relative(REPO, dest)} (+ ${path.relative(REPO, path.join(outDir, 'tmp'))}/*.cpuprofile for Chrome DevTools)`);
}

/* ------------------------------------------------------------------------------------------ */
/* cost                                                                                        */

const COST_SETUPS = ['direct', 'local', 'hop', 'pin', 'nginx', 'haproxy', 'floor'] as const;
type CostSetup = (typeof COST_SETUPS)[number];

/**
 * CPU per session set-up (the set-up phase's job, every client entering at one place) of the entry
 * and of the instances behind it, measured from /proc without a profiler. The entry: instance a
 * with CLUSTER_SELF_WEIGHT=0 (hop), the proxy (nginx, haproxy), or bench/floor.ts in front of plain
 * instances (floor: Node's own cost of answering info and piping an upgrade, nothing else); or
 * instance a pinning every session to b or c, which have balancer URLs (pin: no hop at all); or
 * instance a serving every session itself (direct: the plain app; local: with ddp-cluster), b and
 * c idle behind it. The
 * ratio entry / behind is steadier than either figure: this VM's speed drifts by ±20 %.
 */
async function cost(ctx: Ctx, name: CostSetup): Promise<void> {
  const stackName: SetupName = name === 'pin' ? 'hop' : name;
  // pin: the forced hop's policy, but every instance has a balancer URL (its own address), so the
  // client is pinned there and opens its session on the member directly: no hop.
  const extra: Partial<StackOptions> = name === 'pin' ? { env: (_id, port) => ({ CLUSTER_BALANCER_URL: `http://127.0.0.1:${port}` }) } : {};
  await withStack(ctx, stackOptions(ctx, stackName, extra), async (stack) => {
    let entry: string;
    let front: () => number[];
    let behind: () => number[];
    const pidsOf = (ids: string[]): number[] => stack.backends.filter((b) => ids.includes(b.id)).map((b) => b.proc.pid ?? 0);
    if (name === 'hop' || name === 'pin' || name === 'direct' || name === 'local') {
      entry = (stack.backends.find((b) => b.id === 'a') as { url: string }).url;
      front = () => pidsOf(['a']);
      behind = () => pidsOf(['b', 'c']);
    } else {
      entry = stack.entries.entries[0] as string;
      front = () => stack.proxyPids();
      behind = () => stack.backendPids();
    }
    const job: Job = { kind: 'setup', transport: 'ws', entries: [entry], pick: 'rr', ...P.setup, durationMs: quick ? 3000 : 8000 };
    await waitQuiet(() => [...front(), ...behind()]);
    let u0 = [usage(front()).cpu, usage(behind()).cpu];
    let du = [0, 0];
    const r = await runJob<SetupResult>(job, {
      onMessage: (m) => {
        if (m.type !== 'mark') return;
        if (m.what === 'start') u0 = [usage(front()).cpu, usage(behind()).cpu];
        else du = [usage(front()).cpu - (u0[0] ?? 0), usage(behind()).cpu - (u0[1] ?? 0)];
      },
    });
    const n = r.perSec * (job.durationMs / 1000);
    const per = (cpu: number): number => (n > 0 ? (cpu / n) * 1000 : NaN);
    const [f, b] = [per(du[0] ?? 0), per(du[1] ?? 0)];
    log(`cost ${name.padEnd(7)} ${String(r.perSec).padStart(7)} set-ups/s (${r.errors} errors): CPU ms per set-up: entry ${f.toFixed(3)}, behind it ${b.toFixed(3)}, entry/behind ${(f / b).toFixed(2)}`);
  });
}

/* ------------------------------------------------------------------------------------------ */
/* main                                                                                        */

function gitDescribe(): { commit: string; dirty: boolean } {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'lib'], { cwd: REPO, encoding: 'utf8' }).trim() !== '';
    return { commit, dirty };
  } catch {
    return { commit: 'unknown', dirty: false };
  }
}

async function main(): Promise<void> {
  const outDir = path.resolve(args.out ?? path.join(REPO, 'bench', 'results'));
  const costSetups = (args.setups ?? 'hop,nginx,floor').split(',').map((s) => s.trim() as CostSetup);
  for (const s of costSetups) if (args.cost === true && !COST_SETUPS.includes(s)) throw new Error(`unknown setup ${s} for --cost; choose from ${COST_SETUPS.join(',')}`);
  const want = new Set<SetupName>((args.cost === true ? costSetups.map((s) => (s === 'pin' ? 'hop' : s)) : args.setups ? args.setups.split(',') : [...SETUPS]).map((s) => s.trim() as SetupName));
  for (const s of want) if (!ALL_SETUPS.includes(s)) throw new Error(`unknown setup ${s}; choose from ${ALL_SETUPS.join(',')}`);
  want.add('direct');
  const setups = ALL_SETUPS.filter((s) => want.has(s));
  const defaultPhases: readonly Phase[] = quick ? ['latency', 'throughput', 'setup'] : PHASES;
  const phases = new Set<Phase>((args.phases ? args.phases.split(',') : defaultPhases).map((p) => p.trim() as Phase));
  for (const p of phases) if (!PHASES.includes(p)) throw new Error(`unknown phase ${p}; choose from ${PHASES.join(',')}`);

  const needProxies = setups.includes('nginx') || setups.includes('haproxy');
  const proxies = needProxies ? requireProxies() : null;
  const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ddp-cluster-bench-'));
  const started = Date.now();
  let stopping = false;
  const cleanup = async (): Promise<void> => {
    await disposeAll().catch(() => undefined);
    fs.rmSync(tmpDir, { recursive: true, force: true });
  };
  process.on('SIGINT', () => {
    if (stopping) process.exit(130);
    stopping = true;
    log('\ninterrupted; cleaning up…');
    void cleanup().then(() => process.exit(130));
  });

  const needMongo = setups.some((s) => s === 'local' || s === 'hop' || s === 'cluster') || args.profile !== undefined;
  let mongoKind = 'none';
  let mongoUrl: string | null = null;
  if (needMongo) {
    const m = await startMongo();
    mongoUrl = m.url;
    mongoKind = m.kind;
  }
  const ctx: Ctx = { mongoUrl, bins: proxies ? { nginx: proxies.nginx, haproxy: proxies.haproxy } : null, tmpDir, samples: [] };

  try {
    if (args.cost === true) {
      for (let round = 0; round < (quick ? 1 : 3); round++) {
        for (const s of costSetups) await cost(ctx, s);
      }
      return;
    }
    if (args.profile !== undefined) {
      const t = args.profile === 'xhr' ? 'xhr' : args.profile === 'setup' ? 'setup' : 'ws';
      await profile(ctx, t, outDir, args.setups === 'local' ? 'local' : 'hop');
      return;
    }
    const m = machine();
    log(`ddp-cluster bench${quick ? ' (quick)' : ''}: ${setups.join(', ')}; phases ${[...phases].join(', ')}`);
    log(`machine: ${m.cpu}, ${m.cores} cores, ${m.memGiB} GiB, Linux ${m.kernel}, Node ${m.node}; discovery: ${mongoKind}`);
    if (proxies) log(`proxies: nginx ${proxies.versions.nginx}, HAProxy ${proxies.versions.haproxy}`);

    // Setups alternate within every round (A B C … A B C …), each round starting one further on.
    const order = (round: number, list: readonly SetupName[]): SetupName[] => list.map((_, i) => list[(i + round) % list.length] as SetupName);
    if (phases.has('latency') || phases.has('throughput') || phases.has('setup')) {
      for (let round = 0; round < P.repeats; round++) {
        log(`round ${round + 1}/${P.repeats}: latency, throughput, set-up rate`);
        for (const s of order(round, setups)) await guarded(`${s} battery`, () => battery(ctx, s, round, phases));
      }
    }
    if (phases.has('memory')) {
      for (let round = 0; round < P.memoryRepeats; round++) {
        log(`round ${round + 1}/${P.memoryRepeats}: memory at ${P.memory.sessions} idle sessions`);
        for (const s of order(round, setups)) await guarded(`${s} memory`, () => memory(ctx, s, round));
      }
    }
    if (phases.has('balance')) {
      for (let round = 0; round < P.repeats; round++) {
        log(`round ${round + 1}/${P.repeats}: balance (${P.balance.sessions} sessions, c at half capacity)`);
        for (const s of order(round, setups)) await guarded(`${s} balance`, () => balance(ctx, s, round));
      }
    }
    if (phases.has('bursts') && setups.includes('cluster')) {
      for (let round = 0; round < P.repeats; round++) {
        log(`round ${round + 1}/${P.repeats}: bursts (${P.bursts.count} × ${P.bursts.sessions} sessions from idle, cluster mode)`);
        await guarded('cluster bursts', () => bursts(ctx, round));
      }
    }
    if (phases.has('failover')) {
      const fs_ = setups.filter((s) => FAILOVER_SETUPS.includes(s));
      for (let round = 0; round < P.failoverRepeats; round++) {
        log(`round ${round + 1}/${P.failoverRepeats}: failover (kill -9 of c under load)`);
        for (const s of order(round, fs_)) await guarded(`${s} failover`, () => failover(ctx, s, round));
      }
    }

    if (phases.has('rebalance')) {
      log(`rebalance: ${P.rebalance.sessions} sessions on 3 members, then a 4th joins (rate ${P.rebalance.rate}/s per member)`);
      await guarded('cluster rebalance', () => rebalancePhase(ctx, 0));
    }

    const run: RunRecord = {
      startedAt: new Date(started).toISOString(),
      durationS: Math.round((Date.now() - started) / 1000),
      quick,
      command: `npm run bench${process.argv.slice(2).length ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
      git: gitDescribe(),
      machine: m,
      discovery: mongoKind,
      proxies: proxies?.versions ?? {},
      params: P,
      setups,
      phases: [...phases],
      samples: ctx.samples,
      failures,
    };
    await writeReport(run, outDir);
    log(`done in ${run.durationS} s; wrote ${path.relative(REPO, outDir)}/latest.{json,md,png}`);
  } finally {
    await cleanup();
  }
}

main().then(() => process.exit(0), (err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  void disposeAll().finally(() => process.exit(1));
});
