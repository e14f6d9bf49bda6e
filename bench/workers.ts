/**
 * `npm run bench:workers` (issue 14): every core behind one port. Five setups, one run, on loopback:
 *   one      one plain process of the app (no balancer): the single-core baseline
 *   single   one process with ddp-cluster attached, no workers: what serving through the balancer costs
 *   workers  ddp-cluster with CLUSTER_WORKERS_COUNT=2 on one port; the primary's CLUSTER_SELF_WEIGHT=0,
 *            so it only accepts and hands connections off (sessions run in the 2 workers)
 *   workers-serving  the same with the primary serving too (the default, CLUSTER_SELF_WEIGHT=1): what
 *            a third app process on 2 cores costs or brings
 *   nginx2   nginx in front of 2 plain processes
 * and, when named with --setups (Meteor app only), the hop pair: `hop`, a ddp-cluster entry with
 * CLUSTER_SELF_WEIGHT=0 that proxies every session to one app process behind it, and `nginx1`,
 * nginx in front of one process.
 * For each: websocket and xhr-polling max throughput (method calls/s), and method RTT at a fixed
 * offered load (the same for every setup). For `workers`, the CPU the primary spent (accepting,
 * reading first requests, handing off, plus its own heartbeats and health checks) as a share of
 * all server CPU during the websocket throughput run. And, because the load generator runs on the
 * same cores: the cores it and the servers used, and calls per server CPU-second (what the setup
 * would do with a core of its own per process).
 *
 * The app (--app): `meteor` (default), examples/meteor-app built with the real Meteor tool (found
 * as the test suite finds it: METEOR_BIN, `meteor` on PATH, ../shared/meteor/build.sh) and run
 * as bundles with `node main.js`; or `reference`, bench/backend.ts (the reference DDP app, far
 * cheaper per call than Meteor, so the load generator's share of the 2 cores weighs more).
 * The load generator (--loadgen): `go` (default; bench/loadgen-go, built here with the Go
 * toolchain, a third of the Node one's CPU per xhr call and half per websocket call) or `node`
 * (bench/loadgen.ts, what `npm run bench` uses).
 *
 *   npm run bench:workers [-- --quick] [-- --app meteor|reference] [-- --loadgen go|node] [-- --rounds N]
 *                         [-- --setups one,hop,nginx1] [-- --out bench/results]
 *
 * Writes <out>/workers.json and prints a Markdown table. Needs nginx and a MongoDB-compatible
 * server (as `npm run bench`), Go for the default load generator, Meteor for the default app.
 */
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { disposeAll, freePort, startMongo, uniqueDbUrl } from '../examples/node-ddp-app/mongo';
import { EXAMPLE_SECRET } from '../examples/node-ddp-app/secret';
import type { Job, JobResult, LatencyResult, ThroughputResult } from './loadgen';
import { cpuSeconds, foreignCores, machine, systemCpu, usage } from './procstat';
import { compiled } from './compiled';
import { findBinary, startNginx, type ProxyProcess } from './proxies';
import { median } from './report';
import { buildApp, linkedPackageDirs, startBundleOnFreePort, type BuiltApp, type MeteorProcess } from '../tests/support/meteor-real';

const REPO = path.resolve(__dirname, '..');
const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false }, out: { type: 'string' },
    app: { type: 'string', default: 'meteor' }, loadgen: { type: 'string', default: 'go' }, rounds: { type: 'string' }, setups: { type: 'string' },
  },
});
const quick = args.quick === true;
/** Every setup runs once per round, rounds one after the other; each figure is the median over rounds. */
const ROUNDS = Number(args.rounds ?? (quick ? 1 : 3));
if (!Number.isInteger(ROUNDS) || ROUNDS < 1 || ROUNDS > 9) throw new Error(`--rounds must be 1..9, not ${args.rounds}`);
if (args.app !== 'meteor' && args.app !== 'reference') throw new Error(`--app must be meteor or reference, not ${args.app}`);
if (args.loadgen !== 'go' && args.loadgen !== 'node') throw new Error(`--loadgen must be go or node, not ${args.loadgen}`);
const APP = args.app;
const LOADGEN = args.loadgen;
const P = {
  latency: {
    ws: { sessions: 60, rate: 1000, warmupMs: quick ? 500 : 2000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
    xhr: { sessions: 30, rate: 200, warmupMs: quick ? 500 : 2000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
  },
  throughput: {
    // Meteor's server code needs a few seconds of load before its JIT settles.
    ws: { sessions: 90, depth: 4, warmupMs: quick ? 500 : 3000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
    xhr: { sessions: 90, depth: 2, warmupMs: quick ? 500 : 3000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
  },
};
/** The setups of a default run; `--setups` may also name the hop pair (Meteor app only). */
const DEFAULT_SETUPS = ['one', 'single', 'workers', 'workers-serving', 'nginx2'] as const;
const ALL_SETUPS = [...DEFAULT_SETUPS, 'hop', 'nginx1'] as const;
type Setup = (typeof ALL_SETUPS)[number];
const LABELS: Record<Setup, string> = {
  hop: 'ddp-cluster, forced hop (entry serves nothing, 1 app process behind)',
  nginx1: 'nginx in front of 1 process',
  one: 'one process',
  single: 'one process with ddp-cluster (served here)',
  workers: 'ddp-cluster, 2 workers, one port',
  'workers-serving': 'ddp-cluster, 2 workers + serving primary, one port',
  nginx2: 'nginx in front of 2 processes',
};

const SETUPS: readonly Setup[] = args.setups === undefined ? DEFAULT_SETUPS : args.setups.split(',').map((x) => {
  const setup = x.trim() as Setup;
  if (!ALL_SETUPS.includes(setup)) throw new Error(`--setups: unknown setup ${x}; use ${ALL_SETUPS.join(', ')}`);
  if ((setup === 'hop' || setup === 'nginx1') && APP !== 'meteor') throw new Error(`--setups ${setup}: Meteor app only (npm run bench measures the reference app's hops)`);
  return setup;
});

const log = (line: string): void => void process.stdout.write(`${line}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Backend { readonly proc: ChildProcess; readonly url: string; readonly port: number }

/** bench/backend.ts in its own process; resolves when it listens (and, attached, has discovered). */
async function backend(id: string, env: Record<string, string>): Promise<Backend> {
  const port = await freePort();
  const base: Record<string, string> = { ...process.env as Record<string, string>, BENCH_ID: id, PORT: String(port), HTTP_FORWARDED_COUNT: '' };
  for (const k of Object.keys(base)) if (k.startsWith('CLUSTER_')) delete base[k];
  const proc = fork(compiled('backend'), [], {
    cwd: REPO, env: { ...base, ...env }, execArgv: ['--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json',
  });
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`backend ${id} not ready in 60 s`)), 60_000);
    proc.on('message', (m: Record<string, unknown>) => {
      if (m.type === 'ready') {
        clearTimeout(t);
        resolve(String(m.url));
      }
    });
    proc.once('exit', (code) => reject(new Error(`backend ${id} exited with ${code}`)));
  });
  return { proc, url, port };
}

function ask(b: Backend, type: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${type} reply`)), 5000);
    const on = (m: Record<string, unknown>): void => {
      if (m.type !== type) return;
      clearTimeout(t);
      b.proc.off('message', on);
      resolve(m);
    };
    b.proc.on('message', on);
    b.proc.send({ type });
  });
}

async function stop(b: Backend): Promise<void> {
  if (b.proc.exitCode !== null || b.proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => b.proc.once('exit', () => r()));
  b.proc.kill('SIGTERM');
  const t = setTimeout(() => b.proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
}

interface Stack {
  readonly entry: string;
  /** Every server-side process (backends, workers, proxy). */
  pids(): number[];
  /** The accepting process alone (workers: the primary). */
  acceptPids(): number[];
  stop(): Promise<void>;
}

async function startStack(setup: Setup, mongoUrl: string, tmp: string): Promise<Stack> {
  if (APP === 'meteor') return startMeteorStack(setup, mongoUrl, tmp, await meteorApp());
  if (setup === 'one') {
    const b = await backend('one', { BENCH_ATTACH: '0' });
    return { entry: b.url, pids: () => [b.proc.pid ?? 0], acceptPids: () => [], stop: () => stop(b) };
  }
  if (setup === 'nginx2') {
    const bs = await Promise.all(['a', 'b'].map((id) => backend(id, { BENCH_ATTACH: '0' })));
    return nginxInFront(tmp, bs.map((b) => ({ port: b.port, pid: b.proc.pid ?? 0, stop: () => stop(b) })));
  }
  const b = await backend('m', {
    BENCH_ATTACH: '1', CLUSTER_DISCOVERY_URL: uniqueDbUrl(mongoUrl, 'bench_workers'), CLUSTER_SERVICE: 'web',
    CLUSTER_SECRET: EXAMPLE_SECRET, CLUSTER_INSTANCE_ID: 'm', CLUSTER_LOG_LEVEL: 'error', CLUSTER_CAPACITY: '2000',
    CLUSTER_SLOW_START: '0', CLUSTER_WORKERS_COUNT: setup === 'single' ? '0' : '2', CLUSTER_SELF_WEIGHT: setup === 'workers' ? '0' : '1',
  });
  const want = setup === 'single' ? 0 : 2;
  let workerPids: number[] = [];
  // Formed: the primary sees both workers healthy and serving.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const s = await ask(b, 'stats');
    const members = (s.members ?? []) as { id: string; healthy: boolean; state: string }[];
    const cluster = (s.cluster ?? {}) as { workers?: { workers?: { pid: number | null; up: boolean }[] } };
    const ws = cluster.workers?.workers ?? [];
    if (members.filter((m) => m.healthy && m.state === 'serving').length === 1 + want && ws.length === want && ws.every((w) => w.up)) {
      workerPids = ws.map((w) => w.pid ?? 0);
      break;
    }
    if (Date.now() > deadline) throw new Error(`workers did not form: ${JSON.stringify(members)}`);
    await sleep(200);
  }
  return { entry: b.url, pids: () => [b.proc.pid ?? 0, ...workerPids], acceptPids: () => (want === 0 ? [] : [b.proc.pid ?? 0]), stop: () => stop(b) };
}

interface Plain { readonly port: number; readonly pid: number; stop(): Promise<void> }

async function nginxInFront(tmp: string, bs: readonly Plain[]): Promise<Stack> {
  const port = await freePort();
  const nginx = findBinary('nginx');
  if (nginx === null) throw new Error('nginx is not installed (apt-get install -y nginx)');
  const proxy: ProxyProcess = await startNginx(nginx, path.join(tmp, `nginx-${port}`), port,
    bs.map((b, i) => ({ id: String.fromCharCode(97 + i), port: b.port, weight: 2 })), 2000);
  return {
    entry: proxy.url, pids: () => [...bs.map((b) => b.pid), ...proxy.pids()], acceptPids: () => proxy.pids(),
    async stop() {
      await proxy.stop().catch(() => undefined);
      await Promise.all(bs.map((b) => b.stop()));
    },
  };
}

let built: Promise<BuiltApp> | null = null;

/** examples/meteor-app built once per run with the real Meteor tool (the Atmosphere path, this checkout). */
function meteorApp(): Promise<BuiltApp> {
  built ??= (async () => {
    log('building examples/meteor-app with Meteor (the first time takes minutes)...');
    const app = await buildApp('meteor-app', { packageDirs: linkedPackageDirs() });
    log(`  built in ${(app.buildMs / 1000).toFixed(0)} s: ${app.bundle}`);
    return app;
  })();
  return built;
}

const DASHBOARD_PASSWORD = 'bench-workers-dashboard';

/** `pid` and its descendants (a bundle started with CLUSTER_WORKERS_COUNT forks its workers). */
function family(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    const p = out[i] as number;
    try {
      for (const tid of fs.readdirSync(`/proc/${p}/task`)) {
        const kids = fs.readFileSync(`/proc/${p}/task/${tid}/children`, 'utf8').trim();
        if (kids) out.push(...kids.split(/\s+/).map(Number));
      }
    } catch {
      // gone
    }
  }
  return out;
}

async function stopBundle(p: MeteorProcess): Promise<void> {
  const t = setTimeout(() => void p.kill('SIGKILL'), 15_000);
  await p.kill('SIGTERM');
  clearTimeout(t);
}

/** A bundle on a free port (another one if it was taken meanwhile), and that port. */
async function bundleOnFreePort(app: BuiltApp, id: string, env: (port: number) => Record<string, string>): Promise<{ port: number; p: MeteorProcess }> {
  const p = await startBundleOnFreePort(app, id, env);
  return { port: Number(new URL(p.url).port), p };
}

async function startMeteorStack(setup: Setup, mongoUrl: string, tmp: string, app: BuiltApp): Promise<Stack> {
  const appDb = uniqueDbUrl(mongoUrl, 'bench_workers_app');
  if (setup === 'hop') return meteorHop(mongoUrl, appDb, app);
  if (setup === 'one' || setup === 'nginx2' || setup === 'nginx1') {
    const ids = setup === 'nginx2' ? ['a', 'b'] : ['one'];
    const ps = await Promise.all(ids.map((id) => bundleOnFreePort(app, id, () => ({ MONGO_URL: appDb }))));
    const plain = ps.map(({ port, p }) => ({ port, pid: p.proc.pid ?? 0, stop: () => stopBundle(p) }));
    if (setup !== 'one') return nginxInFront(tmp, plain);
    const one = plain[0] as Plain;
    return { entry: `http://127.0.0.1:${one.port}`, pids: () => [one.pid], acceptPids: () => [], stop: () => one.stop() };
  }
  const discovery = uniqueDbUrl(mongoUrl, 'bench_workers');
  const { p } = await bundleOnFreePort(app, 'm', (port) => ({
    MONGO_URL: appDb, CLUSTER_DISCOVERY_URL: discovery, CLUSTER_SECRET: EXAMPLE_SECRET,
    CLUSTER_ENDPOINT_URL: `http://127.0.0.1:${port}`, CLUSTER_CAPACITY: '2000',
    CLUSTER_SLOW_START: '0', CLUSTER_WORKERS_COUNT: setup === 'single' ? '0' : '2', CLUSTER_SELF_WEIGHT: setup === 'workers' ? '0' : '1',
    CLUSTER_DASHBOARD_PASSWORD: DASHBOARD_PASSWORD,
  }));
  const want = setup === 'single' ? 1 : 3;
  // Formed: the primary sees itself and both workers healthy and serving.
  const deadline = Date.now() + 90_000;
  for (;;) {
    const serving = await servingMembers(p.url);
    if (serving === want && family(p.proc.pid ?? 0).length === want) break;
    if (Date.now() > deadline) throw new Error(`Meteor workers did not form: ${serving} serving\n${p.tail()}`);
    await sleep(250);
  }
  const pid = p.proc.pid ?? 0;
  return { entry: p.url, pids: () => family(pid), acceptPids: () => (want === 1 ? [] : [pid]), stop: () => stopBundle(p) };
}

/** Members a process sees healthy and serving, from its dashboard API. */
async function servingMembers(url: string): Promise<number> {
  const res = await fetch(`${url}/cluster/api/cluster`, {
    headers: { authorization: `Basic ${Buffer.from(`bench:${DASHBOARD_PASSWORD}`).toString('base64')}` }, signal: AbortSignal.timeout(5000),
  }).catch(() => null);
  const members = res?.status === 200 ? ((await res.json()) as { members: { healthy: boolean; state: string }[] }).members : [];
  return members.filter((m) => m.healthy && m.state === 'serving').length;
}

/**
 * The forced hop in Meteor: bundle `a` (CLUSTER_SELF_WEIGHT=0, the entry every client uses) proxies
 * every session to bundle `b`, as nginx in front of 1 process does to that one process.
 */
async function meteorHop(mongoUrl: string, appDb: string, app: BuiltApp): Promise<Stack> {
  const discovery = uniqueDbUrl(mongoUrl, 'bench_hop');
  const start = async (id: string): Promise<MeteorProcess> => (await bundleOnFreePort(app, id, (port) => ({
    MONGO_URL: appDb, CLUSTER_DISCOVERY_URL: discovery, CLUSTER_SECRET: EXAMPLE_SECRET, CLUSTER_ENDPOINT_URL: `http://127.0.0.1:${port}`,
    CLUSTER_CAPACITY: '2000', CLUSTER_SLOW_START: '0', CLUSTER_DASHBOARD_PASSWORD: DASHBOARD_PASSWORD, CLUSTER_SELF_WEIGHT: id === 'a' ? '0' : '1',
  }))).p;
  const [a, b] = await Promise.all([start('a'), start('b')]);
  const deadline = Date.now() + 90_000;
  while ((await servingMembers(a.url)) !== 2) {
    if (Date.now() > deadline) throw new Error(`the hop pair did not form:\n${a.tail()}\n${b.tail()}`);
    await sleep(250);
  }
  const pids = [a.proc.pid ?? 0, b.proc.pid ?? 0];
  return { entry: a.url, pids: () => pids, acceptPids: () => [pids[0] as number], stop: async () => void (await Promise.all([stopBundle(a), stopBundle(b)])) };
}

/** Before a job, waits (at most 60 s) until other tenants use less than 0.35 cores. */
async function waitQuiet(pids: () => number[]): Promise<number> {
  const deadline = Date.now() + 60_000;
  let f = await foreignCores(pids);
  while (f > 0.35 && Date.now() < deadline) f = await foreignCores(pids);
  return f;
}

type OnMark = (what: string, loadgenPid: number) => void;

/** Runs a job in a fresh load generator; `foreign`: other tenants' cores meanwhile. */
async function runJob<R extends JobResult>(job: Job, pids: () => number[], onMark?: OnMark): Promise<R & { foreign: number }> {
  await waitQuiet(pids);
  const sys0 = systemCpu();
  const own0 = usage(pids()).cpu;
  const me0 = process.cpuUsage();
  const t0 = Date.now();
  const r = await (LOADGEN === 'go' ? runGo<R>(job, onMark) : runNode<R>(job, onMark));
  const me = process.cpuUsage(me0);
  const ours = usage(pids()).cpu - own0 + r.cpuSec + (me.user + me.system) / 1e6;
  const foreign = Math.max(0, (systemCpu().busy - sys0.busy - ours) / Math.max(0.001, (Date.now() - t0) / 1000));
  return { ...r.result, foreign: Math.round(foreign * 100) / 100 };
}

interface Raw<R> { result: R; cpuSec: number }

/** Handles one message of a load generator; resolves/rejects the job when it is the last. */
function onLoadgenMessage<R>(m: Record<string, unknown>, pid: number, done: (err: Error | null, r?: Raw<R>) => void, onMark?: OnMark): void {
  if (m.type === 'result') done(null, { result: m.result as R, cpuSec: Number(m.cpuSec ?? 0) });
  else if (m.type === 'error') done(new Error(`load generator: ${String(m.message)}`));
  else if (m.type === 'mark') onMark?.(String(m.what), pid);
}

function runNode<R extends JobResult>(job: Job, onMark?: OnMark): Promise<Raw<R>> {
  return new Promise((resolve, reject) => {
    const child = fork(path.join(REPO, 'bench', 'loadgen.ts'), [], {
      cwd: REPO, execArgv: ['--import', 'tsx', '--max-old-space-size=4096'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json',
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`load generator (${job.kind}) exceeded 240 s`));
    }, 240_000);
    child.on('message', (m: Record<string, unknown>) => onLoadgenMessage<R>(m, child.pid ?? 0, (err, r) => {
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(r as Raw<R>);
    }, onMark));
    child.send({ type: 'job', job });
  });
}

let goBinary: string | null = null;

/** bench/loadgen-go built once per run (Go fetches gorilla/websocket from the module proxy the first time). */
function loadgenGo(): string {
  if (goBinary !== null) return goBinary;
  const bin = path.join(os.tmpdir(), `ddp-cluster-loadgen-go-${process.pid}`);
  try {
    execFileSync('go', ['build', '-o', bin, '.'], { cwd: path.join(REPO, 'bench', 'loadgen-go'), stdio: 'inherit' });
  } catch (err) {
    throw new Error(`building bench/loadgen-go failed (${(err as Error).message}); install Go >= 1.22, or run with --loadgen node`);
  }
  goBinary = bin;
  return bin;
}

function runGo<R extends JobResult>(job: Job, onMark?: OnMark): Promise<Raw<R>> {
  return new Promise((resolve, reject) => {
    // One OS thread runs its goroutines, as one event loop runs the Node generator's clients.
    const child = spawn(loadgenGo(), [JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, GOMAXPROCS: '1' } });
    let settled = false;
    const done = (err: Error | null, r?: Raw<R>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(r as Raw<R>);
    };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      done(new Error(`load generator (${job.kind}) exceeded 240 s`));
    }, 240_000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      let m: Record<string, unknown>;
      try {
        m = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return done(new Error(`load generator printed ${line.slice(0, 200)}`));
      }
      onLoadgenMessage<R>(m, child.pid ?? 0, done, onMark);
    });
    child.once('exit', (code) => done(new Error(`load generator exited with ${code} before its result`)));
  });
}

type Row = Record<string, number | null>;

/** One round: every setup started, measured and stopped in turn. */
async function runRound(mongoUrl: string, tmp: string): Promise<Record<string, Row>> {
  const rows: Record<string, Row> = {};
  for (const setup of SETUPS) {
    const stack = await startStack(setup, mongoUrl, tmp);
    const row: Row = {};
    try {
      await sleep(1000);
      for (const transport of ['ws', 'xhr'] as const) {
        let all0 = 0;
        let acc0 = 0;
        let gen0 = 0;
        let all = NaN;
        let acc = NaN;
        let gen = NaN;
        const r = await runJob<ThroughputResult>({ kind: 'throughput', transport, entries: [stack.entry], pick: 'rr', ...P.throughput[transport] }, stack.pids, (what, loadgenPid) => {
          if (what === 'start') {
            all0 = usage(stack.pids()).cpu;
            acc0 = usage(stack.acceptPids()).cpu;
            gen0 = cpuSeconds(loadgenPid);
          } else if (what === 'end') {
            all = usage(stack.pids()).cpu - all0;
            acc = usage(stack.acceptPids()).cpu - acc0;
            gen = cpuSeconds(loadgenPid) - gen0;
          }
        });
        const window = P.throughput[transport].durationMs / 1000;
        row[`tput_${transport}`] = r.callsPerSec;
        row[`tput_${transport}_errors`] = r.errors;
        row[`cpu_${transport}_accept_share`] = stack.acceptPids().length > 0 && all > 0 ? acc / all : null;
        row[`cores_${transport}_servers`] = all / window;
        row[`cores_${transport}_loadgen`] = gen / window;
        // What the setup does per core it gets: calls per server CPU-second.
        row[`calls_per_cpu_${transport}`] = all > 0 ? (r.callsPerSec * window) / all : null;
        row[`foreign_tput_${transport}`] = r.foreign;
        const perCall = (r as { requestsPerCall?: number }).requestsPerCall;
        row[`requests_per_call_${transport}`] = perCall ?? null;
        log(`  ${setup} throughput ${transport}: ${r.callsPerSec} calls/s, ${r.errors} errors; server CPU ${all.toFixed(2)} s, accepting process ${acc.toFixed(2)} s, `
          + `load generator ${gen.toFixed(2)} s in ${window} s; ${perCall === undefined ? '' : `${perCall} requests per call; `}others ${r.foreign} cores`);
        await sleep(500);
      }
      for (const transport of ['ws', 'xhr'] as const) {
        const r = await runJob<LatencyResult>({ kind: 'latency', transport, entries: [stack.entry], pick: 'rr', ...P.latency[transport] }, stack.pids);
        row[`foreign_lat_${transport}`] = r.foreign;
        row[`lat_${transport}_p50`] = r.ms.p50;
        row[`lat_${transport}_p99`] = r.ms.p99;
        row[`lat_${transport}_errors`] = r.errors;
        log(`  ${setup} latency ${transport} @${r.offered}/s: p50 ${r.ms.p50} p99 ${r.ms.p99} ms, ${r.errors} errors; others ${r.foreign} cores`);
        await sleep(500);
      }
    } finally {
      await stack.stop();
    }
    rows[setup] = row;
  }
  return rows;
}

/** Per setup, the median of every figure over the rounds (NaN and null left out). */
function medianRows(rounds: readonly Record<string, Row>[]): Record<string, Row> {
  const out: Record<string, Row> = {};
  for (const setup of SETUPS) {
    const keys = new Set(rounds.flatMap((r) => Object.keys(r[setup] ?? {})));
    const row: Row = {};
    for (const k of keys) {
      const xs = rounds.map((r) => r[setup]?.[k]).filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
      row[k] = xs.length === 0 ? null : median(xs);
    }
    out[setup] = row;
  }
  return out;
}

async function main(): Promise<void> {
  const mongo = await startMongo();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ddp-cluster-bench-workers-'));
  const rounds: Record<string, Row>[] = [];
  try {
    log(`bench:workers${quick ? ' (quick)' : ''}, app ${APP}, load generator ${LOADGEN}, ${ROUNDS} round(s), on ${JSON.stringify(machine())}`);
    if (LOADGEN === 'go') loadgenGo();
    for (let round = 1; round <= ROUNDS; round++) {
      log(`round ${round} of ${ROUNDS}`);
      rounds.push(await runRound(mongo.url, tmp));
    }
  } finally {
    await disposeAll().catch(() => undefined);
  }
  const rows = medianRows(rounds);
  const one = rows.one ?? {};
  const fmt = (v: number | null | undefined, d = 0): string => (v === null || v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(d));
  const ratio = (v: number | null | undefined, base: number | null | undefined): string =>
    v && base ? `${(v / base).toFixed(2)}×` : '-';
  const lines = [
    '| Setup | ws calls/s | ×one | xhr calls/s | ×one | xhr requests per call | ws / xhr calls per server CPU-s (×one) | cores at ws max: servers + load generator | ws RTT p50 / p99 ms | xhr RTT p50 / p99 ms | accepting process CPU (ws max) | other tenants (cores, max) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...SETUPS.map((s) => {
      const r = rows[s] ?? {};
      return `| ${LABELS[s]} | ${fmt(r.tput_ws)} | ${ratio(r.tput_ws, one.tput_ws)} | ${fmt(r.tput_xhr)} | ${ratio(r.tput_xhr, one.tput_xhr)} | ${fmt(r.requests_per_call_xhr, 2)} | `
        + `${fmt(r.calls_per_cpu_ws)} (${ratio(r.calls_per_cpu_ws, one.calls_per_cpu_ws)}) / ${fmt(r.calls_per_cpu_xhr)} (${ratio(r.calls_per_cpu_xhr, one.calls_per_cpu_xhr)}) | `
        + `${fmt(r.cores_ws_servers, 2)} + ${fmt(r.cores_ws_loadgen, 2)} | `
        + `${fmt(r.lat_ws_p50, 2)} / ${fmt(r.lat_ws_p99, 2)} | ${fmt(r.lat_xhr_p50, 2)} / ${fmt(r.lat_xhr_p99, 2)} | `
        + `${r.cpu_ws_accept_share === null || r.cpu_ws_accept_share === undefined ? '-' : `${(r.cpu_ws_accept_share * 100).toFixed(1)} %`} | `
        + `${fmt(Math.max(...['foreign_tput_ws', 'foreign_tput_xhr', 'foreign_lat_ws', 'foreign_lat_xhr'].map((k) => r[k] ?? 0)), 2)} |`;
    }),
  ];
  log(`\n${lines.join('\n')}\n`);
  const out = args.out ?? path.join(REPO, 'bench', 'results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'workers.json'), `${JSON.stringify({ at: new Date().toISOString(), quick, app: APP, loadgen: LOADGEN, rounds: ROUNDS, machine: machine(), params: P, rows, perRound: rounds, table: lines }, null, 2)}\n`);
}

main().then(() => process.exit(0), (err: unknown) => {
  process.stderr.write(`bench:workers failed: ${String((err as Error).stack ?? err)}\n`);
  process.exit(1);
});
