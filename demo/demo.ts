/**
 * `npm run demo`: a local three-instance cluster on an embedded Mongo-compatible server, with
 * simulated DDP clients, and a live table of where the sessions are.
 *
 *   npm run demo                      run until Ctrl-C
 *   npm run demo -- --duration 20     stop by itself after 20 s
 *   npm run demo -- --clients 300     number of simulated clients (default 120)
 *   npm run demo -- --kill-after 10   kill -9 one instance after 10 s and restart it 5 s later
 *   (press k) kill -9 an instance and restart it, to watch failover
 *
 * The instances are the reference DDP app the tests use (tests/support/ddp-app.ts: sockjs 0.3.24
 * installed the way Meteor's ddp-server does) with the balancer attached, each in its own process.
 */
import { parseArgs } from 'node:util';
import { parseConfig } from '../lib/config';
import { Registry } from '../lib/discovery/registry';
import type { MembershipView } from '../lib/discovery/view';
import { EMPTY_LOAD } from '../lib/load';
import { createLogger } from '../lib/log';
import { TEST_SECRET, spawnInstance, type ChildInstance } from '../tests/support/cluster';
import { sockjsDdp, wsDdp, type DdpClient } from '../tests/support/ddp-clients';
import { disposeAll, startMongo } from '../tests/support/mongo';

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string' },
    clients: { type: 'string', default: '120' },
    'kill-after': { type: 'string' },
    'base-port': { type: 'string', default: '3101' },
  },
});

const IDS = ['alpha', 'bravo', 'charlie'] as const;
const out = (line: string): void => void process.stdout.write(line + '\n');

async function main(): Promise<void> {
  const stops: (() => Promise<void>)[] = [];
  let stopping = false;
  const stop = async (code: number): Promise<never> => {
    if (stopping) process.exit(code);
    stopping = true;
    out('\nstopping…');
    for (const s of stops.reverse()) await s().catch(() => undefined);
    await disposeAll();
    process.exit(code);
  };
  process.on('SIGINT', () => void stop(0));
  process.on('SIGTERM', () => void stop(0));

  out('ddp-cluster demo: starting an embedded Mongo-compatible server…');
  const mongo = await startMongo();
  const discoveryUrl = mongo.url.replace(/\/([^/?]*)(\?|$)/, '/ddp_cluster_demo$2');
  out(`  discovery: ${mongo.kind} at ${discoveryUrl}`);

  const basePort = Number(args['base-port']);
  const instances = new Map<string, ChildInstance>();
  const start = async (id: string, i: number): Promise<void> => {
    // --base-port 0: any free ports (used by the demo's own smoke test).
    const port = basePort === 0 ? 0 : basePort + i;
    const child = await spawnInstance(id, { CLUSTER_DISCOVERY_URL: discoveryUrl, PORT: String(port) });
    instances.set(id, child);
  };
  await Promise.all(IDS.map((id, i) => start(id, i)));
  stops.push(async () => void (await Promise.all([...instances.values()].map((c) => c.kill('SIGTERM')))));
  for (const [id, c] of instances) out(`  instance ${id}: ${c.url}`);

  // A watch-only registry: sees the members and their reported load, registers nothing.
  const watcher = new Registry({
    config: parseConfig({ discoveryUrl, secret: TEST_SECRET, instanceId: 'demo-watcher' }, {}),
    logger: createLogger('error'),
    load: () => EMPTY_LOAD,
  });
  watcher.start();
  stops.push(() => watcher.close());
  await watcher.ready();
  await clusterFormed(watcher);

  const clients: DdpClient[] = [];
  stops.push(async () => void (await Promise.all(clients.map((c) => c.close().catch(() => undefined)))));
  const entry = instances.get(IDS[0])?.url ?? '';
  const wanted = Number(args.clients);
  out(`  connecting ${wanted} clients to ${entry} (websocket, xhr-polling and raw /websocket)…\n`);
  void connectClients(entry, wanted, clients);

  let killAt = args['kill-after'] !== undefined ? Date.now() + Number(args['kill-after']) * 1000 : null;
  const failover = async (): Promise<void> => {
    const victim = IDS[2];
    const i = IDS.indexOf(victim);
    out(`\n>>> kill -9 ${victim}; restarting it in 5 s\n`);
    await instances.get(victim)?.kill('SIGKILL');
    setTimeout(() => void start(victim, i).then(() => out(`\n>>> ${victim} restarted\n`)), 5000).unref();
  };
  if (process.stdin.isTTY) {
    process.stdin.setRawMode(true);
    process.stdin.resume();
    process.stdin.on('data', (b: Buffer) => {
      const key = b.toString();
      if (key === 'k') void failover();
      if (key === 'q' || key === '\u0003') void stop(0);
    });
    out('  keys: k = kill -9 an instance (failover), q = quit\n');
  }

  const began = Date.now();
  const duration = args.duration !== undefined ? Number(args.duration) * 1000 : null;
  const timer = setInterval(() => {
    out(table(watcher.view(), clients.length, Date.now() - began));
    if (killAt !== null && Date.now() >= killAt) {
      killAt = null;
      void failover();
    }
    if (duration !== null && Date.now() - began >= duration) void stop(0);
  }, 1000);
  stops.push(async () => clearInterval(timer));
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

/** Opens clients a few at a time; each calls a method and subscribes, then stays connected. */
async function connectClients(url: string, n: number, clients: DdpClient[]): Promise<void> {
  for (let i = 0; i < n; i++) {
    try {
      const kind = i % 3;
      const c = kind === 0 ? await sockjsDdp(url, { transports: ['websocket'] })
        : kind === 1 ? await sockjsDdp(url, { transports: ['xhr-polling'] }) : await wsDdp(url);
      clients.push(c);
      await c.call('whoami');
      await c.subscribe('items');
    } catch {
      // An instance died under it (failover demo): the next client goes elsewhere.
    }
  }
}

function table(view: MembershipView, clients: number, elapsedMs: number): string {
  const rows = view.members.map((m) => {
    const bar = '█'.repeat(Math.round(m.load.sessions / 5));
    return `  ${m.id.padEnd(8)} ${m.state.padEnd(9)} ${(m.healthy ? 'up' : 'DOWN').padEnd(5)} ${String(m.load.sessions).padStart(5)}  ${bar}`;
  });
  const total = view.members.reduce((s, m) => s + m.load.sessions, 0);
  return [
    `t=${Math.round(elapsedMs / 1000)}s  members=${view.members.length}  sessions=${total}  clients=${clients}${view.discoveryOk ? '' : '  (discovery unreachable)'}`,
    `  ${'id'.padEnd(8)} ${'state'.padEnd(9)} ${'up'.padEnd(5)} ${'sess'.padStart(5)}`,
    ...rows,
  ].join('\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  void disposeAll().finally(() => process.exit(1));
});
