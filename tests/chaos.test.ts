/**
 * Chaos: three instance processes, 300 live sessions from retrying DDP clients (raw websocket,
 * sockjs websocket and sockjs xhr-polling), some of them calling methods all along. Then kill -9,
 * a 20 s discovery outage, and a rolling restart with graceful drain.
 */
import assert from 'node:assert/strict';
import { parseConfig } from '../lib/config';
import { Registry } from '../lib/discovery/registry';
import type { MembershipView } from '../lib/discovery/view';
import { EMPTY_LOAD } from '../lib/load';
import { createLogger } from '../lib/log';
import { TEST_SECRET, freePort, spawnInstance, type ChildInstance } from './support/cluster';
import { httpRequest, wsDdp } from '../examples/node-ddp-app/clients';
import { mongo, uniqueDbUrl } from './support/mongo';
import { outageControl, type Outage } from './support/outage';
import { RetryingDdpClient, type Transport } from './support/retrying-client';
import { eventually, waitForEvent } from './support/wait';

const IDS = ['a', 'b', 'c'] as const;
const CHILD_ENV = { CLUSTER_LOG_LEVEL: 'info', CLUSTER_DRAIN_WINDOW: '3s', CLUSTER_SLOW_START: '5s' };

async function pool<T>(n: number, limit: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(n);
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < n) {
      const i = next++;
      out[i] = await fn(i);
    }
  }));
  return out;
}

function countBy(ids: readonly (string | null)[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const id of ids) out[String(id)] = (out[String(id)] ?? 0) + 1;
  return out;
}

/** Peak reconnects in any `bucketMs` window. */
function peakRate(times: readonly number[], bucketMs: number): number {
  const sorted = [...times].sort((x, y) => x - y);
  let peak = 0;
  let lo = 0;
  for (let hi = 0; hi < sorted.length; hi++) {
    while ((sorted[hi] as number) - (sorted[lo] as number) >= bucketMs) lo++;
    peak = Math.max(peak, hi - lo + 1);
  }
  return peak;
}

describe('chaos (three processes, 300 sessions, retrying clients)', function () {
  this.timeout(240_000);
  let outage: Outage;
  let children: Map<string, ChildInstance>;
  let ports: Map<string, number>;
  let watcher: Registry;
  let clients: RetryingDdpClient[];
  let calling = false;
  let callers: Promise<void>[] = [];
  const figures: Record<string, unknown> = {};

  const start = async (id: string): Promise<ChildInstance> => {
    const child = await spawnInstance(id, { CLUSTER_DISCOVERY_URL: outage.url, PORT: String(ports.get(id)), ...CHILD_ENV });
    children.set(id, child);
    return child;
  };
  const servingView = (what: string, pred: (v: MembershipView) => boolean, timeoutMs = 30_000): Promise<MembershipView> =>
    waitForEvent(watcher, 'view', () => (pred(watcher.view()) ? watcher.view() : undefined), what, timeoutMs);
  const serving = (v: MembershipView, id: string): boolean => v.byId.get(id)?.state === 'serving' && v.byId.get(id)?.healthy === true;
  const urls = (): string[] => IDS.map((id) => `http://127.0.0.1:${ports.get(id)}`);

  beforeEach(async function () {
    const url = uniqueDbUrl(mongo().url, 'chaos');
    outage = await outageControl(mongo(), url);
    children = new Map();
    ports = new Map(await Promise.all(IDS.map(async (id) => [id, await freePort()] as const)));
    watcher = new Registry({
      config: parseConfig({ discoveryUrl: outage.url, secret: TEST_SECRET, instanceId: 'chaos-watcher' }, {}),
      logger: createLogger('silent'), load: () => EMPTY_LOAD,
    });
    watcher.start();
    await Promise.all(IDS.map(start));
    await servingView('three serving', (v) => IDS.every((id) => serving(v, id)));
    // Every instance must know the others before clients arrive (two more polls of the watcher).
    await servingView('settled', () => true);
    await servingView('settled', () => true);
    const transports: Transport[] = ['ws', 'ws', 'ws', 'ws', 'sockjs-websocket', 'sockjs-xhr'];
    clients = await pool(300, 30, async (i) => {
      const c = await new RetryingDdpClient({ entries: urls(), transport: transports[i % transports.length] as Transport }).start();
      await c.whoami();
      return c;
    });
    calling = true;
    // 30 of them call a method every 100 ms for the whole test.
    callers = clients.slice(0, 30).map(async (c, i) => {
      while (calling) {
        await c.call('echo', i);
        await new Promise((r) => setTimeout(r, 100));
      }
    });
  });

  afterEach(async () => {
    calling = false;
    await Promise.all(callers);
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all([...children.values()].map((c) => c.kill()));
    await watcher.close();
    await outage.up().catch(() => undefined);
    await outage.close();
  });

  after(() => process.stdout.write(`      figures: ${JSON.stringify(figures)}\n`));

  it('kill -9 of one instance: only its sessions move, nothing crashes, no call fails', async () => {
    const before = countBy(clients.map((c) => c.instanceId));
    assert.deepEqual(Object.keys(before).sort(), ['a', 'b', 'c'], JSON.stringify(before));
    const cUrl = urls()[2] as string;
    // A client depends on c if c served it or if it connected through c (its balancer).
    const onC = clients.filter((c) => c.instanceId === 'c' || c.entry === cUrl).length;
    const killedAt = Date.now();
    await children.get('c')?.kill('SIGKILL');
    await eventually(() => clients.every((c) => c.instanceId !== 'c' && c.entry !== cUrl), 'every client of c moved', 60_000);
    const movedIn = Date.now() - killedAt;
    const reconnects = clients.reduce((n, c) => n + c.reconnects.length, 0);
    assert.equal(reconnects, onC, `only the sessions that depended on the killed instance reconnected (${reconnects} vs ${onC})`);
    // Detection as the survivors log it (active checks, or passive on a refused connect).
    const detected = await eventually(() => {
      const t = ['a', 'b'].map((id) => children.get(id)?.logs.find((l) => l.line.includes('"health.down"') && l.line.includes('"member":"c"'))?.at);
      return t.every((x) => x !== undefined) ? Math.max(...(t as number[])) - killedAt : undefined;
    }, 'a and b mark c down', 20_000);
    // New sessions after detection: all succeed at once, none on c.
    const fresh = await pool(40, 10, async (i) => {
      const c = await wsDdp(urls()[i % 2] as string);
      const who = ((await c.call('whoami')) as { instanceId: string }).instanceId;
      await c.close();
      return who;
    });
    assert.ok(!fresh.includes('c'));
    for (const id of ['a', 'b']) assert.equal(children.get(id)?.proc.exitCode, null, `${id} still running`);
    assert.equal(clients.reduce((n, c) => n + c.failedCalls, 0), 0, 'no method call failed');
    figures.kill = { before, onC, reconnects, detectedMs: detected, allMovedMs: movedIn, after: countBy(clients.map((c) => c.instanceId)) };
  });

  it('a 20 s discovery outage: service continues, membership heals', async () => {
    const okBefore = clients.reduce((n, c) => n + c.okCalls, 0);
    await outage.down();
    const downAt = Date.now();
    try {
      await servingView('watcher notices', (v) => !v.discoveryOk);
      // While the database is away, new sessions still work through every instance.
      const during = await pool(15, 5, async (i) => {
        const c = await wsDdp(urls()[i % 3] as string);
        const who = ((await c.call('whoami')) as { instanceId: string }).instanceId;
        await c.close();
        return who;
      });
      // Balanced on the last-known membership (not each served where it landed).
      assert.ok(new Set(during).size >= 2, `sessions still spread over the last-known membership: ${JSON.stringify(countBy(during))}`);
      await new Promise((r) => setTimeout(r, Math.max(0, 20_000 - (Date.now() - downAt)))); // the outage itself lasts 20 s
      assert.ok(clients.reduce((n, c) => n + c.okCalls, 0) > okBefore + 100, 'calls kept succeeding during the outage');
    } finally {
      await outage.up();
    }
    const upAt = Date.now();
    await servingView('membership heals', (v) => v.discoveryOk && IDS.every((id) => serving(v, id)), 60_000);
    await eventually(async () => {
      const health = await Promise.all(urls().map(async (u) => JSON.parse((await httpRequest('GET', `${u}/cluster/health`)).body) as { discoveryOk: boolean }));
      return health.every((h) => h.discoveryOk);
    }, 'every instance reconnected to discovery', 60_000);
    for (const id of IDS) assert.equal(children.get(id)?.proc.exitCode, null, `${id} still running`);
    assert.equal(clients.reduce((n, c) => n + c.reconnects.length, 0), 0, 'no session was dropped');
    assert.equal(clients.reduce((n, c) => n + c.failedCalls, 0), 0);
    figures.outage = { healedMs: Date.now() - upAt };
  });

  it('rolling restart with graceful drain: 0 failed calls, paced reconnects', async () => {
    const perInstance: Record<string, { sessions: number; peakPerSecond: number; spreadMs: number }> = {};
    for (const id of IDS) {
      const idUrl = urls()[IDS.indexOf(id)] as string;
      const had = clients.filter((c) => c.instanceId === id || c.entry === idUrl).length;
      const mark = clients.reduce((n, c) => n + c.reconnects.length, 0);
      const began = Date.now();
      const child = children.get(id) as ChildInstance;
      child.proc.kill('SIGTERM');
      await child.exited;
      await eventually(() => clients.every((c) => c.instanceId !== id && c.entry !== idUrl), `nobody left on ${id}`, 60_000);
      const times = clients.flatMap((c) => c.reconnects.filter((t) => t >= began));
      const moved = clients.reduce((n, c) => n + c.reconnects.length, 0) - mark;
      assert.ok(moved >= had, `${id}'s sessions reconnected (${moved} of ${had})`);
      perInstance[id] = {
        sessions: had, peakPerSecond: peakRate(times, 1000),
        spreadMs: times.length ? Math.max(...times) - Math.min(...times) : 0,
      };
      await start(id);
      await servingView(`${id} back`, (v) => serving(v, id));
    }
    assert.equal(clients.reduce((n, c) => n + c.failedCalls, 0), 0, 'no method call failed');
    for (const [id, f] of Object.entries(perInstance)) {
      assert.ok(f.sessions === 0 || f.peakPerSecond < f.sessions, `${id}: reconnects were paced, not all at once (${JSON.stringify(f)})`);
    }
    figures.rolling = perInstance;
  });
});
