/**
 * `npm run demo`: a local three-instance cluster on an embedded Mongo-compatible server, with
 * simulated DDP clients, the dashboard, and a compact live table of where the sessions are.
 *
 *   npm run demo                      run until Ctrl-C (or q)
 *   npm run demo -- --duration 20     stop by itself after 20 s
 *   npm run demo -- --clients 300     number of simulated clients (default 120)
 *   npm run demo -- --kill-after 10   kill -9 one instance after 10 s and restart it 5 s later
 *   (press k) kill -9 an instance and restart it, to watch failover
 *
 * The instances are the reference DDP app (examples/node-ddp-app/app.ts, also used by the tests: sockjs 0.3.24
 * installed the way Meteor's ddp-server does) with the balancer attached, each in its own process.
 * Clients whose instance dies reconnect through the balancer, so failover shows sessions moving.
 * The instances' own log lines go to a file (its path is printed), not over the table.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { parseConfig } from '../lib/config';
import { Registry } from '../lib/discovery/registry';
import type { MembershipView } from '../lib/discovery/view';
import { EMPTY_LOAD } from '../lib/load';
import { createLogger } from '../lib/log';
import type { WhoamiResult } from '../examples/node-ddp-app/app';
import { sockjsDdp, wsDdp, type DdpClient } from '../examples/node-ddp-app/clients';
import { disposeAll, startMongo } from '../examples/node-ddp-app/mongo';
import { EXAMPLE_SECRET } from '../examples/node-ddp-app/secret';

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string' },
    clients: { type: 'string', default: '120' },
    'kill-after': { type: 'string' },
    'base-port': { type: 'string', default: '3101' },
  },
});

const IDS = ['alpha', 'bravo', 'charlie'] as const;
const VICTIM = 'charlie';
const WORKERS = Number(process.env.DEMO_WORKERS ?? 4);
/** The demo's dashboard password (CLUSTER_DASHBOARD_PASSWORD of every instance). */
const DEMO_PASSWORD = 'ddp-cluster-demo';
const tty = process.stdout.isTTY === true;
const out = (line: string): void => void process.stdout.write(line + '\n');

interface Child {
  readonly id: string;
  readonly url: string;
  readonly proc: ChildProcess;
}

/** Everything started, so that any way out (Ctrl-C, q, --duration, an error) stops all of it. */
const running = {
  procs: new Set<ChildProcess>(),
  stops: [] as (() => Promise<void>)[],
  stopping: false,
};

async function stopAll(code: number, why?: string): Promise<never> {
  if (running.stopping) process.exit(code);
  running.stopping = true;
  if (process.stdin.isTTY) process.stdin.setRawMode(false);
  if (why) (code === 0 ? process.stdout : process.stderr).write(why + '\n');
  out('stopping…');
  for (const s of running.stops.reverse()) await s().catch(() => undefined);
  // SIGTERM: the instances drain (CLUSTER_DRAIN_WINDOW=1s) and deregister; SIGKILL if they linger.
  await Promise.all([...running.procs].map((p) => stopProc(p)));
  await disposeAll();
  process.exit(code);
}

async function stopProc(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = once(p, 'exit');
  p.kill('SIGTERM');
  const timer = setTimeout(() => p.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

process.on('SIGINT', () => void stopAll(0));
process.on('SIGTERM', () => void stopAll(0));
process.on('SIGHUP', () => void stopAll(0));
process.on('uncaughtException', (err) => void stopAll(1, `demo failed: ${err.message}`));
process.on('exit', () => {
  for (const p of running.procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
});

async function main(): Promise<void> {
  const logPath = path.join(os.tmpdir(), `ddp-cluster-demo-${process.pid}.log`);
  const log = fs.createWriteStream(logPath);
  let warnings = 0;
  running.stops.push(async () => void log.end());

  out('ddp-cluster demo: starting an embedded Mongo-compatible server…');
  const mongo = await startMongo();
  const discoveryUrl = mongo.url.replace(/\/([^/?]*)(\?|$)/, '/ddp_cluster_demo$2');

  const basePort = Number(args['base-port']);
  const instances = new Map<string, Child>();
  const start = async (id: string, i: number): Promise<Child> => {
    // --base-port 0: any free ports (used by the demo's own smoke test).
    const port = basePort === 0 ? 0 : basePort + i;
    const child = await spawnInstance(id, {
      CLUSTER_DISCOVERY_URL: discoveryUrl, PORT: String(port), CLUSTER_DASHBOARD_PASSWORD: DEMO_PASSWORD,
      CLUSTER_APP_VERSION: 'demo', CLUSTER_DRAIN_WINDOW: '1s',
    }, (line) => {
      log.write(line + '\n');
      if (/"level":"(warn|error)"/.test(line)) warnings++;
    });
    instances.set(id, child);
    return child;
  };
  await Promise.all(IDS.map((id, i) => start(id, i)));
  const first = instances.get(IDS[0]) as Child;

  // A watch-only registry: sees the members and their reported load, registers nothing.
  const watcher = new Registry({
    config: parseConfig({ discoveryUrl, secret: EXAMPLE_SECRET, instanceId: 'demo-watcher', staleMs: 3000 }, {}),
    logger: createLogger('error'),
    load: () => EMPTY_LOAD,
  });
  watcher.start();
  running.stops.push(() => watcher.close());
  await watcher.ready();
  await clusterFormed(watcher);

  out('');
  out(`  discovery  ${mongo.kind} at ${discoveryUrl}`);
  out(`  instances  ${IDS.map((id) => `${id} ${instances.get(id)?.url ?? '?'}`).join('   ')}`);
  out(`  dashboard  ${first.url}/cluster   password: ${DEMO_PASSWORD}   (any instance shows the whole cluster)`);
  out(`  metrics    curl -u any:${DEMO_PASSWORD} ${first.url}/cluster/metrics`);
  out(`  cli        CLUSTER_SECRET=${EXAMPLE_SECRET} npm run cli -- status --discovery '${discoveryUrl}'`);
  out(`  logs       ${logPath}`);

  const wanted = Number(args.clients);
  const pool = new ClientPool(wanted, () => entryUrls(instances, first));
  running.stops.push(() => pool.close());
  out(`  clients    ${wanted} simulated clients enter ${first.url} (websocket, xhr-polling, raw /websocket); they reconnect when their instance dies`);
  if (process.stdin.isTTY) out('  keys       k = kill -9 charlie (restarted 5 s later), q = quit');
  out('');
  pool.start();

  let note = 'connecting clients…';
  let killAt = args['kill-after'] !== undefined ? Date.now() + Number(args['kill-after']) * 1000 : null;
  let killing = false;
  const failover = async (): Promise<void> => {
    const victim = instances.get(VICTIM);
    if (killing || !victim) return;
    killing = true;
    const t0 = Date.now();
    const before = pool.on(VICTIM);
    note = `kill -9 ${VICTIM} (${before} clients on it); restarting it in 5 s`;
    pool.resetMoves();
    if (victim.proc.exitCode === null && victim.proc.signalCode === null) {
      const exited = once(victim.proc, 'exit');
      victim.proc.kill('SIGKILL');
      await exited;
    }
    instances.delete(VICTIM);
    pool.onMoved = (n, total) => {
      note = `${VICTIM} killed: ${n}/${total} of its clients reconnected elsewhere in ${((Date.now() - t0) / 1000).toFixed(1)} s (${pool.movesText()})`;
    };
    pool.expectMoves(before);
    setTimeout(() => {
      if (running.stopping) return;
      void start(VICTIM, IDS.indexOf(VICTIM)).then(() => {
        note = `${VICTIM} restarted: new sessions go to it again (${pool.movesText()} moved at failover)`;
        killing = false;
      }, (err: unknown) => {
        note = `${VICTIM} did not restart: ${err instanceof Error ? err.message : String(err)}`;
        killing = false;
      });
    }, 5000).unref();
  };
  if (process.stdin.isTTY) {
    process.stdin.setRawMode(true);
    process.stdin.resume();
    process.stdin.on('data', (b: Buffer) => {
      const key = b.toString();
      if (key === 'k') void failover();
      if (key === 'q' || key === '\u0003') void stopAll(0);
    });
  }

  const began = Date.now();
  const duration = args.duration !== undefined ? Number(args.duration) * 1000 : null;
  let drawn = 0;
  const draw = (final: boolean): void => {
    const text = table(watcher.view(), pool, Date.now() - began);
    const status = `  status: ${note}${warnings ? `  ·  ${warnings} warning${warnings === 1 ? '' : 's'} in the log` : ''}`;
    // Lines never wrap (a wrapped line would break the in-place redraw).
    const width = Math.max(40, (tty ? process.stdout.columns : 0) || 160) - 1;
    const lines = [...text, status].map((l) => (l.length > width ? l.slice(0, width - 1) + '…' : l));
    if (tty && !final) {
      // Redraw in place: one screen block, not a scrolling flood.
      if (drawn > 0) process.stdout.write(`\x1b[${drawn}A\x1b[J`);
      process.stdout.write(lines.join('\n') + '\n');
      drawn = lines.length;
    } else if (final || (Date.now() - began) % 5000 < 1000) {
      out(lines.join('\n'));
    }
  };
  const timer = setInterval(() => {
    if (pool.connected === wanted && note === 'connecting clients…') note = `all ${wanted} clients connected`;
    draw(false);
    if (killAt !== null && Date.now() >= killAt) {
      killAt = null;
      void failover();
    }
    if (duration !== null && Date.now() - began >= duration) {
      clearInterval(timer);
      draw(true);
      void stopAll(0);
    }
  }, 1000);
  running.stops.push(async () => clearInterval(timer));
}

/** Where clients enter: the first instance, or any other live one if it is gone. */
function entryUrls(instances: ReadonlyMap<string, Child>, first: Child): string[] {
  const live = [...instances.values()].filter((c) => c.proc.exitCode === null && c.proc.signalCode === null);
  return [first, ...live.filter((c) => c !== first)].filter((c) => live.includes(c)).map((c) => c.url);
}

/** One fixture instance in its own process; its stdout/stderr lines (besides "listening") go to `onLine`. */
async function spawnInstance(id: string, env: Record<string, string>, onLine: (line: string) => void): Promise<Child> {
  const proc = spawn(process.execPath, ['--import', 'tsx', 'examples/node-ddp-app/instance.ts'], {
    env: { ...process.env, CLUSTER_INSTANCE_ID: id, CLUSTER_SECRET: EXAMPLE_SECRET, CLUSTER_SERVICE: 'web', CLUSTER_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.procs.add(proc);
  proc.once('exit', () => running.procs.delete(proc));
  let last = '';
  createInterface({ input: proc.stderr as NodeJS.ReadableStream }).on('line', (line) => {
    last = line;
    onLine(line);
  });
  const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream });
  const url = await new Promise<string>((resolve, reject) => {
    lines.on('line', (line) => {
      const m = /^listening (\S+)$/.exec(line);
      if (m?.[1]) resolve(m[1]);
      else onLine(line);
    });
    proc.once('close', (code, signal) => {
      const hint = /EADDRINUSE/.test(last) ? ' (ports taken? try --base-port 4101, or 0 for any free ports)' : '';
      reject(new Error(`instance ${id} exited (${signal ?? code}) before listening: ${last.slice(0, 300) || 'no output'}${hint}`));
    });
  });
  return { id, url, proc };
}

/**
 * `wanted` simulated clients, a third each over sockjs websocket, sockjs xhr-polling and raw
 * /websocket. Each calls a method and subscribes, then stays; when its connection closes (its
 * instance died), it reconnects through the balancer and lands on a survivor.
 */
class ClientPool {
  readonly #slots: ({ client: DdpClient; on: string } | null)[];
  readonly #entries: () => string[];
  #closed = false;
  #moves = new Map<string, number>();
  #expected = 0;
  #moved = 0;
  onMoved: ((n: number, total: number) => void) | null = null;

  constructor(wanted: number, entries: () => string[]) {
    this.#slots = new Array<null>(wanted).fill(null);
    this.#entries = entries;
  }

  get connected(): number {
    return this.#slots.filter((s) => s !== null).length;
  }

  on(id: string): number {
    return this.#slots.filter((s) => s?.on === id).length;
  }

  start(): void {
    // A few at a time, so the balancer sees a steady arrival rather than one burst.
    let next = 0;
    const worker = async (): Promise<void> => {
      while (!this.#closed && next < this.#slots.length) await this.#fill(next++, false);
    };
    for (let i = 0; i < WORKERS; i++) void worker();
  }

  resetMoves(): void {
    this.#moves.clear();
    this.#moved = 0;
  }

  expectMoves(n: number): void {
    this.#expected = n;
  }

  movesText(): string {
    return [...this.#moves].map(([id, n]) => `${n} → ${id}`).join(', ') || 'none';
  }

  async #fill(i: number, moving: boolean): Promise<void> {
    let delay = 200;
    while (!this.#closed) {
      const entries = this.#entries();
      const url = entries[0];
      if (url !== undefined) {
        try {
          const kind = i % 3;
          const c = kind === 0 ? await sockjsDdp(url, { transports: ['websocket'] })
            : kind === 1 ? await sockjsDdp(url, { transports: ['xhr-polling'] }) : await wsDdp(url);
          const who = (await c.call('whoami')) as WhoamiResult;
          await c.subscribe('items');
          if (this.#closed) return void c.close().catch(() => undefined);
          this.#slots[i] = { client: c, on: who.instanceId };
          if (moving) {
            this.#moves.set(who.instanceId, (this.#moves.get(who.instanceId) ?? 0) + 1);
            this.#moved++;
            this.onMoved?.(this.#moved, Math.max(this.#expected, this.#moved));
          }
          void c.closed.then(() => {
            if (this.#slots[i]?.client !== c) return;
            this.#slots[i] = null;
            if (!this.#closed) void this.#fill(i, true);
          });
          return;
        } catch {
          // The instance died under it, or is still starting: try again shortly.
        }
      }
      await new Promise((r) => setTimeout(r, delay).unref());
      delay = Math.min(2000, delay * 2);
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#slots.map((s) => s?.client.close().catch(() => undefined)));
  }
}

/**
 * Waits until all three instances serve, then two more polls, by which time every instance has
 * polled (same interval) and knows the others: clients connected earlier would all stay on the
 * first ones.
 */
function clusterFormed(watcher: Registry): Promise<void> {
  return new Promise((resolve) => {
    let polls = -1;
    const onView = (v: MembershipView): void => {
      if (polls < 0 && v.members.filter((m) => m.healthy && m.state === 'serving').length === IDS.length) polls = 0;
      if (polls >= 0 && ++polls > 2) {
        watcher.off('view', onView);
        resolve();
      }
    };
    watcher.on('view', onView);
  });
}

function table(view: MembershipView, pool: ClientPool, elapsedMs: number): string[] {
  const rows = view.members.map((m) => {
    const bar = m.healthy ? '█'.repeat(Math.min(60, Math.round(m.load.sessions / 5))) : '';
    return `  ${m.id.padEnd(8)} ${m.state.padEnd(9)} ${(m.healthy ? 'up' : 'DOWN').padEnd(5)} ${String(m.healthy ? m.load.sessions : '-').padStart(5)}  ${bar}`;
  });
  const total = view.members.filter((m) => m.healthy).reduce((s, m) => s + m.load.sessions, 0);
  return [
    `t=${Math.round(elapsedMs / 1000)}s  members=${view.members.length}  sessions=${total}  clients=${pool.connected}${view.discoveryOk ? '' : '  (discovery unreachable)'}`,
    `  ${'id'.padEnd(8)} ${'state'.padEnd(9)} ${'up'.padEnd(5)} ${'sess'.padStart(5)}`,
    ...rows,
  ];
}

main().catch((err: unknown) => void stopAll(1, `demo failed: ${err instanceof Error ? err.message : String(err)}`));
