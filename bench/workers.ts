/**
 * `npm run bench:workers` (issue 14): every core behind one port. Three setups, one run, on loopback:
 *   one      one plain process of the reference DDP app (no balancer): the single-core baseline
 *   workers  ddp-cluster with CLUSTER_WORKERS_COUNT=2 on one port; the primary's CLUSTER_SELF_WEIGHT=0,
 *            so it only accepts and hands connections off (sessions run in the 2 workers)
 *   workers-serving  the same with the primary serving too (the default, CLUSTER_SELF_WEIGHT=1): what
 *            a third app process on 2 cores costs or brings
 *   nginx2   nginx in front of 2 plain processes
 * For each: websocket and xhr-polling max throughput (method calls/s), and method RTT at a fixed
 * offered load (the same for every setup). For `workers`, the CPU the primary spent (accepting,
 * reading first requests, handing off, plus its own heartbeats and health checks) as a share of
 * all server CPU during the websocket throughput run.
 *
 *   npm run bench:workers [-- --quick] [-- --out bench/results]
 *
 * Writes <out>/workers.json and prints a Markdown table. Needs nginx and a MongoDB-compatible
 * server for discovery (as `npm run bench`).
 */
import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { disposeAll, freePort, startMongo, uniqueDbUrl } from '../examples/node-ddp-app/mongo';
import { EXAMPLE_SECRET } from '../examples/node-ddp-app/secret';
import type { Job, JobResult, LatencyResult, ThroughputResult } from './loadgen';
import { foreignCores, machine, systemCpu, usage } from './procstat';
import { findBinary, startNginx, type ProxyProcess } from './proxies';

const REPO = path.resolve(__dirname, '..');
const { values: args } = parseArgs({ options: { quick: { type: 'boolean', default: false }, out: { type: 'string' } } });
const quick = args.quick === true;
const P = {
  latency: {
    ws: { sessions: 60, rate: 1000, warmupMs: quick ? 500 : 2000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
    xhr: { sessions: 30, rate: 200, warmupMs: quick ? 500 : 2000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
  },
  throughput: {
    ws: { sessions: 90, depth: 4, warmupMs: quick ? 500 : 2000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
    xhr: { sessions: 90, depth: 2, warmupMs: quick ? 500 : 2000, durationMs: quick ? 2000 : 5000, payloadBytes: 64 },
  },
};
const SETUPS = ['one', 'workers', 'workers-serving', 'nginx2'] as const;
type Setup = (typeof SETUPS)[number];
const LABELS: Record<Setup, string> = {
  one: 'one process',
  workers: 'ddp-cluster, 2 workers, one port',
  'workers-serving': 'ddp-cluster, 2 workers + serving primary, one port',
  nginx2: 'nginx in front of 2 processes',
};

const log = (line: string): void => void process.stdout.write(`${line}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Backend { readonly proc: ChildProcess; readonly url: string; readonly port: number }

/** bench/backend.ts in its own process; resolves when it listens (and, attached, has discovered). */
async function backend(id: string, env: Record<string, string>): Promise<Backend> {
  const port = await freePort();
  const base: Record<string, string> = { ...process.env as Record<string, string>, BENCH_ID: id, PORT: String(port), HTTP_FORWARDED_COUNT: '' };
  for (const k of Object.keys(base)) if (k.startsWith('CLUSTER_')) delete base[k];
  const proc = fork(path.join(REPO, 'bench', 'backend.ts'), [], {
    cwd: REPO, env: { ...base, ...env }, execArgv: ['--import', 'tsx', '--expose-gc'],
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
  if (setup === 'one') {
    const b = await backend('one', { BENCH_ATTACH: '0' });
    return { entry: b.url, pids: () => [b.proc.pid ?? 0], acceptPids: () => [], stop: () => stop(b) };
  }
  if (setup === 'nginx2') {
    const bs = await Promise.all(['a', 'b'].map((id) => backend(id, { BENCH_ATTACH: '0' })));
    const port = await freePort();
    const nginx = findBinary('nginx');
    if (nginx === null) throw new Error('nginx is not installed (apt-get install -y nginx)');
    const proxy: ProxyProcess = await startNginx(nginx, path.join(tmp, `nginx-${port}`), port,
      bs.map((b, i) => ({ id: ['a', 'b'][i] as string, port: b.port, weight: 2 })), 2000);
    return {
      entry: proxy.url, pids: () => [...bs.map((b) => b.proc.pid ?? 0), ...proxy.pids()], acceptPids: () => proxy.pids(),
      async stop() {
        await proxy.stop().catch(() => undefined);
        await Promise.all(bs.map(stop));
      },
    };
  }
  const b = await backend('m', {
    BENCH_ATTACH: '1', CLUSTER_DISCOVERY_URL: uniqueDbUrl(mongoUrl, 'bench_workers'), CLUSTER_SERVICE: 'web',
    CLUSTER_SECRET: EXAMPLE_SECRET, CLUSTER_INSTANCE_ID: 'm', CLUSTER_LOG_LEVEL: 'error', CLUSTER_CAPACITY: '2000',
    CLUSTER_SLOW_START: '0', CLUSTER_WORKERS_COUNT: '2', CLUSTER_SELF_WEIGHT: setup === 'workers' ? '0' : '1',
  });
  let workerPids: number[] = [];
  // Formed: the primary sees both workers healthy and serving.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const s = await ask(b, 'stats');
    const members = (s.members ?? []) as { id: string; healthy: boolean; state: string }[];
    const cluster = (s.cluster ?? {}) as { workers?: { workers?: { pid: number | null; up: boolean }[] } };
    const ws = cluster.workers?.workers ?? [];
    if (members.filter((m) => m.healthy && m.state === 'serving').length === 3 && ws.length === 2 && ws.every((w) => w.up)) {
      workerPids = ws.map((w) => w.pid ?? 0);
      break;
    }
    if (Date.now() > deadline) throw new Error(`workers did not form: ${JSON.stringify(members)}`);
    await sleep(200);
  }
  return { entry: b.url, pids: () => [b.proc.pid ?? 0, ...workerPids], acceptPids: () => [b.proc.pid ?? 0], stop: () => stop(b) };
}

/** Before a job, waits (at most 60 s) until other tenants use less than 0.35 cores. */
async function waitQuiet(pids: () => number[]): Promise<number> {
  const deadline = Date.now() + 60_000;
  let f = await foreignCores(pids);
  while (f > 0.35 && Date.now() < deadline) f = await foreignCores(pids);
  return f;
}

/** Runs a job in a fresh load generator; `foreign`: other tenants' cores meanwhile. */
async function runJob<R extends JobResult>(job: Job, pids: () => number[], onMark?: (what: string) => void): Promise<R & { foreign: number }> {
  await waitQuiet(pids);
  const sys0 = systemCpu();
  const own0 = usage(pids()).cpu;
  const me0 = process.cpuUsage();
  const t0 = Date.now();
  const r = await runJobRaw<R>(job, onMark);
  const me = process.cpuUsage(me0);
  const ours = usage(pids()).cpu - own0 + r.cpuSec + (me.user + me.system) / 1e6;
  const foreign = Math.max(0, (systemCpu().busy - sys0.busy - ours) / Math.max(0.001, (Date.now() - t0) / 1000));
  return { ...r.result, foreign: Math.round(foreign * 100) / 100 };
}

function runJobRaw<R extends JobResult>(job: Job, onMark?: (what: string) => void): Promise<{ result: R; cpuSec: number }> {
  return new Promise((resolve, reject) => {
    const child = fork(path.join(REPO, 'bench', 'loadgen.ts'), [], {
      cwd: REPO, execArgv: ['--import', 'tsx', '--max-old-space-size=4096'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json',
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`load generator (${job.kind}) exceeded 240 s`));
    }, 240_000);
    child.on('message', (m: Record<string, unknown>) => {
      if (m.type === 'result') {
        clearTimeout(timer);
        resolve({ result: m.result as R, cpuSec: Number(m.cpuSec ?? 0) });
      } else if (m.type === 'error') {
        clearTimeout(timer);
        reject(new Error(`load generator: ${String(m.message)}`));
      } else if (m.type === 'mark') {
        onMark?.(String(m.what));
      }
    });
    child.send({ type: 'job', job });
  });
}

type Row = Record<string, number | null>;

async function main(): Promise<void> {
  const mongo = await startMongo();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ddp-cluster-bench-workers-'));
  const rows: Record<string, Row> = {};
  try {
    log(`bench:workers${quick ? ' (quick)' : ''} on ${JSON.stringify(machine())}`);
    for (const setup of SETUPS) {
      const stack = await startStack(setup, mongo.url, tmp);
      const row: Row = {};
      try {
        await sleep(1000);
        for (const transport of ['ws', 'xhr'] as const) {
          let all0 = 0;
          let acc0 = 0;
          let all = NaN;
          let acc = NaN;
          const r = await runJob<ThroughputResult>({ kind: 'throughput', transport, entries: [stack.entry], pick: 'rr', ...P.throughput[transport] }, stack.pids, (what) => {
            if (what === 'start') {
              all0 = usage(stack.pids()).cpu;
              acc0 = usage(stack.acceptPids()).cpu;
            } else if (what === 'end') {
              all = usage(stack.pids()).cpu - all0;
              acc = usage(stack.acceptPids()).cpu - acc0;
            }
          });
          row[`tput_${transport}`] = r.callsPerSec;
          row[`tput_${transport}_errors`] = r.errors;
          row[`cpu_${transport}_accept_share`] = stack.acceptPids().length > 0 && all > 0 ? acc / all : null;
          row[`foreign_tput_${transport}`] = r.foreign;
          log(`  ${setup} throughput ${transport}: ${r.callsPerSec} calls/s, ${r.errors} errors; server CPU ${all.toFixed(2)} s, accepting process ${acc.toFixed(2)} s; others ${r.foreign} cores`);
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
  } finally {
    await disposeAll().catch(() => undefined);
  }
  const one = rows.one ?? {};
  const fmt = (v: number | null | undefined, d = 0): string => (v === null || v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(d));
  const ratio = (v: number | null | undefined, base: number | null | undefined): string =>
    v && base ? `${(v / base).toFixed(2)}×` : '-';
  const lines = [
    '| Setup | ws calls/s | ×one | xhr calls/s | ×one | ws RTT p50 / p99 ms | xhr RTT p50 / p99 ms | accepting process CPU (ws max) | other tenants (cores, max) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...SETUPS.map((s) => {
      const r = rows[s] ?? {};
      return `| ${LABELS[s]} | ${fmt(r.tput_ws)} | ${ratio(r.tput_ws, one.tput_ws)} | ${fmt(r.tput_xhr)} | ${ratio(r.tput_xhr, one.tput_xhr)} | `
        + `${fmt(r.lat_ws_p50, 2)} / ${fmt(r.lat_ws_p99, 2)} | ${fmt(r.lat_xhr_p50, 2)} / ${fmt(r.lat_xhr_p99, 2)} | `
        + `${r.cpu_ws_accept_share === null || r.cpu_ws_accept_share === undefined ? '-' : `${(r.cpu_ws_accept_share * 100).toFixed(1)} %`} | `
        + `${fmt(Math.max(...['foreign_tput_ws', 'foreign_tput_xhr', 'foreign_lat_ws', 'foreign_lat_xhr'].map((k) => r[k] ?? 0)), 2)} |`;
    }),
  ];
  log(`\n${lines.join('\n')}\n`);
  const out = args.out ?? path.join(REPO, 'bench', 'results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'workers.json'), `${JSON.stringify({ at: new Date().toISOString(), quick, machine: machine(), params: P, rows, table: lines }, null, 2)}\n`);
}

main().then(() => process.exit(0), (err: unknown) => {
  process.stderr.write(`bench:workers failed: ${String((err as Error).stack ?? err)}\n`);
  process.exit(1);
});
