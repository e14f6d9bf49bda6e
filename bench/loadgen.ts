/**
 * Load generator, one process per job (started by bench/run.ts with an IPC channel). It never
 * runs unbounded: every job has a session count, a duration and per-operation timeouts.
 *
 *   parent → {type:'job', job}            start
 *   child  → {type:'held', ...}           (hold) sessions are open; waits for {type:'release'}
 *   child  → {type:'ready'}               (failover) clients connected; parent kills, sends {type:'killed', at}
 *   child  → {type:'result', result}      done; the process exits
 */
import { performance } from 'node:perf_hooks';
import { meteorRetryDelayMs, openClient, sourceAddress, type LeanDdp, type Transport } from './clients';

export type EntryPick = 'rr' | 'random';

interface Common {
  readonly transport: Transport;
  /** Entry ROOT_URLs; client k uses entries[k % n] ('rr') or a random one. */
  readonly entries: readonly string[];
  readonly pick: EntryPick;
}

export type Job =
  | (Common & { kind: 'latency'; sessions: number; rate: number; warmupMs: number; durationMs: number; payloadBytes: number })
  | (Common & { kind: 'throughput'; sessions: number; depth: number; warmupMs: number; durationMs: number; payloadBytes: number })
  | (Common & { kind: 'setup'; concurrency: number; warmupMs: number; durationMs: number })
  | (Common & { kind: 'hold'; sessions: number; concurrency: number; maxMs: number })
  | (Common & { kind: 'failover'; sessions: number; callEveryMs: number; probeRate: number; afterKillMs: number; maxMs: number })
  | (Common & { kind: 'rebalance'; sessions: number; concurrency: number; callEveryMs: number; callDeadlineMs: number; maxMs: number });

export interface Percentiles { p50: number; p90: number; p99: number; max: number; n: number }

export interface LatencyResult { kind: 'latency'; offered: number; achieved: number; errors: number; late: number; ms: Percentiles; opened: number; openErrors: number }
export interface ThroughputResult { kind: 'throughput'; callsPerSec: number; errors: number; ms: Percentiles; opened: number; openErrors: number }
export interface SetupResult { kind: 'setup'; perSec: number; errors: number; errorSample: string[]; ms: Percentiles }
export interface HoldResult { kind: 'hold'; opened: number; errors: number; errorSample: string[]; openMs: number; lostWhileHeld: number }
export interface FailoverClientLog { first: string; lostAt: number | null; lostFrom: string | null; backAt: number | null; backOn: string | null; attempts: number }
export interface FailoverProbe { at: number; ok: boolean; on: string | null; error: string | null }
export interface FailoverResult { kind: 'failover'; opened: number; killedAt: number; clients: FailoverClientLog[]; probes: FailoverProbe[] }
/** One persistent client of the rebalance phase: where it was, how often it was disconnected, its calls. */
export interface RebalanceClientLog { first: string; last: string; disconnects: number[]; movedTo: string[]; okCalls: number; failedCalls: number }
export interface RebalanceResult { kind: 'rebalance'; opened: number; openErrors: number; clients: RebalanceClientLog[] }
export type JobResult = LatencyResult | ThroughputResult | SetupResult | HoldResult | FailoverResult | RebalanceResult;

const OP_TIMEOUT_MS = 10_000;

export function percentiles(values: number[]): Percentiles {
  if (values.length === 0) return { p50: NaN, p90: NaN, p99: NaN, max: NaN, n: 0 };
  const s = Float64Array.from(values).sort();
  const at = (q: number): number => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? NaN;
  return { p50: round(at(0.5)), p90: round(at(0.9)), p99: round(at(0.99)), max: round(s[s.length - 1] ?? NaN), n: s.length };
}

const round = (n: number): number => Math.round(n * 1000) / 1000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function entryFor(job: Common, k: number): string {
  const n = job.entries.length;
  const i = job.pick === 'rr' ? k % n : Math.floor(Math.random() * n);
  return job.entries[i] ?? '';
}

function open(job: Common, k: number): Promise<LeanDdp> {
  return openClient(job.transport, { entry: entryFor(job, k), localAddress: sourceAddress(k), timeoutMs: OP_TIMEOUT_MS });
}

/** Opens `count` sessions, at most `concurrency` handshakes at a time, until `deadline`. */
async function openMany(job: Common, count: number, concurrency: number, deadline: number, errors: string[]): Promise<LeanDdp[]> {
  const clients: LeanDdp[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count && Date.now() < deadline) {
      const k = next++;
      try {
        clients.push(await open(job, k));
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return clients;
}

/** Tells the parent when the measured window starts and ends (each once, in that order). */
function marker(): { start(): void; end(): void } {
  let state = 0;
  return {
    start: () => {
      if (state === 0) send({ type: 'mark', what: 'start' });
      state = Math.max(state, 1);
    },
    end: () => {
      if (state === 0) send({ type: 'mark', what: 'start' });
      if (state < 2) send({ type: 'mark', what: 'end' });
      state = 2;
    },
  };
}

function payload(bytes: number): string {
  return 'x'.repeat(bytes);
}

async function latency(job: Extract<Job, { kind: 'latency' }>): Promise<LatencyResult> {
  const openErrors: string[] = [];
  const clients = await openMany(job, job.sessions, 32, Date.now() + 60_000, openErrors);
  if (clients.length === 0) throw new Error(`no session opened: ${openErrors[0] ?? '?'}`);
  const body = payload(job.payloadBytes);
  const samples: number[] = [];
  let errors = 0;
  let sent = 0;
  let measuredSent = 0;
  let late = 0;
  const start = performance.now();
  const measureFrom = start + job.warmupMs;
  const end = measureFrom + job.durationMs;
  const inflight = new Set<Promise<unknown>>();
  setTimeout(() => send({ type: 'mark', what: 'start' }), job.warmupMs);
  // Open loop: calls are sent on schedule whether or not earlier ones were answered.
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const now = performance.now();
      if (now >= end) {
        clearInterval(tick);
        return resolve();
      }
      const due = Math.floor(((now - start) * job.rate) / 1000) - sent;
      if (due > 5) late += due - 5;
      for (let i = 0; i < due; i++) {
        const c = clients[sent % clients.length] as LeanDdp;
        sent++;
        const t0 = performance.now();
        const measured = t0 >= measureFrom;
        if (measured) measuredSent++;
        const p = c.call('echo', [body]).then(
          () => { if (measured) samples.push(performance.now() - t0); },
          () => { if (measured) errors++; },
        );
        inflight.add(p);
        void p.finally(() => inflight.delete(p));
      }
    }, 1);
  });
  await Promise.race([Promise.allSettled([...inflight]), sleep(OP_TIMEOUT_MS + 500)]);
  for (const c of clients) c.close();
  return {
    kind: 'latency', offered: job.rate, achieved: round(samples.length / (job.durationMs / 1000)), errors, late,
    ms: percentiles(samples), opened: clients.length, openErrors: openErrors.length,
  };
}

async function throughput(job: Extract<Job, { kind: 'throughput' }>): Promise<ThroughputResult> {
  const openErrors: string[] = [];
  const clients = await openMany(job, job.sessions, 32, Date.now() + 60_000, openErrors);
  if (clients.length === 0) throw new Error(`no session opened: ${openErrors[0] ?? '?'}`);
  const body = payload(job.payloadBytes);
  const samples: number[] = [];
  let done = 0;
  let errors = 0;
  const start = performance.now();
  const measureFrom = start + job.warmupMs;
  const end = measureFrom + job.durationMs;
  const marks = marker();
  setTimeout(() => marks.start(), Math.max(0, measureFrom - performance.now()));
  setTimeout(() => marks.end(), Math.max(0, end - performance.now()));
  // Closed loop: every session keeps `depth` calls in flight until the end.
  const loop = async (c: LeanDdp): Promise<void> => {
    while (performance.now() < end) {
      const t0 = performance.now();
      try {
        await c.call('echo', [body]);
        const t1 = performance.now();
        if (t0 >= measureFrom && t1 <= end) {
          done++;
          if (samples.length < 200_000) samples.push(t1 - t0);
        }
      } catch {
        if (t0 >= measureFrom) errors++;
        if (!c.alive) return;
      }
    }
  };
  await Promise.all(clients.flatMap((c) => Array.from({ length: job.depth }, () => loop(c))));
  marks.end();
  for (const c of clients) c.close();
  return { kind: 'throughput', callsPerSec: round(done / (job.durationMs / 1000)), errors, ms: percentiles(samples), opened: clients.length, openErrors: openErrors.length };
}

async function setupRate(job: Extract<Job, { kind: 'setup' }>): Promise<SetupResult> {
  const samples: number[] = [];
  const errorSample: string[] = [];
  let errors = 0;
  let k = 0;
  // Set-ups run from the start; those that begin after the warm-up and end within the window are
  // measured. The warm-up lets every process on the set-up path (proxies' backends, ddp-cluster's
  // entry and members) JIT-compile it, as the other phases' warm-ups do for theirs: a running
  // server has long done so. Perf (bench --cost, 2-core VM): 5 to 11 s after the start of the
  // set-ups, a member still spent a quarter of its CPU in V8's optimizing compiler; after 20 s,
  // 4 %, and the members' CPU per set-up had dropped from ~1.5 to ~1.0 ms.
  const measureFrom = performance.now() + job.warmupMs;
  const end = measureFrom + job.durationMs;
  const marks = marker();
  setTimeout(() => marks.start(), job.warmupMs);
  setTimeout(() => marks.end(), job.warmupMs + job.durationMs);
  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      const t0 = performance.now();
      try {
        const c = await open(job, k++);
        const t1 = performance.now();
        if (t0 >= measureFrom && t1 <= end) samples.push(t1 - t0);
        c.close();
      } catch (err) {
        errors++;
        if (errorSample.length < 5) errorSample.push((err as Error).message);
        await sleep(20);
      }
    }
  };
  await Promise.all(Array.from({ length: job.concurrency }, worker));
  marks.end();
  return { kind: 'setup', perSec: round(samples.length / (job.durationMs / 1000)), errors, errorSample, ms: percentiles(samples) };
}

async function hold(job: Extract<Job, { kind: 'hold' }>): Promise<HoldResult> {
  const errors: string[] = [];
  const t0 = performance.now();
  const clients = await openMany(job, job.sessions, job.concurrency, Date.now() + job.maxMs, errors);
  const openMs = round(performance.now() - t0);
  let lost = 0;
  for (const c of clients) void c.closed.then(() => lost++);
  send({ type: 'held', opened: clients.length, errors: errors.length, openMs });
  await Promise.race([waitFor('release'), sleep(job.maxMs)]);
  const lostWhileHeld = lost;
  for (const c of clients) c.close();
  await Promise.race([Promise.all(clients.map((c) => c.closed)), sleep(5000)]);
  return { kind: 'hold', opened: clients.length, errors: errors.length, errorSample: errors.slice(0, 5), openMs, lostWhileHeld };
}

async function whoami(c: LeanDdp): Promise<string> {
  const r = (await c.call('whoami', [])) as { instanceId?: unknown };
  return typeof r.instanceId === 'string' ? r.instanceId : '?';
}

/**
 * Persistent clients that reconnect on Meteor's schedule and call a method every `callEveryMs`,
 * plus a stream of new sessions (`probeRate`/s) that each ask where they landed.
 */
async function failover(job: Extract<Job, { kind: 'failover' }>): Promise<FailoverResult> {
  const deadline = Date.now() + job.maxMs;
  const logs: FailoverClientLog[] = [];
  const probes: FailoverProbe[] = [];
  let stop = false;
  let killedAt = 0;

  const runClient = async (k: number, first: LeanDdp, on: string): Promise<void> => {
    const log: FailoverClientLog = { first: on, lostAt: null, lostFrom: null, backAt: null, backOn: null, attempts: 0 };
    logs.push(log);
    let c = first;
    let current = on;
    for (;;) {
      // Call until the connection dies or the job ends.
      while (!stop) {
        const closed = await Promise.race([c.closed.then(() => true), sleep(job.callEveryMs).then(() => false)]);
        if (closed) break;
        c.call('echo', ['x']).catch(() => undefined);
      }
      if (stop) return c.close();
      if (log.lostAt === null) {
        log.lostAt = Date.now();
        log.lostFrom = current;
      }
      // Meteor's reconnect loop.
      let count = 0;
      for (;;) {
        if (stop) return;
        await sleep(meteorRetryDelayMs(count++));
        if (stop) return;
        log.attempts++;
        try {
          c = await open(job, k);
          current = await whoami(c);
          if (log.backAt === null) {
            log.backAt = Date.now();
            log.backOn = current;
          }
          break;
        } catch {
          // next attempt
        }
      }
    }
  };

  const errors: string[] = [];
  const first = await openMany(job, job.sessions, 32, deadline, errors);
  const running: Promise<void>[] = [];
  for (const [k, c] of first.entries()) {
    const on = await whoami(c).catch(() => '?');
    running.push(runClient(k, c, on));
  }
  send({ type: 'ready', opened: first.length });

  let probeK = job.sessions;
  const probeTick = setInterval(() => {
    if (stop) return;
    const at = Date.now();
    const k = probeK++;
    void (async () => {
      let c: LeanDdp | null = null;
      try {
        c = await open(job, k);
        const on = await whoami(c);
        probes.push({ at, ok: true, on, error: null });
      } catch (err) {
        probes.push({ at, ok: false, on: null, error: (err as Error).message.slice(0, 120) });
      } finally {
        c?.close();
      }
    })();
  }, Math.max(1, Math.round(1000 / job.probeRate)));

  const killed = await Promise.race([waitFor('killed'), sleep(Math.max(0, deadline - Date.now())).then(() => null)]);
  killedAt = typeof killed?.at === 'number' ? killed.at : Date.now();
  await sleep(Math.max(0, Math.min(job.afterKillMs, deadline - Date.now())));
  stop = true;
  clearInterval(probeTick);
  await Promise.race([Promise.all(running), sleep(3000)]);
  await sleep(OP_TIMEOUT_MS > 2000 ? 500 : 0);
  return { kind: 'failover', opened: first.length, killedAt, clients: logs, probes };
}

/**
 * The rebalance phase's clients (bench/run.ts): persistent sessions that call a method every
 * `callEveryMs` like an app, and behave like Meteor's client when their connection is closed:
 * reconnect on Meteor's schedule and send the unfinished call again (a call fails only when it
 * can't complete within `callDeadlineMs`). Each records its disconnects and where it went.
 * Parent: {type:'ready'} when opened; {type:'stop'} ends the job.
 */
async function rebalanceClients(job: Extract<Job, { kind: 'rebalance' }>): Promise<RebalanceResult> {
  const deadline = Date.now() + job.maxMs;
  let stop = false;
  const logs: RebalanceClientLog[] = [];
  const runClient = async (k: number, first: LeanDdp, on: string): Promise<void> => {
    const log: RebalanceClientLog = { first: on, last: on, disconnects: [], movedTo: [], okCalls: 0, failedCalls: 0 };
    logs.push(log);
    let c: LeanDdp | null = first;
    let reconnecting: Promise<LeanDdp | null> | null = null;
    const watch = (x: LeanDdp): void => {
      void x.closed.then(() => {
        if (stop || c !== x) return;
        c = null;
        log.disconnects.push(Date.now());
        reconnecting = (async () => {
          for (let count = 0; !stop; count++) {
            await sleep(meteorRetryDelayMs(count));
            if (stop) return null;
            try {
              const n = await open(job, k);
              log.last = await whoami(n);
              log.movedTo.push(log.last);
              c = n;
              watch(n);
              return n;
            } catch {
              // next attempt
            }
          }
          return null;
        })().finally(() => (reconnecting = null));
      });
    };
    watch(first);
    const connection = async (): Promise<LeanDdp | null> => c ?? (await (reconnecting ?? Promise.resolve(null)));
    // Spread the first calls over the interval, so the load is even.
    await sleep(Math.random() * job.callEveryMs);
    while (!stop) {
      const callDeadline = Date.now() + job.callDeadlineMs;
      for (;;) {
        const x = await connection();
        if (stop) break;
        try {
          if (x === null) throw new Error('not connected');
          await x.call('echo', ['x']);
          log.okCalls++;
          break;
        } catch {
          if (Date.now() > callDeadline) {
            log.failedCalls++;
            break;
          }
          await sleep(50);
        }
      }
      await sleep(job.callEveryMs * (0.8 + 0.4 * Math.random()));
    }
    const x = c as LeanDdp | null;
    x?.close();
  };
  const errors: string[] = [];
  const first = await openMany(job, job.sessions, job.concurrency, deadline, errors);
  const running: Promise<void>[] = [];
  for (const [k, c] of first.entries()) {
    const on = await whoami(c).catch(() => '?');
    running.push(runClient(k, c, on));
  }
  send({ type: 'ready', opened: first.length, errors: errors.length });
  await Promise.race([waitFor('stop'), sleep(Math.max(0, deadline - Date.now()))]);
  stop = true;
  await Promise.race([Promise.all(running), sleep(OP_TIMEOUT_MS + 1000)]);
  return { kind: 'rebalance', opened: first.length, openErrors: errors.length, clients: logs };
}

/* ------------------------------------------------------------------------------------------ */
/* IPC                                                                                         */

type Msg = { type: string; [k: string]: unknown };
const inbox: Msg[] = [];
const waiters: Array<{ type: string; resolve(m: Msg): void }> = [];

function send(m: Msg): void {
  process.send?.(m);
}

function waitFor(type: string): Promise<Msg> {
  const i = inbox.findIndex((m) => m.type === type);
  if (i >= 0) return Promise.resolve(inbox.splice(i, 1)[0] as Msg);
  return new Promise((resolve) => waiters.push({ type, resolve }));
}

process.on('message', (m: Msg) => {
  const i = waiters.findIndex((w) => w.type === m.type);
  if (i >= 0) waiters.splice(i, 1)[0]?.resolve(m);
  else inbox.push(m);
});
process.on('disconnect', () => process.exit(0));

async function main(): Promise<void> {
  const { job } = (await waitFor('job')) as unknown as { job: Job };
  let result: JobResult;
  switch (job.kind) {
    case 'latency': result = await latency(job); break;
    case 'throughput': result = await throughput(job); break;
    case 'setup': result = await setupRate(job); break;
    case 'hold': result = await hold(job); break;
    case 'failover': result = await failover(job); break;
    case 'rebalance': result = await rebalanceClients(job); break;
  }
  const cpu = process.cpuUsage();
  send({ type: 'result', result, cpuSec: (cpu.user + cpu.system) / 1e6 });
  setTimeout(() => process.exit(0), 200).unref();
}

if (require.main === module) {
  main().catch((err: unknown) => {
    send({ type: 'error', message: (err as Error).stack ?? String(err) });
    setTimeout(() => process.exit(1), 200);
  });
}
